"""The review application's SQL: every query parameterised, identifiers from allow-lists.

The list pages by keyset: rows are ordered ``(sort column DESC, transaction_id ASC)`` (or the
exact reverse), the shape of the indexes ``(column DESC, transaction_id)``, and the next page
starts after the last row's ``(value, transaction_id)``. A page is an index range scan whatever
its depth; nothing counts the whole table.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg import Connection, sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from txwatch.web.models import SORT_COLUMNS, AlertFilter, StatusCounts

LIST_COLUMNS = (
    "transaction_id",
    "user_id",
    "event_time",
    "amount",
    "currency",
    "amount_base",
    "merchant_id",
    "terminal_id",
    "country",
    "channel",
    "score",
    "threshold",
    "severity",
    "reasons",
    "detected_at",
    "status",
    "reviewed_at",
    "reviewer",
)
DETAIL_COLUMNS = (
    *LIST_COLUMNS,
    "merchant_category",
    "features",
    "components",
    "model_version",
    "worker",
    "review_note",
)
CSV_COLUMNS = (
    "transaction_id",
    "user_id",
    "event_time",
    "amount",
    "currency",
    "amount_base",
    "merchant_id",
    "terminal_id",
    "merchant_category",
    "country",
    "channel",
    "score",
    "threshold",
    "severity",
    "reasons",
    "model_version",
    "detected_at",
    "status",
    "reviewed_at",
    "reviewer",
    "review_note",
)
CSV_MAX_ROWS = 100_000
UPDATES_CAP = 1000

TID = sql.Identifier("transaction_id")


class BadCursor(ValueError):
    """The paging cursor is malformed or belongs to another sort."""


def make_pool(dsn: str, max_size: int = 8) -> ConnectionPool:
    """A closed pool of UTC sessions returning dict rows; open it with ``pool.open()``."""
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "options": "-c TimeZone=UTC"},
        name="txwatch-web",
    )


def _cols(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


# --- cursor ------------------------------------------------------------------------------------


def encode_cursor(f: AlertFilter, row: dict[str, Any]) -> str:
    value = row[SORT_COLUMNS[f.sort]]
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    raw = json.dumps([f.sort, f.order, text, row["transaction_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(f: AlertFilter) -> tuple[Any, str]:
    """The ``(sort value, transaction_id)`` the page starts after."""
    assert f.cursor is not None
    try:
        raw = base64.urlsafe_b64decode(f.cursor + "=" * (-len(f.cursor) % 4))
        sort, order, text, tid = json.loads(raw)
        if (sort, order) != (f.sort, f.order) or not isinstance(tid, str):
            raise BadCursor("the cursor belongs to another sort order")
        if f.sort == "event_time":
            value: Any = datetime.fromisoformat(text)
        elif f.sort == "score":
            value = float(text)
        else:
            value = Decimal(text)
    except BadCursor:
        raise
    except (ValueError, TypeError, binascii.Error, ArithmeticError) as e:
        raise BadCursor("malformed cursor") from e
    return value, tid


# --- list -----------------------------------------------------------------------------------


def filter_clause(f: AlertFilter) -> tuple[list[sql.Composable], list[Any]]:
    """WHERE conditions and their parameters for the filters of ``f`` (not the cursor)."""
    conds: list[sql.Composable] = []
    params: list[Any] = []

    def add(cond: str, *values: Any) -> None:
        conds.append(sql.SQL(cond))
        params.extend(values)

    if f.since is not None:
        add("event_time >= %s", f.since)
    if f.until is not None:
        add("event_time < %s", f.until)
    if f.severity is not None:
        add("severity = %s", f.severity)
    if f.status is not None:
        add("status = %s", f.status)
    if f.user is not None:
        add("user_id = %s", f.user)
    if f.terminal is not None:
        add("terminal_id = %s", f.terminal)
    if f.reason is not None:
        add("reasons @> %s::jsonb", json.dumps([{"code": f.reason}]))
    if f.min_amount is not None:
        add("amount_base >= %s", f.min_amount)
    if f.max_amount is not None:
        add("amount_base <= %s", f.max_amount)
    return conds, params


def _where(conds: list[sql.Composable]) -> sql.Composable:
    if not conds:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)


def _order(f: AlertFilter) -> sql.Composable:
    col = sql.Identifier(SORT_COLUMNS[f.sort])
    if f.order == "desc":
        return sql.SQL(" ORDER BY {c} DESC, {t} ASC").format(c=col, t=TID)
    return sql.SQL(" ORDER BY {c} ASC, {t} DESC").format(c=col, t=TID)


def list_query(f: AlertFilter) -> tuple[sql.Composed, list[Any]]:
    """The page query of ``f`` (one row more than the page, to know if another follows)."""
    conds, params = filter_clause(f)
    if f.cursor:
        value, tid = decode_cursor(f)
        col = sql.Identifier(SORT_COLUMNS[f.sort])
        # (col, tid) after (value, tid) in the index order; the first term is the index bound.
        tmpl = (
            "{c} <= %s AND ({c} < %s OR {t} > %s)"
            if f.order == "desc"
            else "{c} >= %s AND ({c} > %s OR {t} < %s)"
        )
        conds.append(sql.SQL(tmpl).format(c=col, t=TID))
        params.extend([value, value, tid])
    q = sql.SQL("SELECT {cols} FROM alerts").format(cols=_cols(LIST_COLUMNS))
    query = sql.Composed([q, _where(conds), _order(f), sql.SQL(" LIMIT %s")])
    return query, [*params, f.limit + 1]


def list_alerts(conn: Connection, f: AlertFilter) -> tuple[list[dict[str, Any]], str | None]:
    """One page of alerts and the cursor of the next page (None on the last page)."""
    query, params = list_query(f)
    rows = conn.execute(query, params).fetchall()
    if len(rows) <= f.limit:
        return rows, None
    rows = rows[: f.limit]
    return rows, encode_cursor(f, rows[-1])


def export_rows(conn: Connection, f: AlertFilter) -> Iterator[dict[str, Any]]:
    """Every alert matching ``f`` in its sort order (at most ``CSV_MAX_ROWS``), streamed."""
    conds, params = filter_clause(f)
    q = sql.SQL("SELECT {cols} FROM alerts").format(cols=_cols(CSV_COLUMNS))
    query = sql.Composed([q, _where(conds), _order(f), sql.SQL(" LIMIT %s")])
    with conn.cursor(name="txwatch_csv") as cur:
        cur.itersize = 2000
        cur.execute(query, [*params, CSV_MAX_ROWS])
        yield from cur


def updates(conn: Connection, f: AlertFilter, after: datetime) -> dict[str, Any]:
    """Alerts matching ``f`` detected after ``after`` (counted up to ``UPDATES_CAP``)."""
    conds, params = filter_clause(f)
    conds.append(sql.SQL("detected_at > %s"))
    inner = sql.Composed(
        [
            sql.SQL("SELECT detected_at FROM alerts"),
            _where(conds),
            sql.SQL(" ORDER BY detected_at DESC LIMIT %s"),
        ]
    )
    q = sql.SQL("SELECT count(*) AS new_alerts, max(detected_at) AS latest FROM ({}) s").format(
        inner
    )
    return conn.execute(q, [*params, after, UPDATES_CAP]).fetchone() or {}


def latest_detected(conn: Connection) -> datetime | None:
    row = conn.execute("SELECT max(detected_at) AS m FROM alerts").fetchone()
    return row["m"] if row else None


# --- one alert, one user ----------------------------------------------------------------------


def get_alert(conn: Connection, transaction_id: str) -> dict[str, Any] | None:
    q = sql.SQL("SELECT {cols} FROM alerts WHERE transaction_id = %s").format(
        cols=_cols(DETAIL_COLUMNS)
    )
    return conn.execute(q, [transaction_id]).fetchone()


def reviews_of(conn: Connection, transaction_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, transaction_id, status, reviewer, note, reviewed_at FROM alert_reviews"
        " WHERE transaction_id = %s ORDER BY reviewed_at DESC, id DESC",
        [transaction_id],
    ).fetchall()


def user_alerts(conn: Connection, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    q = sql.SQL(
        "SELECT {cols} FROM alerts WHERE user_id = %s ORDER BY event_time DESC LIMIT %s"
    ).format(cols=_cols(LIST_COLUMNS))
    return conn.execute(q, [user_id, limit]).fetchall()


def user_reviews(conn: Connection, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT r.id, r.transaction_id, r.status, r.reviewer, r.note, r.reviewed_at"
        " FROM alert_reviews r JOIN alerts a USING (transaction_id)"
        " WHERE a.user_id = %s ORDER BY r.reviewed_at DESC, r.id DESC LIMIT %s",
        [user_id, limit],
    ).fetchall()


_COUNTS = (
    "count(*) AS total,"
    " count(*) FILTER (WHERE status = 'open') AS open,"
    " count(*) FILTER (WHERE status = 'confirmed') AS confirmed,"
    " count(*) FILTER (WHERE status = 'false_positive') AS false_positive,"
    " count(*) FILTER (WHERE status = 'escalated') AS escalated"
)


def user_summary(conn: Connection, user_id: str) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {_COUNTS}, min(event_time) AS first_alert, max(event_time) AS last_alert"  # noqa: S608 - constant text
        " FROM alerts WHERE user_id = %s",
        [user_id],
    ).fetchone()
    assert row is not None
    return row


def label_outbox_state(conn: Connection, transaction_id: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT id, topic, created_at, sent_at, attempts, last_error FROM outbox"
        " WHERE ref = %s ORDER BY id DESC LIMIT 1",
        [transaction_id],
    ).fetchone()


# --- labelling, snoozes ---------------------------------------------------------------------


def set_review(
    conn: Connection,
    transaction_ids: Sequence[str],
    status: str,
    reviewer: str,
    note: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Set the review of the alerts that exist and add their audit rows (caller's transaction).

    Returns the updated alerts' ``transaction_id, user_id, terminal_id, event_time``.
    """
    rows = conn.execute(
        "UPDATE alerts SET status = %s, reviewed_at = %s, reviewer = %s, review_note = %s"
        " WHERE transaction_id = ANY(%s)"
        " RETURNING transaction_id, user_id, terminal_id, event_time",
        [status, now, reviewer, note, list(transaction_ids)],
    ).fetchall()
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO alert_reviews (transaction_id, status, reviewer, note, reviewed_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(r["transaction_id"], status, reviewer, note, now) for r in rows],
            )
    order = {t: i for i, t in enumerate(transaction_ids)}
    return sorted(rows, key=lambda r: order[r["transaction_id"]])


