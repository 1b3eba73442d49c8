"""The review application: :func:`create_app` wires settings, database, Kafka and security.

Nothing opens at import; the database pool, the Kafka producer and the outbox drainer start in
the application's lifespan and stop with it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from psycopg_pool import ConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from txwatch.settings import Settings, get_settings
from txwatch.web import api, db, pages
from txwatch.web.labels import KafkaPublisher
from txwatch.web.outbox import Drainer
from txwatch.web.pages import render
from txwatch.web.security import Auth, AuthMiddleware, SecurityHeadersMiddleware, is_api
from txwatch.web.service import Services

log = logging.getLogger("txwatch.web")

HERE = Path(__file__).parent
LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]
STATUS_LABELS = {
    "open": "Open",
    "confirmed": "Fraud",
    "false_positive": "False positive",
    "escalated": "Escalated",
}


class SchemaMissing(RuntimeError):
    """The database lacks the review tables: migrations were not applied."""


def _fmt_dt(v: datetime | None, seconds: bool = True) -> str:
    if v is None:
        return ""
    return v.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _fmt_num(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return f"{v:,.{digits}f}"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 1e9 else f"{v:.3g}"
    return str(v)


def _fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _input_dt(v: datetime | None) -> str:
    """A value for ``<input type=datetime-local>`` (UTC)."""
    return "" if v is None else v.strftime("%Y-%m-%dT%H:%M")


def make_templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters.update(
        dt=_fmt_dt,
        num=_fmt_num,
        pct=_fmt_pct,
        input_dt=_input_dt,
        path_q=lambda v: quote(str(v), safe=""),
        status_label=lambda v: STATUS_LABELS.get(v, v),
    )
    return t


def check_schema(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT to_regclass('alerts') AS a, to_regclass('outbox') AS o"
        ).fetchone()
    if not row or row["a"] is None or row["o"] is None:
        raise SchemaMissing(
            "the database has no alerts/outbox tables: apply the migrations "
            "(txwatch serve --migrate, or migrations/0001_alerts.sql and 0002_review.sql)"
        )


def create_app(
    settings: Settings | None = None,
    *,
    insecure_no_auth: bool = False,
    pool: ConnectionPool | None = None,
    publisher: KafkaPublisher | None = None,
    publish_timeout: float = 5.0,
    drain_interval: float = 5.0,
    poll_seconds: float = 5.0,
) -> FastAPI:
    """The review application.

    Parameters
    ----------
    settings
        ``web_token``, Kafka and database settings; :func:`get_settings` if None.
    insecure_no_auth
        Serve without a token when ``settings.web_token`` is unset (loopback only: requests
        whose Host is not a loopback name are refused). Ignored when a token is set.
    pool
        An open connection pool to use (the caller closes it); by default one is opened on
        ``settings.dsn()`` at startup and closed at shutdown.
    publisher
        The Kafka publisher (the caller closes it); by default an idempotent producer on
        ``settings.kafka_config()`` whose delivery timeout is ``publish_timeout`` seconds.
    drain_interval
        Seconds between the background retries of unpublished outbox rows; 0 turns the
        background publisher off (rows then wait for the next write).
    poll_seconds
        How often the alert list asks whether new alerts arrived.
    """
    settings = settings or get_settings()
    token = settings.web_token.get_secret_value() if settings.web_token else None
    token = token or None
    if token is None and not insecure_no_auth:
        raise ValueError("TXWATCH_WEB_TOKEN is not set (or pass insecure_no_auth=True)")
    auth = Auth(token)
    own_pool = pool is None
    the_pool = pool if pool is not None else db.make_pool(settings.dsn())
    services = Services(settings, the_pool, publisher, drain_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if own_pool:
            await anyio.to_thread.run_sync(lambda: the_pool.open(wait=True, timeout=30))
        drainer = None
        own_publisher = services.publisher is None
        try:
            await anyio.to_thread.run_sync(check_schema, the_pool)
            if own_publisher:
                services.publisher = KafkaPublisher(settings.kafka_config(), publish_timeout)
            if drain_interval > 0 and services.publisher is not None:
                drainer = Drainer(the_pool, services.publisher, drain_interval).start()
            yield
        finally:
            if drainer is not None:
                await anyio.to_thread.run_sync(drainer.stop)
            if own_publisher and services.publisher is not None:
                await anyio.to_thread.run_sync(services.publisher.close)
                services.publisher = None
            if own_pool:
                await anyio.to_thread.run_sync(the_pool.close)

    app = FastAPI(
        title="txwatch alert review",
        version="1",
        description=(
            "Review txwatch's fraud alerts: list, label (published to the labels topic), "
            "snooze (published to the controls topic). Every call needs "
            "`Authorization: Bearer <TXWATCH_WEB_TOKEN>`; writes take JSON bodies."
        ),
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.auth = auth
    app.state.templates = make_templates()
    app.state.poll_ms = int(poll_seconds * 1000)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

    _install_error_handlers(app)
    app.add_middleware(AuthMiddleware, auth=auth)
    if not auth.enabled:  # no token: refuse other Host names (DNS rebinding)
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_api(request.url.path):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return await anyio.to_thread.run_sync(
            lambda: render(
                request,
                "error.html",
                exc.status_code,
                code=exc.status_code,
                message=str(exc.detail),
            )
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if is_api(request.url.path):
            return await request_validation_exception_handler(request, exc)
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'input'}: {e['msg']}" for e in exc.errors()
        )
        return await anyio.to_thread.run_sync(
            lambda: render(request, "error.html", 400, code=400, message=msgs)
        )

    @app.exception_handler(db.BadCursor)
    async def bad_cursor(request: Request, exc: db.BadCursor) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        error_id = secrets.token_hex(6)
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        headers = {k.decode(): v.decode() for k, v in SecurityHeadersMiddleware.HEADERS}
        headers["cache-control"] = "no-store"
        if is_api(request.url.path):
            return JSONResponse(
                {"detail": "internal error", "error_id": error_id}, 500, headers=headers
            )
        html = (HERE / "templates" / "500.html").read_text().replace("{{ error_id }}", error_id)
        return HTMLResponse(html, 500, headers=headers)
