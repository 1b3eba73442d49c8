"""The PostgreSQL alert sink: batched, idempotent, retried, never dropping an alert.

Delivery: at-least-once from Bytewax (after a resume, up to one snapshot interval of output
is emitted again), made exactly-once in the table by ``ON CONFLICT (transaction_id)``, which
updates only the detection columns, so a replay never resets an analyst's review.

Each partition's own thread writes its backlog, so the worker appends a batch's alerts and
goes on instead of waiting for a round trip to the database; a row leaves the backlog once
its transaction has committed. The backlog is part of the sink's recovery snapshot, so a crash
loses nothing, during an outage or a write. When the database is unreachable, the thread
retries with exponential backoff; past ``TXWATCH_SINK_MAX_BACKLOG`` (alerts waiting in the
process) the sink blocks, which holds the whole worker (and its input) back until the
database answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from psycopg import sql
from psycopg.types.json import Jsonb

from operators.records import Decision
from txwatch.metrics import get_metrics

log = logging.getLogger(__name__)
SINK = "postgres"

COLUMNS = (
    "transaction_id", "user_id", "event_time", "amount", "currency", "amount_base",
    "merchant_id", "terminal_id", "merchant_category", "country", "channel", "score",
    "threshold", "severity", "reasons", "features", "components", "model_version", "worker",
    "detected_at",
)
DETECTION_COLUMNS = COLUMNS[1:]
UPSERT = sql.SQL(
    "INSERT INTO alerts ({cols}) VALUES ({vals}) "
    "ON CONFLICT (transaction_id) DO UPDATE SET {sets}"
).format(
    cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
    vals=sql.SQL(", ").join([sql.Placeholder()] * len(COLUMNS)),
    sets=sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in DETECTION_COLUMNS
    ),
)


def _finite(v: float) -> float | None:
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def alert_row(d: Decision) -> tuple[Any, ...]:
    """The ``alerts`` row of a decision (plain values: picklable for the backlog snapshot)."""
    t = d.txn
    return (
        t.transaction_id,
        t.user_id,
        t.timestamp,
        t.amount,
        t.currency,
        t.amount_base,
        t.merchant_id,
        t.terminal_id,
        t.merchant_category,
        t.country,
        t.channel,
        float(d.score),
        float(d.threshold),
        d.severity,
        json.dumps([r.as_dict() for r in d.reasons]),
        json.dumps({k: _finite(v) for k, v in d.features.items()}),
        json.dumps({k: _finite(v) for k, v in d.components.items()}),
        d.model_version,
        d.worker,
        datetime.fromtimestamp(d.decided_at or time.time(), tz=UTC),
    )


class _Backlog:
    """The process-wide backlog: every partition of this process adds to one total, which
    the gauge shows and ``TXWATCH_SINK_MAX_BACKLOG`` bounds."""

    lock = threading.Lock()
    total = 0

    @classmethod
    def add(cls, n: int) -> int:
        with cls.lock:
            cls.total += n
            get_metrics().sink_backlog.labels(sink=SINK).set(cls.total)
            return cls.total


class _AlertPartition(StatefulSinkPartition[tuple[Any, ...], list[tuple[Any, ...]]]):
    def __init__(self, dsn: str, batch_size: int, max_backlog: int, retry_max: float,
                 resume: list[tuple[Any, ...]] | None) -> None:
        self.dsn = dsn
        self.batch_size = batch_size
        self.max_backlog = max_backlog
        self.retry_max = retry_max
        self.backlog: list[tuple[Any, ...]] = list(resume or [])
        self.conn: psycopg.Connection[Any] | None = None
        self.lock = threading.Lock()  # the backlog (appended by the worker, trimmed here)
        self.writing = threading.Lock()  # one writer at a time: the thread, or close()
        self.wake = threading.Event()  # rows to write (set by write_batch)
        self.stopping = threading.Event()
        self.backoff = 0.1
        self.failing = False  # the last write failed: the next one is a retry
        _Backlog.add(len(self.backlog))
        if self.backlog:
            self.wake.set()  # (a resumed backlog is written first)
        self.thread = threading.Thread(target=self._write_loop, name="alert-sink", daemon=True)
        self.thread.start()

    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.dsn, connect_timeout=5)
        return self.conn

    def _write(self) -> bool:
        """Write the backlog in batches; True when it is empty. The caller holds ``writing``;
        the backlog's lock is held only to read and trim it, never over a round trip, so the
        worker keeps appending (and snapshotting) while rows are on their way: a row leaves
        the backlog, and so the recovery snapshot, once its transaction has committed."""
        m = get_metrics()
        while True:
            with self.lock:
                batch = self.backlog[: self.batch_size]
            if not batch:
                return True
            if self.failing:
                m.sink_retries.labels(sink=SINK).inc()
            # one row per transaction id in a batch (the last decision wins)
            rows = list({r[0]: r for r in batch}.values())
            t0 = time.perf_counter()
            try:
                conn = self._connect()
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        UPSERT,
                        [(*r[:14], Jsonb(r[14], _as_is), Jsonb(r[15], _as_is),
                          Jsonb(r[16], _as_is), *r[17:]) for r in rows],
                    )
            except psycopg.Error as e:
                m.sink_errors.labels(sink=SINK).inc()
                log.warning("alert sink: write of %d rows failed: %s", len(rows), e)
                if self.conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        self.conn.close()
                self.conn = None
                self.failing = True
                return False
            m.sink_write_seconds.observe(time.perf_counter() - t0)
            m.sink_batch_size.observe(len(rows))
            m.sink_rows_written.labels(sink=SINK).inc(len(rows))
            with self.lock:
                del self.backlog[: len(batch)]
            _Backlog.add(-len(batch))
            self.backoff = 0.1
            self.failing = False

    def _write_loop(self) -> None:
        # woken by each batch the worker appends; after a failure it waits out the backoff
        # (doubling up to retry_max) before the next try, however many batches arrive
        while True:
            if not self.failing:
                self.wake.wait()
            self.wake.clear()
            if self.stopping.is_set():
                return
            with self.writing:
                ok = self._write()
            if not ok:
                self.backoff = min(self.retry_max, self.backoff * 2)
                if self.stopping.wait(self.backoff):
                    return

    def write_batch(self, values: list[Any]) -> None:
        rows = [alert_row(v) if isinstance(v, Decision) else v for v in values]
        if rows:
            with self.lock:
                self.backlog.extend(rows)
            _Backlog.add(len(rows))
            self.wake.set()
        # while the database is slow or unreachable, keep going as long as the backlog is
        # bounded, then hold the worker (and so the input) back until the writes drain it
        while True:
            with self.lock:
                if _Backlog.total <= self.max_backlog or not self.backlog:
                    return
            time.sleep(0.05)  # waiting on an external service

    def snapshot(self) -> list[tuple[Any, ...]]:
        with self.lock:
            return list(self.backlog)

    def close(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join()
        # at shutdown, keep trying to write what is left (a clean stop loses nothing)
        deadline = time.monotonic() + 10 * self.retry_max
        with self.writing:
            while not self._write() and time.monotonic() < deadline:
                time.sleep(min(self.backoff, 1.0))
                self.backoff = min(self.retry_max, self.backoff * 2)
        if self.backlog:
            log.error("alert sink closing with %d unwritten alerts (kept in the recovery "
                      "snapshot when recovery is on)", len(self.backlog))
        if self.conn is not None:
            self.conn.close()


def _as_is(text: str) -> str:
    """The JSON of a backlog row's column as it is (:func:`alert_row` wrote it)."""
    return text


class AlertSink(FixedPartitionedSink[tuple[Any, ...], list[tuple[Any, ...]]]):
    """Upserts alert rows into ``alerts``; one partition per logical user shard.

    Takes ``(user shard key, Decision)`` or ``(user shard key, alert_row(decision))`` items.
    """

    def __init__(self, dsn: str, parts: list[str], batch_size: int = 500,
                 max_backlog: int = 10_000, retry_max: float = 30.0) -> None:
        self.dsn = dsn
        self.parts = parts
        self.batch_size = batch_size
        self.max_backlog = max_backlog
        self.retry_max = retry_max

    def list_parts(self) -> list[str]:
        return list(self.parts)

    def part_fn(self, item_key: str) -> int:
        return self.parts.index(item_key) if item_key in self.parts else 0

    def build_part(self, step_id: str, for_part: str,
                   resume_state: list[tuple[Any, ...]] | None) -> _AlertPartition:
        return _AlertPartition(self.dsn, self.batch_size, self.max_backlog, self.retry_max,
                               resume_state)
