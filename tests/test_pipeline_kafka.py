"""The walking skeleton end to end: Kafka (Tansu) → dataflow worker → PostgreSQL, with dead
letters, idempotent re-runs and the metrics endpoint."""

from __future__ import annotations

import base64
import json
import signal
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sinks.migrate import migrate
from tests.helpers import (
    consume_all,
    flow_env,
    metric_value,
    produce,
    run_worker,
    scrape,
    start_worker,
    tx,
)
from txwatch.embedded import free_port, wait_for

pytestmark = pytest.mark.integration

N_USERS = 30
N_HIST = 12
ANOMALOUS = {f"u{i:02d}" for i in range(0, N_USERS, 5)}  # 6 users get one huge amount
MALFORMED = [
    b"not json",
    b"",
    b"\xff\xfe\x00",
    b"[1, 2, 3]",
    b'{"transaction_id": "m1", "user_id": "u00", "timestamp": "2024-01-01T00:00:00Z"}',
    b'{"transaction_id": "m2", "user_id": "u00", "amount": "abc", '
    b'"timestamp": "2024-01-01T00:00:00Z"}',
    b'{"transaction_id": "m3", "user_id": "u00", "amount": -1, '
    b'"timestamp": "2024-01-01T00:00:00Z"}',
    b'{"transaction_id": "m4", "user_id": "u00", "amount": 5, "timestamp": "1999-01-01T00:00:00Z"}',
    b'{"transaction_id": "m5", "user_id": "u00", "amount": 5, "timestamp": "yesterday"}',
    b'{"transaction_id": "m6", "user_id": 7, "amount": 5, "timestamp": 1700000000}',
]


def _dataset() -> tuple[list[tuple[bytes, bytes]], set[str]]:
    start = datetime.now(UTC) - timedelta(days=20)
    msgs: list[tuple[bytes, bytes]] = []
    expected: set[str] = set()
    for u in range(N_USERS):
        user = f"u{u:02d}"
        base = 20 + u
        for i in range(N_HIST):
            ts = start + timedelta(days=i, minutes=7 * u)
            msgs.append((user.encode(), tx(f"{user}-{i}", user, base + (i % 3), ts.isoformat(),
                                           terminal_id=f"T{u}", currency="EUR")))
        if user in ANOMALOUS:
            ts = start + timedelta(days=N_HIST, minutes=7 * u)
            tid = f"{user}-x"
            msgs.append((user.encode(), tx(tid, user, base * 25, ts.isoformat(),
                                           terminal_id=f"T{u}")))
            expected.add(tid)
    # a duplicate delivery of an anomalous transaction: dropped before any state
    msgs.append(next(m for m in msgs if b'"u00-x"' in m[1]))
    return msgs, expected


def test_kafka_to_postgres_end_to_end(broker, pg, topics, tmp_path):
    migrate(pg)
    msgs, expected = _dataset()
    produce(broker.brokers, topics["transactions"], msgs)
    produce(broker.brokers, topics["transactions"], [(b"bad", m) for m in MALFORMED])
    env = flow_env(broker.brokers, pg, topics)

    res = run_worker(env)
    assert res.returncode == 0, res.stderr[-3000:]

    with psycopg.connect(pg) as c:
        rows = c.execute(
            "SELECT transaction_id, user_id, severity, score, threshold, reasons, features,"
            " model_version, amount, currency, status FROM alerts ORDER BY transaction_id"
        ).fetchall()
    assert {r[0] for r in rows} == expected
    for tid, user, severity, score, threshold, reasons, features, version, amount, cur, st in rows:
        assert tid.startswith(user)
        assert severity in ("review", "block")
        assert score >= threshold
        codes = {r["code"] for r in reasons}
        assert codes & {"amount_vs_user_mean", "amount_vs_user_median"}, reasons
        assert all(set(r) == {"code", "text", "value"} for r in reasons)
        assert features["amount"] == pytest.approx(float(amount))
        assert version and cur == "EUR" and st == "open"

    # dead letters: every malformed message, with its bytes and a reason
    dead = [json.loads(m.value()) for m in consume_all(broker.brokers, topics["dlq"])]
    assert sorted(base64.b64decode(d["payload_b64"]) for d in dead) == sorted(MALFORMED)
    assert all(d["reason"] and d["topic"] == topics["transactions"] for d in dead)
    # every valid transaction got a decision on the decisions topic (the duplicate did not)
    decisions = consume_all(broker.brokers, topics["decisions"])
    assert len(decisions) == len(msgs) - 1
    assert {json.loads(m.value())["transaction_id"] for m in decisions if
            json.loads(m.value())["alert"]} == expected

    # an analyst reviews one alert; a re-run over the same input changes nothing
    some = sorted(expected)[0]
    with psycopg.connect(pg) as c:
        c.execute("UPDATE alerts SET status='confirmed', reviewer='ana' WHERE transaction_id=%s",
                  (some,))
    port = free_port()
    env2 = dict(env, TXWATCH_KAFKA_TAIL="true", TXWATCH_MAX_HOLD_SECONDS="0.2",
                TXWATCH_METRICS_PORT=str(port))
    proc = start_worker(env2, log=tmp_path / "worker2.log")
    try:
        url = f"http://127.0.0.1:{port}"

        def scored() -> bool:
            text = scrape(url + "/metrics")
            v = metric_value(text, "txwatch_transactions_consumed_total", outcome="scored")
            return v == len(msgs) - 1

        wait_for(scored, timeout=90, what="all transactions scored by the second run")
        text = scrape(url + "/metrics")
        assert metric_value(text, "txwatch_transactions_consumed_total",
                            outcome="invalid") == len(MALFORMED)
        assert metric_value(text, "txwatch_transactions_consumed_total",
                            outcome="duplicate") == 1
        assert metric_value(text, "txwatch_dead_letters_total") == len(MALFORMED)
        alerts = sum(metric_value(text, "txwatch_alerts_total", severity=s) or 0
                     for s in ("review", "block"))
        assert alerts == len(expected)
        assert metric_value(text, "txwatch_score_count") == len(msgs) - 1
        assert (metric_value(text, "txwatch_decision_latency_seconds_count") or 0) > 0
        wait_for(lambda: metric_value(scrape(url + "/metrics"), "txwatch_sink_rows_written_total",
                                      sink="postgres") == len(expected), timeout=30)
        assert scrape(url + "/healthz").strip() == "ok"
        assert json.loads(scrape(url + "/readyz")) == {"source_assigned": True, "database": True}
        # no personal value as a label
        assert "u00" not in text and "T0" not in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    with psycopg.connect(pg) as c:
        n, n_distinct = c.execute(
            "SELECT count(*), count(DISTINCT transaction_id) FROM alerts").fetchone()
        status, reviewer = c.execute(
            "SELECT status, reviewer FROM alerts WHERE transaction_id=%s", (some,)).fetchone()
    assert n == n_distinct == len(expected)
    assert (status, reviewer) == ("confirmed", "ana")  # the replay kept the analyst's review
