"""Render txwatch's Grafana dashboards to PNG from a real Prometheus (and PostgreSQL).

    # against a running stack (docker compose: Prometheus on 127.0.0.1:9090)
    python scripts/render_dashboards.py --prometheus http://127.0.0.1:9090 \\
        --dsn postgresql://USER:PASSWORD@127.0.0.1:5432/txwatch --minutes 30

    # or start everything here first: embedded broker and PostgreSQL, a two-process dataflow
    # cluster, the producer and a local Prometheus (Debian's), run N seconds, then render
    python scripts/render_dashboards.py --demo 240 --out docs/img

Each dashboard of grafana/dashboards/*.json becomes ``<name>.png``: every panel at its grid
position, drawn from the same PromQL (or SQL) Grafana runs, with the dashboard variables set to
"All". This module also holds what the tests share about dashboards and Prometheus: the
queries of a dashboard (:func:`panel_queries`), Grafana variable substitution
(:func:`to_promql`), metric names in an expression (:func:`metric_names`), a local Prometheus
(:class:`LocalPrometheus`) and the local stack (:class:`LocalStack`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "grafana" / "dashboards"
PROMETHEUS_YML = ROOT / "prometheus" / "prometheus.yml"
RULES_DIR = ROOT / "prometheus" / "rules"

# --- dashboards and PromQL -----------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    kind: str  # "promql" or "sql"
    text: str
    legend: str = ""


def load_dashboards(directory: Path = DASHBOARDS) -> dict[str, dict[str, Any]]:
    """Dashboard file stem → dashboard JSON."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def panel_queries(board: dict[str, Any]) -> list[PanelQuery]:
    """Every query of every panel (rows have none), PromQL and SQL."""
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            if "expr" in t:
                out.append(PanelQuery(board["title"], p["title"], t["refId"], "promql",
                                      t["expr"], t.get("legendFormat", "")))
            elif "rawSql" in t:
                out.append(PanelQuery(board["title"], p["title"], t["refId"], "sql",
                                      t["rawSql"]))
    return out


def variable_queries(board: dict[str, Any]) -> list[str]:
    """The PromQL behind the dashboard's variables (``label_values(metric{...}, label)``)."""
    out = []
    for v in board.get("templating", {}).get("list", []):
        q = v.get("query")
        text = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", text or "")
        if m:
            out.append(m[1])
    return out


def to_promql(expr: str, rate_interval: str = "1m", range_: str = "1h",
              variables: dict[str, str] | None = None) -> str:
    """Grafana's variables replaced as Grafana would with every variable set to All."""
    values = {"__rate_interval": rate_interval, "__interval": rate_interval,
              "__range": range_, **(variables or {})}

    def sub(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        return values.get(name, ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names an expression selects.

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / on () b:rec > 2'))
    ['a_bucket', 'b:rec']
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("(") or m[0].lower() in _KEYWORDS:
            continue
        names.add(m[0])
    return names


def rule_expressions(rules_dir: Path = RULES_DIR) -> dict[str, str]:
    """Rule name (alert or record) → expression, over every rule file."""
    out = {}
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("alert") or rule["record"]] = rule["expr"]
    return out


# --- a local Prometheus --------------------------------------------------------------------


def local_prometheus_config(targets: dict[str, list[tuple[str, str]]],
                            scrape_interval: str = "1s") -> dict[str, Any]:
    """prometheus/prometheus.yml with its targets replaced: ``{job: [(address, process)]}``.

    Everything else (relabelling, rules) is the production file's, so a test of this config
    tests that file. Jobs absent from ``targets`` are dropped.
    """
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["global"].update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval,
                         scrape_timeout=scrape_interval)
    cfg["rule_files"] = [str(RULES_DIR / "*.yml")]
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": [addr], "labels": {"process": proc}}
                                     for addr, proc in targets[job["job_name"]]]
            jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URL
        return json.loads(r.read())


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback URL
            return 200 <= r.status < 300
    except OSError:
        return False


class PrometheusError(RuntimeError):
    pass