def insert_snooze(
    conn: Connection,
    scope: str,
    target: str,
    until: datetime,
    reviewer: str,
    note: str | None,
    now: datetime,
) -> dict[str, Any]:
    row = conn.execute(
        "INSERT INTO snoozes (scope, target, until, reviewer, note, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " RETURNING id, scope, target, until, reviewer, note, created_at",
        [scope, target, until, reviewer, note, now],
    ).fetchone()
    assert row is not None
    return row


def snoozes(
    conn: Connection,
    now: datetime,
    *,
    scope: str | None = None,
    target: str | None = None,
    active_only: bool = True,
    limit: int = 100,
) -> list[dict[str, Any]]:
    conds = [sql.SQL("TRUE")]
    params: list[Any] = []
    if active_only:
        conds.append(sql.SQL("until > %s"))
        params.append(now)
    if scope is not None:
        conds.append(sql.SQL("scope = %s"))
        params.append(scope)
    if target is not None:
        conds.append(sql.SQL("target = %s"))
        params.append(target)
    q = sql.SQL(
        "SELECT id, scope, target, until, reviewer, note, created_at FROM snoozes"
        " WHERE {} ORDER BY until DESC, id DESC LIMIT %s"
    ).format(sql.SQL(" AND ").join(conds))
    return conn.execute(q, [*params, limit]).fetchall()


