"""A database outage in the middle of a live run: the flow keeps going within a bounded backlog,
then holds its input back, retries, and writes every alert exactly once when the database is
back."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from sinks.migrate import migrate
from tests.helpers import flow_env, metric_value, scrape, start_worker
from tests.test_cluster import alert_rows, consume_n, produce_plain, sim_messages
from txwatch.embedded import EmbeddedPostgres, free_port, wait_for

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 20.0
"""How long the database stays down: a wall-clock duration, as in a real outage."""
MAX_BACKLOG = 10
KAFKA_BATCH = 100
PARTITIONS = 4
BATCH_BOUND = KAFKA_BATCH * PARTITIONS
"""At most this many alerts reach one ``write_batch``: one poll of every partition."""


def _readyz(url: str) -> tuple[int, dict[str, bool]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_database_outage(broker, topics, tmp_path):
    # a server of this test's own: stopping the session's shared one would fail other tests
    pg = EmbeddedPostgres(tmp_path / "pgdata").start()
    paused = False
    worker = None
    try:
        dsn = pg.uri
        migrate(dsn)
        msgs = sim_messages()
        n = len(msgs)
        before, during, after = msgs[: n * 3 // 10], msgs[n * 3 // 10: n * 7 // 10], \
            msgs[n * 7 // 10:]
        chunks = [during[len(during) * i // 4: len(during) * (i + 1) // 4] for i in range(4)]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = flow_env(broker.brokers, dsn, topics, TXWATCH_KAFKA_TAIL="true",
                       TXWATCH_LATENESS_SECONDS="60", TXWATCH_MAX_HOLD_SECONDS="0.5",
                       TXWATCH_SINK_MAX_BACKLOG=str(MAX_BACKLOG),
                       TXWATCH_SINK_RETRY_MAX_SECONDS="2",
                       TXWATCH_KAFKA_BATCH_SIZE=str(KAFKA_BATCH),
                       TXWATCH_METRICS_PORT=str(port))

        def metric(name: str, **labels: str) -> float:
            return metric_value(scrape(url + "/metrics"), name, **labels) or 0.0

        def scored() -> float:
            return metric("txwatch_transactions_consumed_total", outcome="scored")

        def backlog() -> float:
            return metric("txwatch_sink_backlog", sink="postgres")

        produced = produce_plain(broker.brokers, topics["transactions"], before)
        worker = start_worker(env, log=tmp_path / "worker.log")
        wait_for(lambda: scored() == produced, timeout=90, interval=0.2,
                 what="the first part scored")
        wait_for(lambda: metric("txwatch_sink_rows_written_total", sink="postgres") > 0
                 and backlog() == 0, timeout=30, what="alerts written while the database is up")
        assert metric("txwatch_sink_errors_total", sink="postgres") == 0

        # --- the outage ----------------------------------------------------------------------
        pg.pause()
        paused = True
        down_at = time.monotonic()
        peak = 0.0

        def watch() -> float:
            nonlocal peak
            b = backlog()
            peak = max(peak, b)
            return b

        # input keeps coming; the flow keeps scoring while the backlog is bounded...
        produced += produce_plain(broker.brokers, topics["transactions"], chunks[0])
        wait_for(lambda: watch() > 0 and metric("txwatch_sink_errors_total", sink="postgres")
                 > 0, timeout=60, what="alerts held in the backlog")
        wait_for(lambda: _readyz(url)[0] == 503, timeout=30, what="/readyz to report the outage")
        assert _readyz(url)[1] == {"source_assigned": True, "database": False}
        # ...until the backlog is full: then the sink holds the worker, and its input, back
        for chunk in chunks[1:]:
            produced += produce_plain(broker.brokers, topics["transactions"], chunk)
        wait_for(lambda: watch() > MAX_BACKLOG, timeout=60, what="a full backlog")
        held = scored()
        assert held < produced
        # the database stays down for the rest of the outage (a wall-clock duration); the
        # flow must not take more input meanwhile
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            watch()
            time.sleep(0.5)
        assert scored() == held, "the flow kept taking input with a full backlog"
        assert MAX_BACKLOG < peak <= MAX_BACKLOG + BATCH_BOUND
        errors = metric("txwatch_sink_errors_total", sink="postgres")
        retries = metric("txwatch_sink_retries_total", sink="postgres")
        assert errors >= 2 and retries >= 2  # retried, with backoff, all along

        # --- the database is back ------------------------------------------------------------
        pg.resume()
        paused = False
        produced += produce_plain(broker.brokers, topics["transactions"], after)
        wait_for(lambda: scored() == produced, timeout=120, interval=0.2,
                 what="every transaction scored after the outage")
        wait_for(lambda: backlog() == 0, timeout=60, what="the backlog drained")
        wait_for(lambda: _readyz(url)[0] == 200, timeout=30, what="ready again")
        written = metric("txwatch_sink_rows_written_total", sink="postgres")

        # every alert the flow decided (its decisions topic) is in the table, exactly once
        decided = consume_n(broker.brokers, topics["decisions"], produced, timeout=90)
        assert len(decided) == produced
        alerts = {d["transaction_id"]: d for d in (json.loads(m.value()) for m in decided)
                  if d["alert"]}
        rows = alert_rows(dsn)
        assert len(alerts) > 500
        assert rows.keys() == alerts.keys()
        assert written == len(rows)  # each row written once: no lost and no repeated write
        for tid, (_user, score, severity, reasons, version, _w) in rows.items():
            d = alerts[tid]
            assert (severity, list(reasons), version) == (d["decision"], d["reasons"],
                                                         d["model_version"])
            assert score == pytest.approx(d["score"], abs=1e-9)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if paused:
            pg.resume()
        pg.stop()
