"""Bad input at the Kafka level: 10,000+ malformed messages mixed into valid ones, through a
real worker process, the embedded broker and database.

Every malformed message must come out on the dead-letter topic with a reason and its exact
bytes (base64; beyond ``sinks.kafka.MAX_DLQ_PAYLOAD`` its first bytes, its size and SHA-256),
every valid one must be scored, the worker must stay up, and the invalid-message metrics must
match the counts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from operators.parse import InvalidMessage, TxnParser
from sinks.kafka import MAX_DLQ_PAYLOAD
from sinks.migrate import migrate
from tests.helpers import flow_env, metric_value, scrape, start_worker
from txwatch.bench import produce_plain
from txwatch.embedded import free_port, wait_for
from txwatch.settings import Settings

pytestmark = pytest.mark.integration

N_GOOD = 2_000
N_BAD = 10_400
N_HUGE = 24  # of which: messages from 17 KB to 600 KB (a quarter above MAX_DLQ_PAYLOAD)
MIN_TS = "2020-01-01T00:00:00+00:00"  # configured bounds of this test's worker
MAX_FUTURE = 3600.0

Template = Callable[[int, float], bytes | None]


def _tx(i: int, now: float, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"transaction_id": f"bad-{i}", "user_id": f"b{i % 97}", "amount": 12.5,
                         "timestamp": _iso(now - 3600), "currency": "EUR", "terminal_id": "T1"}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _j(d: Any) -> bytes:
    return json.dumps(d).encode()


def _raw_tx(i: int, now: float, field: str, literal: str) -> bytes:
    """A transaction whose ``field`` is the raw JSON text ``literal`` (NaN, 1e400 ...)."""
    d = _tx(i, now)
    d[field] = "@@"
    return _j(d).replace(b'"@@"', literal.encode())


# (name, make(i, now) -> message value, reason fragments: the reason contains one of them)
TEMPLATES: list[tuple[str, Template, tuple[str, ...]]] = [
    ("utf8 garbage", lambda i, now: b"\xff\xfe\xfa" + str(i).encode() + b"\x80\x81",
     ("utf-8", "json")),
    ("utf8 in a string", lambda i, now: _j(_tx(i, now)).replace(b'"T1"', b'"T\xc3\x28\xa0"'),
     ("utf-8", "json")),
    ("latin-1 text", lambda i, now: _j(_tx(i, now, terminal_id="caf\u00e9")).replace(
        b"caf\\u00e9", b"caf\xe9"), ("utf-8", "json")),
    ("empty", lambda i, now: b"", ("empty",)),
    ("null value", lambda i, now: None, ("empty",)),
    ("whitespace", lambda i, now: b" " * (1 + i % 50), ("json",)),
    ("array", lambda i, now: _j([1, 2, i]), ("object",)),
    ("number", lambda i, now: str(i).encode(), ("object",)),
    ("string", lambda i, now: _j(f"s{i}"), ("object",)),
    ("literal", lambda i, now: [b"null", b"true", b"false"][i % 3], ("object",)),
    ("not json", lambda i, now: f"{{not json {i}".encode(), ("json",)),
    ("truncated", lambda i, now: _j(_tx(i, now))[: 20 + i % 40], ("json",)),
    ("trailing garbage", lambda i, now: _j(_tx(i, now)) + b"}x", ("json",)),
    ("deep arrays", lambda i, now: b"[" * (3000 + i % 100) + b"]" * (3000 + i % 100),
     ("nest", "depth")),
    ("deep object in a field", lambda i, now: _j(_tx(i, now))[:-1] + b', "x": '
     + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}", ("nest", "depth")),
    ("missing transaction_id", lambda i, now: _j(_tx(i, now, transaction_id=_DROP)),
     ("missing field: transaction_id",)),
    ("missing user_id", lambda i, now: _j(_tx(i, now, user_id=_DROP)),
     ("missing field: user_id",)),
    ("missing amount", lambda i, now: _j(_tx(i, now, amount=_DROP)),
     ("missing field: amount",)),
    ("missing timestamp", lambda i, now: _j(_tx(i, now, timestamp=_DROP)),
     ("missing field: timestamp",)),
    ("null amount", lambda i, now: _j(_tx(i, now, amount=None)), ("missing field: amount",)),
    ("amount list", lambda i, now: _j(_tx(i, now, amount=[1, i])), ("amount",)),
    ("amount object", lambda i, now: _j(_tx(i, now, amount={"v": i})), ("amount",)),
    ("amount bool", lambda i, now: _j(_tx(i, now, amount=True)), ("amount",)),
    ("amount text", lambda i, now: _j(_tx(i, now, amount=f"abc{i}")), ("amount",)),
    ("user_id number", lambda i, now: _j(_tx(i, now, user_id=i)), ("user_id",)),
    ("user_id list", lambda i, now: _j(_tx(i, now, user_id=["u", i])), ("user_id",)),
    ("transaction_id bool", lambda i, now: _j(_tx(i, now, transaction_id=False)),
     ("transaction_id",)),
    ("timestamp bool", lambda i, now: _j(_tx(i, now, timestamp=True)), ("timestamp",)),
    ("timestamp list", lambda i, now: _j(_tx(i, now, timestamp=[2024, 1, 1])), ("timestamp",)),
    ("timestamp words", lambda i, now: _j(_tx(i, now, timestamp=f"yesterday {i}")),
     ("timestamp",)),
    ("timestamp without offset", lambda i, now: _j(_tx(i, now, timestamp="2024-05-01T10:00:00")),
     ("offset",)),
    ("lat text", lambda i, now: _j(_tx(i, now, lat="north", lon=4.3)), ("lat",)),
    ("lat out of range", lambda i, now: _j(_tx(i, now, lat=91.0 + i % 5, lon=4.3)), ("lat",)),
    ("lat without lon", lambda i, now: _j(_tx(i, now, lat=50.8)), ("lat",)),
    ("lon out of range", lambda i, now: _j(_tx(i, now, lat=50.8, lon=-181.0)), ("lon",)),
    ("currency number", lambda i, now: _j(_tx(i, now, currency=978)), ("currency",)),
    ("unknown currency", lambda i, now: _j(_tx(i, now, currency="XXX")), ("currency",)),
    ("country word", lambda i, now: _j(_tx(i, now, country="BEL")), ("country",)),
    ("amount NaN", lambda i, now: _raw_tx(i, now, "amount", "NaN"), ("finite", "json")),
    ("amount Infinity", lambda i, now: _raw_tx(i, now, "amount", "Infinity"),
     ("finite", "json")),
    ("amount -Infinity", lambda i, now: _raw_tx(i, now, "amount", "-Infinity"),
     ("finite", "json", "negative")),
    ("amount 1e400", lambda i, now: _raw_tx(i, now, "amount", "1e400"),
     ("finite", "json", "range")),
    ("amount 'NaN' text", lambda i, now: _j(_tx(i, now, amount="NaN")), ("finite", "amount")),
    ("amount 'inf' text", lambda i, now: _j(_tx(i, now, amount="-inf")),
     ("finite", "amount", "negative")),
    ("negative amount", lambda i, now: _j(_tx(i, now, amount=-(1 + i % 500) / 100)),
     ("negative",)),
    ("negative amount text", lambda i, now: _j(_tx(i, now, amount=f"-{i % 90 + 1}.5")),
     ("negative",)),
    ("amount too big", lambda i, now: _j(_tx(i, now, amount=1e13 + i)), ("range",)),
    ("integer beyond 64 bits", lambda i, now: _raw_tx(i, now, "amount", "9" * 30),
     ("range", "json", "integer")),
    ("before 2000", lambda i, now: _j(_tx(i, now, timestamp="1999-12-31T23:59:59Z")),
     ("before",)),
    ("before the configured minimum", lambda i, now: _j(_tx(
        i, now, timestamp=_iso(datetime.fromisoformat(MIN_TS).timestamp() - 60 - i))),
     ("before",)),
    ("epoch zero", lambda i, now: _j(_tx(i, now, timestamp=0)), ("before",)),
    ("negative epoch", lambda i, now: _j(_tx(i, now, timestamp=-86400.0 * (1 + i % 9))),
     ("before", "range")),
    ("beyond the configured future", lambda i, now: _j(_tx(
        i, now, timestamp=_iso(now + MAX_FUTURE + 7200 + i))), ("future",)),
    ("year 9999", lambda i, now: _j(_tx(i, now, timestamp="9999-12-31T23:59:59+00:00")),
     ("future",)),
    ("epoch 1e20", lambda i, now: _j(_tx(i, now, timestamp=1e20)), ("range", "future")),
    ("timestamp text too long", lambda i, now: _j(_tx(i, now, timestamp="2024-01-01T00:00:00"
                                                      + "0" * 40 + "Z")), ("long", "iso")),
    ("user_id too long", lambda i, now: _j(_tx(i, now, user_id="u" * (129 + i % 300))),
     ("length",)),
    ("user_id enormous", lambda i, now: _j(_tx(i, now, user_id="U" * (10_000 + i % 2000))),
     ("length",)),
    ("empty transaction_id", lambda i, now: _j(_tx(i, now, transaction_id="")), ("length",)),
    ("merchant_id enormous", lambda i, now: _j(_tx(i, now, merchant_id="m" * 15_000)),
     ("length", "large")),
]


def _huge(i: int, now: float) -> bytes:
    size = [17_000, 64_000, 250_000, 600_000][i % 4] + i
    return _j(_tx(i, now, note="x" * size))


def _good(i: int, now: float) -> bytes:
    user = f"g{i % 200:03d}"
    return _j({
        "transaction_id": f"good-{i}", "user_id": user,
        "amount": round(5 + (i * 37 % 1000) / 7, 2), "currency": ["EUR", "USD"][i % 2],
        "timestamp": _iso(now - 2 * 86400 + i * 60), "terminal_id": f"T{i % 50}",
        "merchant_id": f"M{i % 40}", "merchant_category": "5411", "country": "BE",
        "lat": 50.85 + (i % 10) / 100, "lon": 4.35, "channel": "pos",
    })


def _dataset(now: float) -> tuple[list[tuple[bytes | None, bytes | None]], set[str],
                                  list[tuple[bytes | None, tuple[str, ...]]]]:
    rng = random.Random(20240601)
    bad: list[tuple[bytes | None, tuple[str, ...]]] = []
    for i in range(N_BAD - N_HUGE):
        _name, make, frags = TEMPLATES[i % len(TEMPLATES)]
        bad.append((make(i, now), frags))
    for i in range(N_HUGE):
        bad.append((_huge(N_BAD + i, now), ("too large",)))
    good = [_good(i, now) for i in range(N_GOOD)]
    msgs: list[tuple[bytes | None, bytes | None]] = [
        (None if i % 3 == 0 else f"k{i}".encode(), v) for i, (v, _f) in enumerate(bad)]
    msgs += [(f"g{i % 200:03d}".encode(), v) for i, v in enumerate(good)]
    rng.shuffle(msgs)
    return msgs, {f"good-{i}" for i in range(N_GOOD)}, bad


def _consume(brokers: str, topic: str, want: int, timeout: float = 120.0) -> list[Any]:
    """``want`` messages from ``topic`` (counting, not trusting end offsets)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "txwatch-tests-bad",
                  "enable.auto.commit": False, "fetch.message.max.bytes": 4_000_000})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error():
                    raise RuntimeError(m.error())
                out.append(m)
        return out
    finally:
        c.close()


