"""The transactional outbox between analysts' writes and Kafka.

A review or snooze and the message announcing it are written in one PostgreSQL transaction
(:func:`enqueue`). The request then tries to publish its own rows at once (:func:`drain` with
``ids``) so the answer can say ``published``; rows that fail stay pending and
:class:`Drainer`, a background thread of ``txwatch serve``, retries them until delivered.

Rows are claimed with ``FOR UPDATE``, so the request, the drainer and several ``txwatch
serve`` processes never publish the same row at the same time: drainers skip rows another
holds (``SKIP LOCKED``); a request waits for its own, to answer with their outcome. Delivery is
at-least-once: a row is marked sent only after its delivery report.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from psycopg import Connection
from psycopg_pool import ConnectionPool

from txwatch.web.labels import KafkaPublisher, Message

log = logging.getLogger(__name__)

SENT_RETENTION = timedelta(days=7)


@dataclass
class DrainResult:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def first_error(self) -> str | None:
        return self.errors[0] if self.errors else None


def enqueue(conn: Connection, messages: Sequence[Message], ref: str | None) -> list[int]:
    """Add ``messages`` to the outbox inside the caller's transaction; returns their ids."""
    ids = []
    for m in messages:
        row = conn.execute(
            "INSERT INTO outbox (topic, key, payload, ref) VALUES (%s, %s, %s, %s) RETURNING id",
            [m.topic, m.key, m.value.decode(), ref],
        ).fetchone()
        assert row is not None
        ids.append(row["id"] if isinstance(row, dict) else row[0])
    return ids


def drain(
    pool: ConnectionPool,
    publisher: KafkaPublisher,
    ids: Sequence[int] | None = None,
    limit: int = 500,
) -> DrainResult:
    """Publish pending rows (only ``ids`` if given) in id order and record the outcome."""
    result = DrainResult()
    with pool.connection() as conn, conn.transaction():
        if ids is None:
            rows = conn.execute(
                "SELECT id, topic, key, payload FROM outbox WHERE sent_at IS NULL"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                [limit],
            ).fetchall()
        else:
            # the caller's own rows: wait for a background drain that holds them (it commits
            # within the publisher's timeout), then see whether it sent them; skipping them
            # would answer "pending" for rows that are being published
            rows = conn.execute(
                "SELECT id, topic, key, payload FROM outbox"
                " WHERE id = ANY(%s) AND sent_at IS NULL ORDER BY id FOR UPDATE",
                [list(ids)],
            ).fetchall()
        if not rows:
            return result
        msgs = [Message(r["topic"], r["key"], r["payload"].encode()) for r in rows]
        outcome = publisher.publish(msgs)
        sent = [r["id"] for r, err in zip(rows, outcome, strict=True) if err is None]
        failed = [(r["id"], err) for r, err in zip(rows, outcome, strict=True) if err is not None]
        if sent:
            conn.execute(
                "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL"
                " WHERE id = ANY(%s)",
                [sent],
            )
        if failed:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                    [(err, i) for i, err in failed],
                )
        result.sent, result.failed = len(sent), len(failed)
        result.errors = list(dict.fromkeys(err for _, err in failed if err))
    return result


def pending_among(pool: ConnectionPool, ids: Sequence[int]) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM outbox WHERE id = ANY(%s) AND sent_at IS NULL", [list(ids)]
        ).fetchone()
    return int(row["n"]) if row else 0


def prune(pool: ConnectionPool, older_than: timedelta = SENT_RETENTION) -> int:
    """Delete rows sent more than ``older_than`` ago."""
    with pool.connection() as conn:
        cur = conn.execute("DELETE FROM outbox WHERE sent_at < now() - %s::interval", [older_than])
        return cur.rowcount


class Drainer:
    """Retries pending outbox rows every ``interval`` seconds in a daemon thread."""

    def __init__(
        self, pool: ConnectionPool, publisher: KafkaPublisher, interval: float = 5.0
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> Drainer:
        self._thread = threading.Thread(target=self._run, name="outbox-drainer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        rounds = 0
        while not self._stop.wait(self.interval):
            rounds += 1
            try:
                res = drain(self.pool, self.publisher)
                if rounds % 720 == 1:
                    prune(self.pool)
            except Exception:
                log.exception("outbox drain failed")
                continue
            if res.failed and not self._failing:
                log.warning("outbox: %d message(s) not published: %s", res.failed, res.errors)
            elif res.sent and self._failing:
                log.info("outbox: publishing again (%d sent)", res.sent)
            self._failing = bool(res.failed)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
