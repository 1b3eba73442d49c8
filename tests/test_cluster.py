"""Scale-out: a cluster of processes gives the same alerts as one worker, and ``txwatch
cluster`` supervises its processes (restart, give up, clean stop).

The helpers at the top (simulated input, fresh databases, comparable alert rows) are shared
with ``test_recovery.py`` and ``test_outage.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from producer.config import SimConfig
from producer.simulator import iter_transactions
from sinks.migrate import migrate
from tests.helpers import ROOT, flow_env, metric_value, run_worker, scrape
from txwatch.commands.cluster import Cluster, Outcome, recovery_partitions_present
from txwatch.embedded import EmbeddedPostgres, free_port, wait_for

pytestmark = pytest.mark.integration

SIM = SimConfig(n_customers=300, n_terminals=600, n_days=40, seed=7)
"""About 22,000 transactions with every fraud scenario: about 1,700 alerts."""

LATENESS = "600"
"""Event-time lateness of the test runs: each partition is in time order, so nothing is late
and the watermarks (not the end of input) release the buffers, as in production."""


# --- shared helpers ----------------------------------------------------------------------------
def sim_messages(cfg: SimConfig = SIM) -> list[tuple[bytes, bytes]]:
    """The simulated transactions in time order, keyed by user id, without the ground truth."""
    out = []
    for r in iter_transactions(cfg):
        r.pop("is_fraud", None)
        r.pop("fraud_scenario", None)
        out.append((r["user_id"].encode(), json.dumps(r).encode()))
    return out


def produce_plain(brokers: str, topic: str, messages: list[tuple[bytes, bytes]]) -> int:
    """Produce with a non-idempotent producer: with the idempotent one, Tansu reports wrong end
    offsets, and a flow with ``TXWATCH_KAFKA_TAIL=false`` could stop before the end."""
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": False, "acks": "all",
                  "linger.ms": 5})
    errors: list[Any] = []
    for i, (key, value) in enumerate(messages):
        while True:
            try:
                p.produce(topic, value, key=key,
                          on_delivery=lambda e, m: errors.append(e) if e else None)
                break
            except BufferError:
                p.poll(0.1)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0, "messages left undelivered"
    assert not errors, errors[:3]
    return len(messages)


def consume_n(brokers: str, topic: str, n: int, timeout: float = 60.0,
              settle: float = 1.0) -> list[Any]:
    """Read ``topic`` from the beginning until at least ``n`` messages came and then none for
    ``settle`` seconds. Counts messages instead of trusting end offsets (see above)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "txwatch-tests-" + uuid.uuid4().hex,
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
                last = time.monotonic()
            elif len(out) >= n and time.monotonic() - last >= settle:
                break
        return out
    finally:
        c.close()