def test_parser_rejects_every_bad_message_with_the_expected_reason():
    """The data set is what it claims: each bad message is invalid for the stated reason,
    each good one valid (checked on the parser, with the worker's bounds)."""
    now = time.time()
    s = Settings(min_timestamp=MIN_TS, max_future_seconds=MAX_FUTURE)
    p = TxnParser(s)
    _msgs, _ids, bad = _dataset(now)
    assert len(bad) >= 10_000
    for raw, frags in bad:
        with pytest.raises(InvalidMessage) as e:
            p.parse(raw or b"", now)
        assert any(f in str(e.value).lower() for f in frags), (raw and raw[:120], e.value)
    for i in range(N_GOOD):
        p.parse(_good(i, now), now)


def test_malformed_messages_go_to_the_dead_letter_topic(broker, pg, topics, tmp_path):
    migrate(pg)
    now = time.time()
    msgs, good_ids, bad = _dataset(now)
    produce_plain(broker.brokers, topics["transactions"], iter(msgs))

    port = free_port()
    env = flow_env(broker.brokers, pg, topics, TXWATCH_KAFKA_TAIL="true",
                   TXWATCH_MAX_HOLD_SECONDS="0.2", TXWATCH_METRICS_PORT=str(port),
                   TXWATCH_MIN_TIMESTAMP=MIN_TS, TXWATCH_MAX_FUTURE_SECONDS=str(MAX_FUTURE))
    proc = start_worker(env, log=tmp_path / "worker.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        def scored() -> bool:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            v = metric_value(scrape(url), "txwatch_transactions_consumed_total",
                             outcome="scored")
            return v == N_GOOD

        wait_for(scored, timeout=240, interval=0.2, what="every valid transaction scored")
        n_bad = len(bad)

        def dead_written() -> bool:
            return metric_value(scrape(url), "txwatch_dead_letters_total") == n_bad

        wait_for(dead_written, timeout=60, what="every dead letter counted")
        text = scrape(url)
        assert metric_value(text, "txwatch_transactions_consumed_total",
                            outcome="invalid") == n_bad
        assert metric_value(text, "txwatch_invalid_messages_total",
                            input="transactions") == n_bad
        assert metric_value(text, "txwatch_transactions_consumed_total",
                            outcome="duplicate") == 0
        assert metric_value(text, "txwatch_score_count") == N_GOOD

        # every bad message on the dead-letter topic, exact bytes, with a fitting reason (a
        # payload above MAX_DLQ_PAYLOAD keeps that much of its start, its size and SHA-256)
        dead = [json.loads(m.value()) for m in _consume(broker.brokers, topics["dlq"], n_bad)]
        assert len(dead) == n_bad
        got = Counter(base64.b64decode(d["payload_b64"]) for d in dead)
        assert got == Counter((raw or b"")[:MAX_DLQ_PAYLOAD] for raw, _f in bad)
        frags = {(raw or b"")[:MAX_DLQ_PAYLOAD]: f for raw, f in bad}
        whole = {raw[:MAX_DLQ_PAYLOAD]: raw for raw, _f in bad
                 if raw is not None and len(raw) > MAX_DLQ_PAYLOAD}
        assert len(whole) >= N_HUGE // 4
        for d in dead:
            reason = d["reason"]
            payload = base64.b64decode(d["payload_b64"])
            assert isinstance(reason, str) and reason, d
            assert any(f in reason.lower() for f in frags[payload]), (payload[:100], reason)
            if payload in whole:
                raw = whole[payload]
                assert d["payload_truncated"] is True and d["payload_bytes"] == len(raw)
                assert d["payload_sha256"] == hashlib.sha256(raw).hexdigest()
            else:
                assert "payload_truncated" not in d
            assert d["topic"] == topics["transactions"]
            assert d["partition"] in range(4) and d["offset"] >= 0
        assert len({(d["partition"], d["offset"]) for d in dead}) == n_bad

        # every good one scored, once
        decisions = _consume(broker.brokers, topics["decisions"], N_GOOD)
        ids = [json.loads(m.value())["transaction_id"] for m in decisions]
        assert len(ids) == N_GOOD and set(ids) == good_ids
        assert proc.poll() is None  # still up after all of it
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_a_malformed_message_near_the_size_limit_does_not_stop_the_worker(broker, pg, topics,
                                                                          tmp_path):
    migrate(pg)
    now = time.time()
    big = _j(_tx(1, now, note="x" * 900_000))  # accepted by the broker (< 1,000,000 bytes)
    produce_plain(broker.brokers, topics["transactions"],
                  iter([(b"k", big)] + [(b"g", _good(i, now)) for i in range(20)]))
    port = free_port()
    env = flow_env(broker.brokers, pg, topics, TXWATCH_KAFKA_TAIL="true",
                   TXWATCH_MAX_HOLD_SECONDS="0.2", TXWATCH_METRICS_PORT=str(port))
    proc = start_worker(env, log=tmp_path / "worker.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        def done() -> bool:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            text = scrape(url)
            return (metric_value(text, "txwatch_transactions_consumed_total",
                                 outcome="scored") == 20
                    and metric_value(text, "txwatch_dead_letters_total") == 1)

        wait_for(done, timeout=120, interval=0.2, what="20 scored and 1 dead letter")
        (d,) = [json.loads(m.value()) for m in _consume(broker.brokers, topics["dlq"], 1)]
        assert "too large" in d["reason"]
        # the dead letter keeps a prefix of the payload, its full size and its hash
        assert d["payload_truncated"] is True and d["payload_bytes"] == len(big)
        assert base64.b64decode(d["payload_b64"]) == big[: len(base64.b64decode(d["payload_b64"]))]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
