"""Retention: delete alerts past their retention period and snoozes that have ended.

Alerts are pruned by **event time** (when the transaction happened, not when it was detected),
so a replay of old history does not keep stale alerts alive. An alert's audit trail in
``alert_reviews`` goes with it through ``ON DELETE CASCADE``; the count of those rows is
reported too, so an operator sees what an audit loses.

Deletes run in batches, one transaction per batch, so a first prune of a large table never holds
one long lock over the alerts the review app is working on. Every statement is parameterised.

Dead letters are not stored in PostgreSQL: they live on the dead-letter topic, whose
``retention.ms`` (set when the topic is created) is their retention.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import psycopg

_SELECT_EXPIRED_ALERTS = """
SELECT transaction_id FROM alerts
WHERE event_time < %(cutoff)s
ORDER BY event_time, transaction_id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
_COUNT_REVIEWS = "SELECT count(*) FROM alert_reviews WHERE transaction_id = ANY(%(ids)s)"
_DELETE_ALERTS = "DELETE FROM alerts WHERE transaction_id = ANY(%(ids)s)"
_DELETE_SNOOZES = "DELETE FROM snoozes WHERE until < %(now)s"


class RetentionSettings(Protocol):
    """What :func:`prune` reads from :class:`txwatch.settings.Settings`."""

    @property
    def alerts_retention_days(self) -> int: ...


def prune(
    dsn: str,
    settings: RetentionSettings,
    now: datetime | None = None,
    *,
    batch_size: int = 5_000,
) -> dict[str, int]:
    """Delete expired alerts (with their reviews) and ended snoozes; return the counts.

    Parameters
    ----------
    dsn
        libpq URI of the alerts database.
    settings
        Its ``alerts_retention_days`` (at least 1) sets the cutoff: alerts whose
        ``event_time`` is strictly before ``now - alerts_retention_days`` are deleted.
    now
        The reference time, timezone-aware; the current UTC time when ``None``. Snoozes whose
        ``until`` is strictly before it are deleted.
    batch_size
        Alerts deleted per transaction.

    Returns
    -------
    dict
        ``{"alerts": n, "alert_reviews": n, "snoozes": n}``: rows deleted (reviews by cascade).
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    days = settings.alerts_retention_days
    if days < 1:
        raise ValueError(f"alerts_retention_days must be at least 1, got {days}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cutoff = now - timedelta(days=days)

    counts = {"alerts": 0, "alert_reviews": 0, "snoozes": 0}
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_SELECT_EXPIRED_ALERTS, {"cutoff": cutoff, "limit": batch_size})
                ids = [row[0] for row in cur.fetchall()]
                if not ids:
                    break
                cur.execute(_COUNT_REVIEWS, {"ids": ids})
                row = cur.fetchone()
                counts["alert_reviews"] += int(row[0]) if row else 0
                cur.execute(_DELETE_ALERTS, {"ids": ids})
                counts["alerts"] += cur.rowcount
            if len(ids) < batch_size:
                break
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_DELETE_SNOOZES, {"now": now})
            counts["snoozes"] = cur.rowcount
    return counts