# --- overview -------------------------------------------------------------------------------


def overview_window(
    conn: Connection, hours: int, end: datetime | None
) -> tuple[datetime, datetime]:
    """``hours`` whole hours ending at ``end``, by default at the hour after the newest alert."""
    if end is None:
        row = conn.execute("SELECT max(event_time) AS m FROM alerts").fetchone()
        end = row["m"] if row and row["m"] else datetime.now(UTC)
        end += timedelta(microseconds=1)  # the newest alert belongs in the window
    end = end.astimezone(UTC)
    hour = end.replace(minute=0, second=0, microsecond=0)
    end = hour if hour == end else hour + timedelta(hours=1)
    return end - timedelta(hours=hours), end


def overview(conn: Connection, start: datetime, end: datetime) -> dict[str, Any]:
    hourly = conn.execute(
        "SELECT date_trunc('hour', event_time, 'UTC') AS hour, severity, count(*) AS n"
        " FROM alerts WHERE event_time >= %s AND event_time < %s GROUP BY 1, 2 ORDER BY 1",
        [start, end],
    ).fetchall()
    by_sev = conn.execute(
        f"SELECT severity, {_COUNTS} FROM alerts"  # noqa: S608 - constant text
        " WHERE event_time >= %s AND event_time < %s GROUP BY severity",
        [start, end],
    ).fetchall()
    pending = conn.execute("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL").fetchone()
    total = StatusCounts()
    severities: dict[str, StatusCounts] = {}
    for r in by_sev:
        c = StatusCounts(**{k: r[k] for k in StatusCounts.model_fields})
        severities[r["severity"]] = c
        total = StatusCounts(
            **{k: getattr(total, k) + getattr(c, k) for k in StatusCounts.model_fields}
        )
    return {
        "hourly": hourly,
        "counts": total,
        "by_severity": severities,
        "outbox_pending": pending["n"] if pending else 0,
    }
