"""``txwatch alerts``: the latest alerts from PostgreSQL as a readable table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from txwatch.settings import get_settings

QUERY = (
    "SELECT event_time, transaction_id, user_id, amount_base, severity, score, threshold,"
    " reasons, status FROM alerts"
    " WHERE (%(user)s::text IS NULL OR user_id = %(user)s)"
    " AND (%(severity)s::text IS NULL OR severity = %(severity)s)"
    " ORDER BY event_time DESC, transaction_id LIMIT %(limit)s"
)


def latest_alerts(dsn: str, limit: int = 20, user: str | None = None,
                  severity: str | None = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute(QUERY, {"user": user, "severity": severity, "limit": limit}).fetchall()


def format_alerts(rows: list[tuple[Any, ...]]) -> str:
    """A fixed-width table of alert rows (as returned by :func:`latest_alerts`)."""
    if not rows:
        return "(no alerts)"
    head = ("event time (UTC)", "transaction", "user", "amount", "severity", "score", "reasons")
    lines = []
    for r in rows:
        reasons = "; ".join(x.get("text", "") for x in (r[7] or [])[:2])
        lines.append((r[0].strftime("%Y-%m-%d %H:%M:%S"), r[1][:18], r[2][:10],
                      f"{r[3]:.2f}", r[4], f"{r[5]:.2f}", reasons[:70]))
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*x) for x in lines])


def _run(args: argparse.Namespace) -> int:
    import psycopg

    if args.limit < 1:
        print(f"txwatch alerts: --limit must be at least 1, not {args.limit}", file=sys.stderr)
        return 2
    try:
        rows = latest_alerts(get_settings().dsn(), args.limit, args.user, args.severity)
    except psycopg.OperationalError as e:
        print(f"txwatch alerts: cannot reach the database (TXWATCH_DATABASE_URL): {e}",
              file=sys.stderr)
        return 2
    print(format_alerts(rows))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alerts", help="show the latest alerts",
                       description="Print the latest alerts from PostgreSQL, newest first.")
    p.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--user", help="only this user id")
    p.add_argument("--severity", choices=["review", "block"], help="only this severity")
    p.set_defaults(func=_run)
