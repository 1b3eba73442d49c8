"""sinks.retention.prune against a real (embedded) PostgreSQL with the project's migration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from sinks.migrate import migrate
from sinks.retention import prune
from txwatch.settings import Settings

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn(pg: str) -> str:
    """A fresh database (conftest's ``pg``) with the project's migrations applied."""
    migrate(pg)
    return pg


def add_alert(conn: psycopg.Connection, tx: str, event_time: datetime, reviews: int = 0) -> None:
    conn.execute(
        """INSERT INTO alerts (transaction_id, user_id, event_time, amount, currency,
               amount_base, score, threshold, severity, model_version, worker)
           VALUES (%s, 'u1', %s, %s, 'EUR', %s, 5.0, 3.5, 'review', 'test', '0')""",
        (tx, event_time, Decimal("12.50"), Decimal("12.50")),
    )
    for i in range(reviews):
        conn.execute(
            "INSERT INTO alert_reviews (transaction_id, status, reviewer, note)"
            " VALUES (%s, 'confirmed', 'ana', %s)",
            (tx, f"review {i}"),
        )


def add_snooze(conn: psycopg.Connection, target: str, until: datetime) -> None:
    conn.execute(
        "INSERT INTO snoozes (scope, target, until, reviewer) VALUES ('user', %s, %s, 'ana')",
        (target, until),
    )


def rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[call-overload]


def test_prune_deletes_expired_alerts_reviews_and_snoozes(dsn: str) -> None:
    settings = Settings(alerts_retention_days=30)
    cutoff = NOW - timedelta(days=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_alert(conn, "old-1", cutoff - timedelta(days=200), reviews=2)
        add_alert(conn, "old-2", cutoff - timedelta(microseconds=1), reviews=1)
        add_alert(conn, "edge", cutoff)  # exactly at the cutoff: kept
        add_alert(conn, "new", NOW - timedelta(days=1), reviews=3)
        add_snooze(conn, "ended", NOW - timedelta(seconds=1))
        add_snooze(conn, "ending-now", NOW)  # until == now: still in force
        add_snooze(conn, "active", NOW + timedelta(days=2))

    counts = prune(dsn, settings, now=NOW)

    assert counts == {"alerts": 2, "alert_reviews": 3, "snoozes": 1}
    assert rows(dsn, "SELECT transaction_id FROM alerts ORDER BY 1") == [("edge",), ("new",)]
    assert rows(dsn, "SELECT transaction_id, count(*) FROM alert_reviews GROUP BY 1") == [
        ("new", 3)
    ]
    assert rows(dsn, "SELECT target FROM snoozes ORDER BY 1") == [("active",), ("ending-now",)]
    # Nothing left to prune: a second run deletes nothing.
    assert prune(dsn, settings, now=NOW) == {"alerts": 0, "alert_reviews": 0, "snoozes": 0}


def test_prune_uses_event_time_not_detection_time(dsn: str) -> None:
    """A replayed old transaction detected today is still past retention."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_alert(conn, "replayed", NOW - timedelta(days=400))
        conn.execute("UPDATE alerts SET detected_at = %s", (NOW,))
    counts = prune(dsn, Settings(alerts_retention_days=365), now=NOW)
    assert counts["alerts"] == 1
    assert rows(dsn, "SELECT count(*) FROM alerts") == [(0,)]


def test_prune_in_batches_deletes_everything_expired(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(23):
            add_alert(conn, f"old-{i:02d}", NOW - timedelta(days=100, minutes=i), reviews=i % 2)
        add_alert(conn, "recent", NOW - timedelta(days=2))
    counts = prune(dsn, Settings(alerts_retention_days=90), now=NOW, batch_size=5)
    assert counts == {"alerts": 23, "alert_reviews": 11, "snoozes": 0}
    assert rows(dsn, "SELECT transaction_id FROM alerts") == [("recent",)]


def test_prune_defaults_now_to_the_current_time(dsn: str) -> None:
    real_now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_alert(conn, "stale", real_now - timedelta(days=11))
        add_alert(conn, "fresh", real_now - timedelta(days=9))
    assert prune(dsn, Settings(alerts_retention_days=10))["alerts"] == 1
    assert rows(dsn, "SELECT transaction_id FROM alerts") == [("fresh",)]


def test_prune_takes_the_cutoff_in_any_timezone(dsn: str) -> None:
    from zoneinfo import ZoneInfo

    with psycopg.connect(dsn, autocommit=True) as conn:
        add_alert(conn, "a", NOW - timedelta(days=10, hours=1))
        add_alert(conn, "b", NOW - timedelta(days=10) + timedelta(hours=1))
    tokyo_now = NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    assert prune(dsn, Settings(alerts_retention_days=10), now=tokyo_now)["alerts"] == 1
    assert rows(dsn, "SELECT transaction_id FROM alerts") == [("b",)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"now": datetime(2025, 6, 1, 12, 0)}, "timezone-aware"),
        ({"settings": Settings(alerts_retention_days=0)}, "at least 1"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_prune_rejects_ambiguous_input_before_touching_the_database(
    dsn: str, kwargs: dict, message: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_alert(conn, "ancient", NOW - timedelta(days=5000))
    args = {"settings": Settings(alerts_retention_days=30), "now": NOW, **kwargs}
    with pytest.raises(ValueError, match=message):
        prune(dsn, **args)
    assert rows(dsn, "SELECT count(*) FROM alerts") == [(1,)]