@contextmanager
def fresh_db(server: EmbeddedPostgres) -> Iterator[str]:
    """One more empty, migrated database on ``server`` (the ``pg`` fixture gives one)."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.uri, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    uri = server.uri.replace("/postgres?", f"/{name}?")
    try:
        migrate(uri)
        yield uri
    finally:
        with psycopg.connect(server.uri, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alert_rows(dsn: str) -> dict[str, tuple[Any, ...]]:
    """transaction_id → (user_id, score, severity, reason codes, model_version, worker)."""
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            "SELECT transaction_id, user_id, score, severity, reasons, model_version, worker"
            " FROM alerts").fetchall()
    return {r[0]: (r[1], r[2], r[3], tuple(x["code"] for x in r[4]), r[5], r[6]) for r in rows}


def assert_same_alerts(got: dict[str, tuple[Any, ...]], want: dict[str, tuple[Any, ...]]) -> None:
    """Same transactions, scores to 1e-9, severities, reason codes and model versions."""
    assert got.keys() == want.keys(), (
        f"{len(got.keys() - want.keys())} extra, {len(want.keys() - got.keys())} missing")
    diffs = [
        (tid, g, w) for tid, g, w in ((t, got[t], want[t]) for t in sorted(want))
        if g[0] != w[0] or abs(g[1] - w[1]) > 1e-9 or g[2:5] != w[2:5]
    ]
    assert not diffs, f"{len(diffs)} rows differ, e.g. {diffs[:3]}"


def workers_by_user(rows: dict[str, tuple[Any, ...]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for user, *_rest, worker in rows.values():
        out[user].add(worker)
    return out


# --- tests ------------------------------------------------------------------------------------
def test_cluster_matches_single_worker(broker, pg, pg_server, topics, tmp_path):
    migrate(pg)
    msgs = sim_messages()
    produce_plain(broker.brokers, topics["transactions"], msgs)

    # reference: one process, one worker
    res = run_worker(flow_env(broker.brokers, pg, topics, TXWATCH_LATENESS_SECONDS=LATENESS))
    assert res.returncode == 0, res.stderr[-3000:]
    single = alert_rows(pg)
    assert len(single) > 500  # every scenario is on: plenty of alerts to compare

    # 2 processes × 2 workers over the 4 partitions, its own database and decisions topic
    decisions2 = topics["decisions"] + "-cluster"
    broker.create_topics([decisions2], partitions=4)
    with fresh_db(pg_server) as pg2:
        env = flow_env(broker.brokers, pg2, dict(topics, decisions=decisions2),
                       TXWATCH_LATENESS_SECONDS=LATENESS)
        cluster = Cluster(2, 2, env=env, cwd=ROOT, log_dir=tmp_path / "logs")
        try:
            cluster.start()
            assert cluster.wait(timeout=150) is Outcome.FINISHED
        finally:
            cluster.stop()
        multi = alert_rows(pg2)
    assert cluster.restarts == 0 and cluster.exit_codes == [[0, 0]]
    assert_same_alerts(multi, single)

    # every transaction was read and decided once, from all four partitions
    decided = consume_n(broker.brokers, decisions2, len(msgs))
    assert len(decided) == len(msgs)
    assert len({json.loads(m.value())["transaction_id"] for m in decided}) == len(msgs)
    assert {m.partition() for m in decided} == {0, 1, 2, 3}

    # a user's state lives on one worker: all of a user's alerts come from one worker, and
    # every worker of both processes did part of the work (`worker` is host:pid:thread)
    for rows, n_workers, n_procs in ((single, 1, 1), (multi, 4, 2)):
        by_user = workers_by_user(rows)
        assert all(len(w) == 1 for w in by_user.values()), [
            (u, w) for u, w in by_user.items() if len(w) > 1][:3]
        names = set().union(*by_user.values())
        assert len(names) == n_workers
        assert len({n.rsplit(":", 1)[0] for n in names}) == n_procs


def test_cluster_gives_up_after_max_restarts(broker, pg, topics, tmp_path):
    # a flow that cannot start (an invalid setting) fails at every start
    env = flow_env(broker.brokers, pg, topics, TXWATCH_USER_MODEL="no-such-model")
    cluster = Cluster(2, 1, env=env, cwd=ROOT, log_dir=tmp_path / "logs", max_restarts=2,
                      backoff=0.05)
    try:
        cluster.start()
        assert cluster.wait(timeout=90) is Outcome.FAILED
    finally:
        cluster.stop()
    assert cluster.restarts == 2 and cluster.generation == 3
    assert len(cluster.exit_codes) == 3 and all(any(rc != 0 for rc in g)
                                                 for g in cluster.exit_codes)
    log = (tmp_path / "logs" / "process-0.log").read_text()
    assert log.count("generation") == 3 and "user_model" in log


def test_cluster_command_stops_cleanly_and_restarts(broker, pg, topics, tmp_path):
    """``txwatch cluster`` with a recovery directory: per-process metrics ports, a whole-cluster
    restart after kill -9 (counted in its log), and SIGTERM leaves no process behind."""
    migrate(pg)
    produce_plain(broker.brokers, topics["transactions"],
                      sim_messages(SimConfig(n_customers=50, n_terminals=100, n_days=5, seed=1)))
    base = free_port()
    rec = tmp_path / "recovery"
    env = flow_env(broker.brokers, pg, topics, TXWATCH_KAFKA_TAIL="true",
                   TXWATCH_LATENESS_SECONDS="60", TXWATCH_MAX_HOLD_SECONDS="0.2",
                   TXWATCH_SNAPSHOT_INTERVAL_SECONDS="1", TXWATCH_RECOVERY_PARTITIONS="3",
                   TXWATCH_METRICS_PORT=str(base), TXWATCH_RECOVERY_DIR=str(rec))
    sup = subprocess.Popen(
        [sys.executable, "-m", "txwatch.cli", "cluster", "--processes", "2",
         "--log-dir", str(tmp_path / "logs"), "--backoff-max", "1"],
        env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    urls = [f"http://127.0.0.1:{base + k}/metrics" for k in range(2)]

    def children() -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(sup.pid)],
                             capture_output=True, text=True, check=False).stdout
        return [int(x) for x in out.split()]

    def scored() -> float:
        return sum(metric_value(scrape(u), "txwatch_transactions_consumed_total",
                                outcome="scored") or 0 for u in urls)

    try:
        wait_for(lambda: len(children()) == 2 and scored() > 0, timeout=60,
                 what="both processes serving metrics")
        assert recovery_partitions_present(rec) == 3
        first = children()
        subprocess.run(["kill", "-9", str(first[0])], check=True)
        # the restarted cluster resumes from its snapshots and serves metrics again
        wait_for(lambda: len(c := children()) == 2 and not set(c) & set(first)
                 and all(scrape(u) for u in urls), timeout=60, what="a new generation")
        second = children()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    log = sup.stderr.read() if sup.stderr else ""
    assert "restart 1" in log and "generation 2" in log, log[-2000:]
    for pid in first + second:  # no process left behind (a zombie is dead)
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                               text=True, check=False).stdout.strip()
        assert not state or state.startswith("Z"), f"process {pid} still running: {state}"


def test_cluster_help_explains_the_terms():
    res = subprocess.run([sys.executable, "-m", "txwatch.cli", "cluster", "--help"],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 0
    text = res.stdout.lower()
    for word in ("partition", "worker", "process", "recovery", "snapshot", "--processes",
                 "--workers-per-process", "--recovery-dir", "--recovery-partitions"):
        assert word in text, word