class LocalPrometheus:
    """Debian's ``prometheus`` binary on a loopback port with a config written here."""

    def __init__(self, config: dict[str, Any], workdir: Path, port: int | None = None):
        from txwatch.embedded import free_port

        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise FileNotFoundError(
                "prometheus is not installed: scripts/ensure-debian-packages.sh prometheus"
            )
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalPrometheus:
        from txwatch.embedded import wait_for

        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - closed by the process
        self.proc = subprocess.Popen(  # noqa: S603 - Debian's binary, our arguments
            [self.binary, f"--config.file={cfg}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=log, start_new_session=True,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}"
                )
            return http_ok(self.url + "/-/ready")

        wait_for(ready, timeout=30, what="prometheus to be ready")
        return self

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = _get_json(url)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self.api("query", **params)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (None when it returns nothing)."""
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def query_range(self, expr: str, start: float, end: float, step: float
                    ) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the local stack: dataflow processes, producer, Prometheus -----------------------------


@dataclass
class Worker:
    process: str
    metrics_port: int
    api_port: int
    proc: subprocess.Popen[bytes]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/metrics"


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGINT) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class LocalStack:
    """A dataflow cluster of ``processes`` worker processes (``python -m bytewax.run
    dataflow`` with the dataflow API on and a recovery directory, as in docker-compose.yml),
    the producer, and a local Prometheus scraping both endpoints of every process."""

    brokers: str
    dsn: str
    workdir: Path
    processes: int = 1
    topics: dict[str, str] = field(default_factory=dict)
    snapshot_seconds: int = 1
    workers: list[Worker] = field(default_factory=list)
    producer: subprocess.Popen[bytes] | None = None
    prometheus: LocalPrometheus | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TXWATCH_", "BYTEWAX_"))}
        env.update(TXWATCH_KAFKA_BROKERS=self.brokers, TXWATCH_DATABASE_URL=self.dsn,
                   TXWATCH_METRICS_HOST="127.0.0.1")
        env.update({f"TXWATCH_{k.upper()}_TOPIC": v for k, v in self.topics.items()})
        env.update(extra)
        return env

    def start(self) -> LocalStack:
        from txwatch.embedded import free_port, wait_for

        self.workdir.mkdir(parents=True, exist_ok=True)
        recovery = self.workdir / "recovery"
        recovery.mkdir(exist_ok=True)
        subprocess.run(  # noqa: S603 - our interpreter, bytewax's module
            [sys.executable, "-m", "bytewax.recovery", str(recovery), str(self.processes)],
            check=True, capture_output=True,
        )
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(self.processes))
        for i in range(self.processes):
            mport, aport = free_port(), free_port()
            env = self.env(TXWATCH_METRICS_PORT=str(mport),
                           BYTEWAX_DATAFLOW_API_ENABLED="true",
                           BYTEWAX_DATAFLOW_API_PORT=str(aport))
            args = [sys.executable, "-m", "bytewax.run", "dataflow", "-r", str(recovery),
                    "-s", str(self.snapshot_seconds), "-b", "0"]
            if self.processes > 1:
                args += [f"-i{i}", "-a", addresses]
            log = open(self.workdir / f"worker-{i}.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(  # noqa: S603 - our interpreter and module
                args, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
            self.workers.append(Worker(f"worker-{i}", mport, aport, proc))
        for w in self.workers:
            def up(w: Worker = w) -> bool:
                if w.proc.poll() is not None:
                    log = (self.workdir / f"{w.process}.log").read_text()[-3000:]
                    raise RuntimeError(f"{w.process} exited ({w.proc.returncode}): {log}")
                return http_ok(w.metrics_url) and http_ok(w.api_url)
            wait_for(up, timeout=120, what=f"{w.process}'s two metrics endpoints")
        self.prometheus = LocalPrometheus(local_prometheus_config({
            "txwatch": [(f"127.0.0.1:{w.metrics_port}", w.process) for w in self.workers],
            "bytewax": [(f"127.0.0.1:{w.api_port}", w.process) for w in self.workers],
        }), self.workdir / "prometheus").start()
        return self

    def produce(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "producer.log", "ab")  # noqa: SIM115
        self.producer = subprocess.Popen(  # noqa: S603 - our interpreter and CLI
            [sys.executable, "-m", "txwatch.cli", "produce", "--quiet", *args],
            env=self.env(), cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
        )
        return self.producer

    def stop(self) -> None:
        _stop(self.producer)
        for w in self.workers:
            _stop(w.proc)
        if self.prometheus is not None:
            self.prometheus.stop()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- rendering -----------------------------------------------------------------------------


def _legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


def _series(result: list[dict[str, Any]]) -> list[tuple[dict[str, str], list[float],
                                                         list[float]]]:
    out = []
    for r in result:
        ts = [float(t) for t, _ in r["values"]]
        vs = [float(v) for _, v in r["values"]]
        out.append((r["metric"], ts, vs))
    return out


def _fmt(v: float, unit: str) -> str:
    if not math.isfinite(v):
        return "–"
    if unit == "percentunit":
        return f"{v:.1%}"
    if unit == "bytes":
        for u in ("B", "KiB", "MiB", "GiB"):
            if abs(v) < 1024:
                return f"{v:.1f} {u}"
            v /= 1024
        return f"{v:.1f} TiB"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:.2f} s"
    suffix = {"reqps": "/s", "ops": "/s"}.get(unit, "")
    return f"{v:,.2f}{suffix}" if abs(v) < 1000 else f"{v:,.0f}{suffix}"


def render_dashboard(board: dict[str, Any], prom: LocalPrometheus | Any, dsn: str | None,
                     start: float, end: float, out: Path, step: float | None = None,
                     rate_interval: str = "1m", strict: bool = False) -> Path:
    """Draw every panel of ``board`` from ``prom`` (and ``dsn``) between ``start`` and ``end``.

    A panel whose query fails is drawn as an error; with ``strict`` the first such error is
    raised after the picture is saved.
    """
    errors: list[Exception] = []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import dates as mdates

    step = step or max(1.0, (end - start) / 200)
    range_ = f"{max(1, int(end - start))}s"
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42
    fig = plt.figure(figsize=(22, rows * unit_h + 0.8), dpi=80)
    fig.suptitle(f"{board['title']}   ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))}–"
                 f"{time.strftime('%H:%M UTC', time.gmtime(end))})", fontsize=15, x=0.01,
                 ha="left")
    top = 1 - 0.8 / (rows * unit_h + 0.8)
    for p in panels:
        g = p["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        y0 = top * (1 - (g["y"] + g["h"]) / rows)
        h = top * g["h"] / rows
        if p["type"] == "row":
            fig.text(x0 + 0.005, y0 + h / 2, p["title"], fontsize=12, weight="bold",
                     va="center")
            continue
        ax = fig.add_axes((x0 + 0.045, y0 + 0.14 * h, w - 0.055, h * 0.70))
        ax.set_title(p["title"], fontsize=10, loc="left")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        try:
            if p["type"] == "table":
                _draw_table(ax, p, dsn)
            elif p["type"] == "stat":
                _draw_stat(ax, p, prom, start, end, step, rate_interval, range_, unit)
            elif p["type"] == "heatmap":
                _draw_heatmap(ax, p, prom, start, end, step, rate_interval, range_, mdates)
            else:
                _draw_timeseries(ax, p, prom, start, end, step, rate_interval, range_, unit,
                                 mdates)
        except Exception as e:  # a broken panel is drawn as such, the others still render
            errors.append(e)
            ax.clear()
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"error: {e}"[:120], ha="center", va="center", color="red",
                    transform=ax.transAxes, fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    if strict and errors:
        raise errors[0]
    return out


def _draw_stat(ax: Any, p: dict[str, Any], prom: Any, start: float, end: float, step: float,
               ri: str, rng: str, unit: str) -> None:
    expr = to_promql(p["targets"][0]["expr"], ri, rng)
    series = _series(prom.query_range(expr, start, end, step))
    ax.set_axis_off()
    finite = [(t, v) for _, ts, vs in series for t, v in zip(ts, vs, strict=True)
              if math.isfinite(v)]
    last = max(finite)[1] if finite else float("nan")
    ax.text(0.5, 0.45, _fmt(last, unit) if finite else "no data", ha="center", va="center",
            fontsize=22, weight="bold", transform=ax.transAxes,
            color="#2f7d32" if finite else "grey")


def _draw_timeseries(ax: Any, p: dict[str, Any], prom: Any, start: float, end: float,
                     step: float, ri: str, rng: str, unit: str, mdates: Any) -> None:
    from datetime import UTC, datetime

    n = 0
    for t in p["targets"]:
        for labels, ts, vs in _series(prom.query_range(to_promql(t["expr"], ri, rng), start,
                                                       end, step)):
            xs = [datetime.fromtimestamp(x, UTC) for x in ts]
            ax.plot(xs, vs, linewidth=1.2, label=_legend(t.get("legendFormat", ""), labels))
            n += 1
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if end - start > 900
                                                      else "%H:%M:%S"))
    ax.tick_params(labelsize=7)
    ax.yaxis.set_major_formatter(lambda v, _pos: _fmt(v, unit))
    ax.grid(alpha=0.3)
    if n:
        ax.legend(fontsize=6, loc="upper left", ncol=max(1, min(4, n // 4 + 1)),
                  framealpha=0.6)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _draw_heatmap(ax: Any, p: dict[str, Any], prom: Any, start: float, end: float,
                  step: float, ri: str, rng: str, mdates: Any) -> None:
    import numpy as np

    series = _series(prom.query_range(to_promql(p["targets"][0]["expr"], ri, rng), start, end,
                                      step))
    buckets = sorted(series, key=lambda s: float(s[0].get("le", "inf")))
    if not buckets:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    times = sorted({t for _, ts, _ in buckets for t in ts})
    index = {t: i for i, t in enumerate(times)}
    cum = np.zeros((len(buckets), len(times)))
    for row, (_, ts, vs) in enumerate(buckets):
        for t, v in zip(ts, vs, strict=True):
            cum[row, index[t]] = v if math.isfinite(v) else 0.0
    counts = np.diff(cum, axis=0, prepend=0).clip(min=0)
    from matplotlib.colors import LogNorm

    ax.imshow(counts + 1, aspect="auto", origin="lower", cmap="Oranges",
              interpolation="nearest", norm=LogNorm())
    les = [b[0].get("le", "") for b in buckets]
    ax.set_yticks(range(len(les)), les, fontsize=6)
    ticks = np.linspace(0, len(times) - 1, 6).astype(int)
    fmt = "%H:%M" if end - start > 900 else "%H:%M:%S"
    ax.set_xticks(ticks, [time.strftime(fmt, time.gmtime(times[i])) for i in ticks], fontsize=7)
    ax.set_ylabel("score ≤", fontsize=7)


def sql_rows(dsn: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a SQL panel's query (no Grafana macros are used by them) and return its rows."""
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)  # type: ignore[call-overload]  # the dashboard's own fixed SQL
        cols = [d.name for d in cur.description or []]
        return cols, cur.fetchall()


