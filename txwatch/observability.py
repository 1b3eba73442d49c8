"""Metrics endpoint, health checks and logging for every worker process.

One small HTTP server per process (loopback by default) answers:

* ``/metrics`` — every txwatch metric (prometheus-client's exposition format);
* ``/healthz`` — 200 while the process is alive;
* ``/readyz`` — 200 once a source partition is assigned and the database answers.

(Bytewax's own API server, enabled with ``BYTEWAX_DATAFLOW_API_ENABLED=true``, serves its
item and lag metrics on port 3030 of all interfaces; see README, Metrics.)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from txwatch.metrics import OUTCOMES, get_metrics
from txwatch.settings import Settings

_server: ThreadingHTTPServer | None = None
_lock = threading.Lock()
_state: dict[str, Any] = {"source_assigned": False, "db_ok_until": 0.0, "dsn": None}


def mark_source_assigned() -> None:
    _state["source_assigned"] = True


def _db_ready() -> bool:
    dsn = _state["dsn"]
    if dsn is None:
        return True
    if time.monotonic() < _state["db_ok_until"]:
        return True
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=2) as c:
            c.execute("SELECT 1")
        _state["db_ok_until"] = time.monotonic() + 5.0
        return True
    except Exception:
        return False


def _ready_loop(period: float = 5.0) -> None:
    """Keep the ``txwatch_ready`` gauge current for scrapers that never call /readyz."""
    while True:
        ok = _state["source_assigned"] and _db_ready()
        get_metrics().ready.set(1 if ok else 0)
        time.sleep(period)  # a background refresh period, not a wait for a condition


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body = generate_latest(get_metrics().registry)
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif self.path.startswith("/healthz"):
            self._send(200, b"ok\n", "text/plain")
        elif self.path.startswith("/readyz"):
            src = _state["source_assigned"]
            db = _db_ready()
            ok = src and db
            get_metrics().ready.set(1 if ok else 0)
            body = json.dumps({"source_assigned": src, "database": db}).encode() + b"\n"
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def init_metrics(settings: Settings) -> None:
    """Create every labelled series at zero so dashboards and rules see them from the start."""
    m = get_metrics()
    for o in OUTCOMES:
        m.consumed.labels(outcome=o)
    for s in ("allow", "review", "block"):
        m.decisions.labels(severity=s)
    for s in ("review", "block"):
        m.alerts.labels(severity=s)
    from operators.reasons import CODES

    for c in CODES:
        m.alert_reasons.labels(code=c)
    for i in ("transactions", "labels", "controls"):
        m.invalid.labels(input=i)
    for sink in ("postgres", "dlq", "decisions"):
        m.sink_errors.labels(sink=sink)
        m.sink_retries.labels(sink=sink)
        m.sink_rows_written.labels(sink=sink)
        m.sink_backlog.labels(sink=sink)
    for lb in ("fraud", "legit"):
        m.labels_received.labels(label=lb)
        m.labelled_alerts.labels(label=lb)
    for st in ("terminal", "user"):
        m.late_events.labels(stage=st)
        m.state_bytes.labels(stage=st)
    m.alert_budget.set(settings.alert_budget_per_1000)


def ensure_metrics_server(settings: Settings) -> None:
    """Start this process's metrics server once (no-op when the port is 0)."""
    global _server
    with _lock:
        mark_source_assigned()
        if _server is not None or settings.metrics_port == 0:
            return
        init_metrics(settings)
        _state["dsn"] = settings.dsn() if settings.database_url else None
        try:
            _server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), _Handler)
        except OSError as e:
            raise RuntimeError(
                f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {e}. "
                "Give each process its own TXWATCH_METRICS_PORT (txwatch cluster does)."
            ) from e
        threading.Thread(target=_server.serve_forever, name="metrics", daemon=True).start()
        threading.Thread(target=_ready_loop, name="readiness", daemon=True).start()
        logging.getLogger(__name__).info(
            "metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port
        )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": os.getpid(),
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def setup_logging(settings: Settings) -> None:
    """Structured logs (one JSON object a line with TXWATCH_LOG_FORMAT=json). Logs carry ids,
    never amounts, cards or other personal values."""
    root = logging.getLogger()
    if getattr(root, "_txwatch", False):
        return
    h = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        h.setFormatter(_JsonFormatter())
    else:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [h]
    root.setLevel(settings.log_level.upper())
    root._txwatch = True  # type: ignore[attr-defined]
