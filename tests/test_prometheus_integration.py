"""A real Prometheus scrapes a real dataflow worker while the producer's traffic flows.

The worker runs as in docker-compose.yml (``python -m bytewax.run dataflow`` with the dataflow
API on and a recovery directory); Prometheus runs with prometheus/prometheus.yml (its relabelling
and rules) and only the targets changed to the worker's two loopback endpoints. Then:

* every metric name the dashboards and the rules use is served by the endpoint it belongs to,
  and stored by Prometheus;
* every dashboard query returns a finite value at some point of the run, and every SQL panel
  returns rows;
* the rules evaluate without error, and the pipeline's own health metrics say it is healthy;
* both dashboards render to PNG from this Prometheus (scripts/render_dashboards.py).

Needs Debian's prometheus package (scripts/ensure-debian-packages.sh prometheus).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sinks.migrate import migrate
from tests.helpers import produce, scrape
from txwatch.embedded import EmbeddedBroker, EmbeddedPostgres, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
RATE_INTERVAL = "10s"  # Grafana's $__rate_interval for a 1 s scrape interval, rounded up


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_dashboards", ROOT / "scripts" / "render_dashboards.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


rd = _load_render()


class Run:
    def __init__(self, stack: Any, dsn: str, start: float):
        self.stack = stack
        self.prom = stack.prometheus
        self.dsn = dsn
        self.start = start
        self.worker = stack.workers[0]


def _sum(prom: Any, expr: str) -> float:
    v = prom.value(expr)
    return v if v is not None and math.isfinite(v) else 0.0


@pytest.fixture(scope="module")
def run(
    broker: EmbeddedBroker, pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run scripts/ensure-debian-packages.sh "
                    "prometheus (make test does)")
    name = "prom_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server.uri, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = pg_server.uri.replace("/postgres?", f"/{name}?")
    migrate(dsn)
    suffix = uuid.uuid4().hex[:8]
    topics = {k: f"{k}-{suffix}" for k in ("transactions", "labels", "controls", "dlq",
                                             "decisions")}
    broker.create_topics(topics.values(), partitions=4)
    workdir = tmp_path_factory.mktemp("prom-run")
    with rd.LocalStack(broker.brokers, dsn, workdir, processes=1, topics=topics) as stack:
        start = time.time()
        produce(broker.brokers, topics["transactions"],
                [(b"bad", b"{not json"), (b"bad", b'{"transaction_id": 1}')] * 5)
        stack.produce("--history-days", "1", "--rate", "200", "--customers", "300",
                      "--terminals", "600", "--label-delay", "2s", "--label-share", "0.3",
                      "--duration", "600s")
        prom = stack.prometheus
        # Everything the panels show has happened at least once, and been scraped.
        needs = {
            "scored": 'sum(txwatch_transactions_consumed_total{outcome="scored"}) > 3000',
            "dead letters": "sum(txwatch_dead_letters_total) > 0",
            "alerts written": 'sum(txwatch_sink_rows_written_total{sink="postgres"}) > 0',
            "labels": "sum(txwatch_labels_received_total) > 0",
            "labelled alerts": "sum(txwatch_labelled_alerts_total) > 0",
            "snapshots": "sum(bytewax_snapshot_duration_seconds_count) > 0",
            "lag": "count(bytewax_kafka_consumer_lag) > 0",
        }

        def pending() -> list[str]:
            if stack.producer.poll() not in (None, 0):
                raise RuntimeError((workdir / "producer.log").read_text()[-3000:])
            return [k for k, e in needs.items() if not prom.query(e)]

        try:
            wait_for(lambda: not pending(), timeout=300, interval=1.0,
                     what="traffic through every part of the flow")
        except TimeoutError as e:
            raise AssertionError(f"never happened: {pending()}; worker log: "
                                 f"{(workdir / 'worker-0.log').read_text()[-3000:]}") from e
        yield Run(stack, dsn, start)
    with psycopg.connect(pg_server.uri, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _served_names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def _used_names() -> dict[str, set[str]]:
    """Metric name → where it is used (dashboard panels, variables, rules)."""
    used: dict[str, set[str]] = {}
    for board in rd.load_dashboards().values():
        for q in rd.panel_queries(board):
            if q.kind == "promql":
                for n in rd.metric_names(q.text):
                    used.setdefault(n, set()).add(f"{q.dashboard}: {q.panel}")
        for expr in rd.variable_queries(board):
            for n in rd.metric_names(expr):
                used.setdefault(n, set()).add(f"{board['title']}: variables")
    rules = rd.rule_expressions()
    for rule, expr in rules.items():
        for n in rd.metric_names(expr):
            used.setdefault(n, set()).add(f"rule {rule}")
    for recorded in rules:
        used.pop(recorded, None)  # recording rules are Prometheus's, not the endpoints'
    used.pop("up", None)
    return used


def test_every_metric_used_by_dashboards_and_rules_is_exported(run: Run) -> None:
    txwatch_names = _served_names(scrape(run.worker.metrics_url))
    bytewax_names = _served_names(scrape(run.worker.api_url))
    used = _used_names()
    assert len(used) > 25
    missing = {
        n: where for n, where in used.items()
        if n not in (bytewax_names if n.startswith("bytewax_") else txwatch_names)
    }
    assert not missing, f"not served by the worker: {missing}"
    stored = set(run.prom.api("label/__name__/values"))
    assert not set(used) - stored, f"not stored by Prometheus: {set(used) - stored}"
    # The relabelling keeps each series in one job only.
    for n in ("bytewax_kafka_consumer_lag", "txwatch_decisions_total"):
        jobs = {r["metric"]["job"] for r in run.prom.query(f"{n}")}
        assert jobs == {"bytewax" if n.startswith("bytewax_") else "txwatch"}, (n, jobs)


def test_every_dashboard_query_returns_data(run: Run) -> None:
    queries = [q for b in rd.load_dashboards().values() for q in rd.panel_queries(b)]
    assert len([q for q in queries if q.kind == "promql"]) > 30

    def without_data() -> list[str]:
        end = time.time()
        rng = f"{int(end - run.start) + 1}s"
        out = []
        for q in queries:
            if q.kind != "promql":
                continue
            expr = rd.to_promql(q.text, RATE_INTERVAL, rng)
            values = [float(v) for r in run.prom.query_range(expr, run.start, end, 2)
                      for _, v in r["values"]]
            if not any(math.isfinite(v) for v in values):
                out.append(f"{q.dashboard} / {q.panel} / {q.ref}: {expr}")
        return out

    try:
        wait_for(lambda: not without_data(), timeout=60, interval=2.0, what="every panel")
    except TimeoutError:
        pytest.fail("panels without data:\n" + "\n".join(without_data()))

    for q in queries:
        if q.kind == "sql":
            cols, rows = rd.sql_rows(run.dsn, q.text)
            assert cols and rows, f"{q.dashboard} / {q.panel}: no rows"
    for board in rd.load_dashboards().values():
        for expr in rd.variable_queries(board):
            processes = {r["metric"].get("process") for r in
                         run.prom.query(rd.to_promql(expr))}
            assert run.worker.process in processes, (board["title"], expr)


def test_rules_evaluate_and_the_pipeline_reports_itself_healthy(run: Run) -> None:
    prom = run.prom
    wait_for(lambda: all(r.get("lastEvaluation", "").startswith("20")
                         and r["lastEvaluation"] > "2001"
                         for g in prom.api("rules")["groups"] for r in g["rules"]),
             timeout=30, what="every rule evaluated once")
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(rd.rule_expressions())
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken
    firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
    assert not firing & {"TxwatchTargetDown", "TxwatchMetricsAbsent", "TxwatchNoTraffic"}
    # The recording rules produce values from the live traffic.
    assert _sum(prom, "txwatch:transactions_consumed:rate5m") > 0
    assert prom.query("txwatch:alert_rate_per_1000:rate15m")

    assert _sum(prom, 'sum(up{job=~"txwatch|bytewax"})') == 2
    partitions = {r["metric"]["partition"] for r in prom.query(
        f'bytewax_kafka_consumer_lag{{topic="{run.stack.topics["transactions"]}"}}')}
    assert partitions == {"0", "1", "2", "3"}
    assert _sum(prom, "sum(txwatch_alert_budget_per_1000)") > 0


def test_ready_flag_is_maintained_without_readyz_calls(run: Run) -> None:
    """txwatch_ready is what TxwatchNotReady alerts on and the "Ready processes" stat shows: it
    must be 1 while the worker runs, without anyone calling /readyz (Prometheus only scrapes
    /metrics, the compose healthcheck calls /healthz)."""
    assert run.prom.value('txwatch_ready{process="worker-0"}') == 1


def test_state_and_window_gauges_are_maintained(run: Run) -> None:
    """Gauges that a panel shows per process carry values once traffic has flowed: a gauge
    stuck at its initial 0 "returns data" but shows nothing true."""
    prom = run.prom
    stuck = [
        expr for expr in (
            "sum(txwatch_users_in_state)",
            "sum(txwatch_terminals_in_state)",
            'sum(txwatch_state_bytes{stage="user"})',
            'sum(txwatch_state_bytes{stage="terminal"})',
            "sum(txwatch_alert_rate_per_1000)",
        )
        if not _sum(prom, expr) > 0
    ]
    assert _sum(prom, "sum(txwatch_alerts_total)") > 0  # so the alert rate cannot be 0
    assert not stuck, f"still at 0 after traffic: {stuck}"


def test_dashboards_render_from_the_real_run(run: Run, tmp_path: Path) -> None:
    paths = rd.render_all(run.prom, run.dsn, run.start, time.time(), tmp_path,
                          rate_interval=RATE_INTERVAL, strict=True)
    assert sorted(p.name for p in paths) == ["detection.png", "pipeline.png"]
    import matplotlib.image as mpimg

    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] > 600 and img.shape[1] > 1200
        assert img.std() > 0.05, f"{p.name} is nearly blank"