def _draw_table(ax: Any, p: dict[str, Any], dsn: str | None) -> None:
    ax.set_axis_off()
    if dsn is None:
        ax.text(0.5, 0.5, "no database given", ha="center", va="center", transform=ax.transAxes)
        return
    cols, rows = sql_rows(dsn, p["targets"][0]["rawSql"])
    rows = rows[:12]

    def cell(v: Any) -> str:
        if hasattr(v, "strftime"):
            return v.strftime("%m-%d %H:%M:%S")
        if isinstance(v, list):
            v = ",".join(str(r.get("code", r)) if isinstance(r, dict) else str(r) for r in v)
        s = str(v)
        return s if len(s) <= 34 else s[:33] + "…"

    if not rows:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        return
    table = ax.table(cellText=[[cell(v) for v in r] for r in rows], colLabels=cols,
                     loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(cols))))


def render_all(prom: Any, dsn: str | None, start: float, end: float, out_dir: Path,
               rate_interval: str = "1m", strict: bool = False) -> list[Path]:
    return [
        render_dashboard(board, prom, dsn, start, end, out_dir / f"{name}.png",
                         rate_interval=rate_interval, strict=strict)
        for name, board in load_dashboards().items()
    ]


class _RemotePrometheus(LocalPrometheus):
    """An already running Prometheus at ``url`` (nothing is started or stopped)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.proc = None


@contextlib.contextmanager
def _demo(seconds: float, workdir: Path) -> Iterator[tuple[LocalPrometheus, str, float]]:
    from sinks.migrate import migrate
    from txwatch.embedded import EmbeddedBroker, EmbeddedPostgres, create_topics, wait_for
    from txwatch.settings import Settings

    s = Settings()
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker, \
            EmbeddedPostgres(workdir / "pg") as pg:
        create_topics(broker.brokers, [s.transactions_topic, s.labels_topic, s.controls_topic,
                                       s.decisions_topic, s.dlq_topic], s.topic_partitions)
        migrate(pg.uri)
        with LocalStack(broker.brokers, pg.uri, workdir, processes=2,
                        snapshot_seconds=5) as stack:
            assert stack.prometheus is not None
            start = time.time()
            _malformed(broker.brokers, s.transactions_topic)
            stack.produce("--history-days", "2", "--rate", "200", "--customers", "2000",
                          "--terminals", "4000", "--label-delay", "20s",
                          "--label-share", "0.1", "--duration", f"{int(seconds)}s")
            wait_for(lambda: stack.producer is not None and stack.producer.poll() is not None,
                     timeout=seconds + 600, interval=1.0, what="the producer to finish")
            yield stack.prometheus, pg.uri, start


def _malformed(brokers: str, topic: str, n: int = 20) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers})
    for i in range(n):
        p.produce(topic, b"{not json" if i % 2 else b'{"transaction_id": 1}', key=b"bad")
    p.flush(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", help="URL of a running Prometheus")
    ap.add_argument("--dsn", help="libpq URI of the alerts database (for the SQL panels)")
    ap.add_argument("--minutes", type=float, default=30, help="time range to draw")
    ap.add_argument("--demo", type=float, metavar="SECONDS",
                    help="start a local stack, run traffic this long, then render")
    ap.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    if args.demo:
        with tempfile.TemporaryDirectory(prefix="txwatch-render-") as tmp, \
                _demo(args.demo, Path(tmp)) as (prom, dsn, start):
            paths = render_all(prom, dsn, start, time.time(), args.out, args.rate_interval)
    elif args.prometheus:
        end = time.time()
        paths = render_all(_RemotePrometheus(args.prometheus), args.dsn, end - args.minutes * 60,
                           end, args.out, args.rate_interval)
    else:
        ap.error("give --prometheus URL or --demo SECONDS")
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
