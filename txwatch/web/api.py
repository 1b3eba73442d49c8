"""The JSON API (``/api/...``): the same reads and writes as the pages.

Authentication: ``Authorization: Bearer <TXWATCH_WEB_TOKEN>`` (or the page's session cookie).
Writes take JSON bodies (``Content-Type: application/json``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse

from txwatch.web import db
from txwatch.web.models import (
    AlertDetail,
    AlertFilter,
    AlertPage,
    BulkLabelRequest,
    LabelRequest,
    LabelResult,
    Overview,
    Snooze,
    SnoozeRequest,
    SnoozeResult,
    Updates,
    UpdatesQuery,
    UserDetail,
)
from txwatch.web.service import Services

router = APIRouter(prefix="/api", tags=["alerts"])

TxId = Annotated[str, Path(min_length=1, max_length=128)]


def services(request: Request) -> Services:
    return request.app.state.services


@router.get("/alerts", response_model=AlertPage, summary="List alerts (filtered, sorted, paged)")
def list_alerts(request: Request, f: Annotated[AlertFilter, Query()]) -> Any:
    with services(request).pool.connection() as conn:
        rows, cursor = db.list_alerts(conn, f)
    return {"items": rows, "next_cursor": cursor}


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """A CSV cell; text that a spreadsheet would run as a formula is prefixed with '."""
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):  # reasons
        return " ".join(str(r.get("code", "")) for r in v if isinstance(r, dict))
    if isinstance(v, str) and v.startswith(CSV_FORMULA_START):
        return "'" + v
    return v


def csv_lines(request: Request, f: AlertFilter) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(db.CSV_COLUMNS)
    with services(request).pool.connection() as conn:
        for row in db.export_rows(conn, f):
            w.writerow([_cell(row[c]) for c in db.CSV_COLUMNS])
            if buf.tell() > 64_000:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    yield buf.getvalue()


@router.get(
    "/alerts.csv",
    summary="Export the filtered list as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def export_csv(request: Request, f: Annotated[AlertFilter, Query()]) -> StreamingResponse:
    f = f.model_copy(update={"cursor": None})
    return StreamingResponse(
        csv_lines(request, f),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="txwatch-alerts.csv"'},
    )


@router.get("/updates", response_model=Updates, summary="New alerts since a time (polling)")
def updates(request: Request, q: Annotated[UpdatesQuery, Query()]) -> Any:
    with services(request).pool.connection() as conn:
        return db.updates(conn, q, q.after)


@router.get("/alerts/{transaction_id:path}", response_model=AlertDetail, summary="One alert")
def get_alert(request: Request, transaction_id: TxId) -> Any:
    alert = services(request).alert(transaction_id)
    if alert is None:
        raise HTTPException(404, "no such alert")
    return alert


@router.post(
    "/alerts/{transaction_id:path}/label", response_model=LabelResult, summary="Review one alert"
)
def label_alert(request: Request, transaction_id: TxId, body: LabelRequest) -> Any:
    result = services(request).label([transaction_id], body.status, body.reviewer, body.note)
    if result.not_found:
        raise HTTPException(404, "no such alert")
    return result


@router.post("/labels/bulk", response_model=LabelResult, summary="Review many alerts")
def label_bulk(request: Request, body: BulkLabelRequest) -> Any:
    return services(request).label(body.transaction_ids, body.status, body.reviewer, body.note)


@router.get("/snoozes", response_model=list[Snooze], summary="Snoozes (active by default)")
def list_snoozes(
    request: Request,
    active: bool = True,
    scope: Annotated[str | None, Query(pattern="^(user|terminal)$")] = None,
    target: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> Any:
    with services(request).pool.connection() as conn:
        return db.snoozes(
            conn, datetime.now(UTC), scope=scope, target=target, active_only=active, limit=500
        )


@router.post(
    "/snoozes", response_model=SnoozeResult, status_code=201, summary="Snooze a user or terminal"
)
def create_snooze(request: Request, body: SnoozeRequest) -> Any:
    try:
        return services(request).snooze(body)
    except ValueError as e:
        raise HTTPException(422, str(e)) from e


@router.get("/overview", response_model=Overview, summary="Alerts per hour, reviews, precision")
def overview(
    request: Request,
    hours: Annotated[int, Query(ge=1, le=24 * 31)] = 24,
    end: datetime | None = None,
) -> Any:
    return services(request).overview(hours, end)


@router.get(
    "/users/{user_id:path}", response_model=UserDetail, summary="A user's alerts and reviews"
)
def get_user(request: Request, user_id: TxId) -> Any:
    user = services(request).user(user_id)
    if user is None:
        raise HTTPException(404, "no alerts or snoozes for this user")
    return user
