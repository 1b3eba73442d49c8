"""Server-rendered pages: the alert list, an alert, a user, the overview, the login form.

Writes are HTML forms that post here (CSRF-checked), then redirect back with a flash message
(post/redirect/get), so a reload never repeats a label.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from operators.reasons import CODES
from txwatch.web import db
from txwatch.web.charts import hourly_bars
from txwatch.web.models import (
    AlertFilter,
    BulkLabelRequest,
    LabelRequest,
    LabelResult,
    SnoozeRequest,
)
from txwatch.web.security import (
    CSRF_COOKIE,
    FLASH_COOKIE,
    REVIEWER_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Auth,
    safe_next,
)
from txwatch.web.service import Services

router = APIRouter(include_in_schema=False)

TxId = Annotated[str, Path(min_length=1, max_length=128)]
STATUS_WORDS = {
    "confirmed": "confirmed as fraud",
    "false_positive": "marked as false positive",
    "escalated": "escalated",
}
DURATIONS = [
    (60, "1 hour"),
    (240, "4 hours"),
    (1440, "24 hours"),
    (10080, "7 days"),
    (43200, "30 days"),
]
PAGE_SIZES = (25, 50, 100, 200)


def services(request: Request) -> Services:
    return request.app.state.services


def auth_of(request: Request) -> Auth:
    return request.app.state.auth


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _cookie(resp: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    resp.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    """A page, with the CSRF cookie (created when missing) and the pending flash message."""
    auth = auth_of(request)
    csrf = request.cookies.get(CSRF_COOKIE)
    fresh = None
    if not auth.csrf_signed(csrf):
        csrf = fresh = auth.new_csrf()
    flash = auth.read_flash(request.cookies.get(FLASH_COOKIE))
    how = request.scope.get("state", {}).get("auth")
    context.update(
        csrf_token=csrf,
        flash=flash,
        reviewer=request.cookies.get(REVIEWER_COOKIE, ""),
        auth_enabled=auth.enabled,
        signed_in=how in ("session", "bearer"),
        path=request.url.path,
        poll_ms=request.app.state.poll_ms,
    )
    resp = request.app.state.templates.TemplateResponse(
        request, name, context, status_code=status_code
    )
    if fresh:
        _cookie(resp, request, CSRF_COOKIE, fresh, None)
    if flash:
        resp.delete_cookie(FLASH_COOKIE, path="/")
    return resp


def redirect(request: Request, url: str, kind: str | None = None, text: str = "") -> Response:
    resp = RedirectResponse(url, status_code=303)
    if kind:
        _cookie(resp, request, FLASH_COOKIE, auth_of(request).sign_flash(kind, text), 60)
    return resp


def check_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    """Double-submit check of every form post."""
    if not auth_of(request).csrf_valid(request.cookies.get(CSRF_COOKIE), csrf_token):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")


def describe(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in e.errors()
    )


def publish_flash(what: str, res: LabelResult | Any) -> tuple[str, str]:
    p = res.publish
    if p.state == "published":
        return "ok", f"{what}; published to Kafka."
    if p.state == "none":
        return "ok", f"{what}."
    return "warn", f"{what}. {p.error}"


# --- login -----------------------------------------------------------------------------------


@router.get("/")
def home() -> Response:
    return RedirectResponse("/alerts", status_code=303)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/login")
def login_page(request: Request, next: str = "/alerts") -> Response:
    return render(request, "login.html", next=safe_next(next), error=None)


@router.post("/login")
def login(
    request: Request,
    _: Annotated[None, Depends(check_csrf)],
    token: Annotated[str, Form(max_length=1024)] = "",
    reviewer: Annotated[str, Form(max_length=64)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/alerts",
) -> Response:
    auth = auth_of(request)
    target = safe_next(next)
    if not auth.enabled:
        return redirect(request, target)
    client = request.client.host if request.client else "?"
    if not auth.login_allowed(client):
        return render(
            request,
            "login.html",
            429,
            next=target,
            error="Too many failed attempts: wait a minute.",
        )
    if not auth.token_ok(token):
        auth.login_failed(client)
        return render(request, "login.html", 401, next=target, error="Wrong token.")
    resp = redirect(request, target)
    _cookie(resp, request, SESSION_COOKIE, auth.new_session(), SESSION_SECONDS)
    _cookie(resp, request, CSRF_COOKIE, auth.new_csrf(), None)  # a new session, a new token
    if reviewer.strip():
        _cookie(resp, request, REVIEWER_COOKIE, reviewer.strip(), 30 * 86400)
    return resp


@router.post("/logout")
def logout(request: Request, _: Annotated[None, Depends(check_csrf)]) -> Response:
    resp = redirect(request, "/login")
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        resp.delete_cookie(name, path="/")
    return resp


# --- alerts ------------------------------------------------------------------------------------


def _filter_from(request: Request) -> tuple[AlertFilter | None, str | None]:
    data = {k: v for k, v in request.query_params.items() if k in AlertFilter.model_fields}
    try:
        return AlertFilter.model_validate(data), None
    except ValidationError as e:
        return None, describe(e)


@router.get("/alerts")
def alerts_page(request: Request) -> Response:
    f, error = _filter_from(request)
    rows: list[dict[str, Any]] = []
    next_url = latest = None
    if f is not None:
        try:
            with services(request).pool.connection() as conn:
                rows, cursor = db.list_alerts(conn, f)
                latest = db.latest_detected(conn)
        except db.BadCursor as e:
            f, error = None, str(e)
        else:
            if cursor:
                next_url = "/alerts?" + urlencode(f.query_params(cursor=cursor))
    base = f.query_params(drop=("limit",)) if f else {}
    return render(
        request,
        "alerts.html",
        f=f or AlertFilter(),
        q=dict(request.query_params),
        error=error,
        rows=rows,
        next_url=next_url,
        first_url=("/alerts?" + urlencode(f.query_params())) if f and f.cursor else None,
        csv_url="/api/alerts.csv?" + urlencode(base),
        updates_url="/api/updates?"
        + urlencode({k: v for k, v in base.items() if k not in ("sort", "order")}),
        latest=latest,
        sort_url=lambda key: (
            "/alerts?"
            + urlencode(
                {
                    **(f.query_params(drop=("sort", "order")) if f else {}),
                    "sort": key,
                    "order": "asc" if f and f.sort == key and f.order == "desc" else "desc",
                }
            )
        ),
        this_url=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        page_sizes=PAGE_SIZES,
        durations=DURATIONS,
        reason_codes=CODES,
    )


@router.post("/alerts/bulk-label")
def bulk_label(
    request: Request,
    _: Annotated[None, Depends(check_csrf)],
    tid: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies defaults
    status: Annotated[str, Form()] = "",
    reviewer: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/alerts",
) -> Response:
    back = safe_next(next)
    if not tid:
        return redirect(request, back, "error", "Select at least one alert.")
    try:
        req = BulkLabelRequest(
            transaction_ids=tid, status=status, reviewer=reviewer, note=note or None
        )  # type: ignore[arg-type]
    except ValidationError as e:
        return redirect(request, back, "error", describe(e))
    res = services(request).label(req.transaction_ids, req.status, req.reviewer, req.note)
    what = f"{len(res.labelled)} alert(s) {STATUS_WORDS[req.status]}"
    if res.not_found:
        what += f" ({len(res.not_found)} not found)"
    resp = redirect(request, back, *publish_flash(what, res))
    _cookie(resp, request, REVIEWER_COOKIE, req.reviewer, 30 * 86400)
    return resp


@router.post("/alerts/{transaction_id:path}/label")
def label_alert(
    request: Request,
    transaction_id: TxId,
    _: Annotated[None, Depends(check_csrf)],
    status: Annotated[str, Form()] = "",
    reviewer: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    back = "/alerts/" + quote(transaction_id, safe="")
    try:
        req = LabelRequest(status=status, reviewer=reviewer, note=note or None)  # type: ignore[arg-type]
    except ValidationError as e:
        return redirect(request, back, "error", describe(e))
    res = services(request).label([transaction_id], req.status, req.reviewer, req.note)
    if res.not_found:
        raise HTTPException(404, "no such alert")
    resp = redirect(request, back, *publish_flash(f"Alert {STATUS_WORDS[req.status]}", res))
    _cookie(resp, request, REVIEWER_COOKIE, req.reviewer, 30 * 86400)
    return resp


@router.get("/alerts/{transaction_id:path}")
def alert_page(request: Request, transaction_id: TxId) -> Response:
    svc = services(request)
    alert = svc.alert(transaction_id)
    if alert is None:
        raise HTTPException(404, "no such alert")
    return render(
        request,
        "alert.html",
        a=alert,
        snoozes=svc.snoozes_for(alert),
        durations=DURATIONS,
        this_url="/alerts/" + quote(transaction_id, safe=""),
    )


@router.post("/snoozes")
def snooze(
    request: Request,
    _: Annotated[None, Depends(check_csrf)],
    scope: Annotated[str, Form()] = "",
    target: Annotated[str, Form()] = "",
    minutes: Annotated[str, Form()] = "",
    reviewer: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/overview",
) -> Response:
    back = safe_next(next, "/overview")
    try:
        req = SnoozeRequest.model_validate(
            {
                "scope": scope,
                "target": target,
                "minutes": minutes,
                "reviewer": reviewer,
                "note": note,
            }
        )
        res = services(request).snooze(req)
    except ValidationError as e:
        return redirect(request, back, "error", describe(e))
    except ValueError as e:
        return redirect(request, back, "error", str(e))
    s = res.snooze
    what = f"{s.scope.capitalize()} {s.target} snoozed until {s.until:%Y-%m-%d %H:%M} UTC"
    resp = redirect(request, back, *publish_flash(what, res))
    _cookie(resp, request, REVIEWER_COOKIE, req.reviewer, 30 * 86400)
    return resp


# --- user, overview -------------------------------------------------------------------------


@router.get("/users/{user_id:path}")
def user_page(request: Request, user_id: TxId) -> Response:
    user = services(request).user(user_id)
    if user is None:
        raise HTTPException(404, "no alerts or snoozes for this user")
    return render(
        request,
        "user.html",
        u=user,
        durations=DURATIONS,
        this_url="/users/" + quote(user_id, safe=""),
    )


@router.get("/overview")
def overview_page(request: Request, hours: int = 24) -> Response:
    hours = hours if hours in (6, 24, 72, 168) else 24
    ov = services(request).overview(hours)
    chart = hourly_bars([h.model_dump() for h in ov.hours])
    return render(request, "overview.html", ov=ov, chart=chart, hours=hours)
