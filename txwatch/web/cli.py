"""``txwatch serve``: the alert review web application."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from txwatch.settings import Settings, get_settings

MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_problem(settings: Settings, host: str, insecure_no_auth: bool) -> str | None:
    """Why ``txwatch serve`` must not start with these settings, or None."""
    token = settings.web_token.get_secret_value() if settings.web_token else ""
    if token:
        if len(token) < MIN_TOKEN_LENGTH:
            return (
                f"TXWATCH_WEB_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters; use e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return None
    if not insecure_no_auth:
        return (
            "TXWATCH_WEB_TOKEN is not set: set it (every page and API call then needs it), "
            "or pass --insecure-no-auth to serve without authentication on loopback"
        )
    if not is_loopback(host):
        return f"--insecure-no-auth only binds to loopback (127.0.0.1, ::1), not {host!r}"
    return None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from txwatch.web.app import create_app

    settings = get_settings()
    host = args.host or settings.web_host
    port = args.port if args.port is not None else settings.web_port
    problem = access_problem(settings, host, args.insecure_no_auth)
    if problem:
        print(f"txwatch serve: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    log = logging.getLogger("txwatch.web")
    if settings.web_token is not None and args.insecure_no_auth:
        log.warning("TXWATCH_WEB_TOKEN is set: --insecure-no-auth is ignored")
    if settings.web_token is None:
        log.warning("serving WITHOUT authentication on %s:%d (--insecure-no-auth)", host, port)
    elif not is_loopback(host):
        log.warning("serving on %s over plain HTTP: put a TLS proxy in front of it", host)
    if args.migrate:
        from sinks.migrate import migrate

        applied = migrate(settings.dsn())
        log.info("migrations applied: %s", ", ".join(applied) or "none (up to date)")
    problem = schema_problem(settings.dsn())
    if problem:
        print(f"txwatch serve: {problem}", file=sys.stderr)
        return 2
    app = create_app(
        settings,
        insecure_no_auth=args.insecure_no_auth,
        publish_timeout=args.publish_timeout,
        drain_interval=args.retry_interval,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )
    return 0


def schema_problem(dsn: str) -> str | None:
    """Why the database cannot serve the review application, or None."""
    import psycopg
    from psycopg.rows import dict_row

    from txwatch.web.app import SchemaMissing, check_schema

    class _One:  # check_schema's pool interface over one connection
        def __init__(self, conn: psycopg.Connection) -> None:
            self.conn = conn

        def connection(self) -> psycopg.Connection:
            return self.conn

    try:
        with psycopg.connect(dsn, connect_timeout=10, row_factory=dict_row) as conn:
            check_schema(_One(conn))  # type: ignore[arg-type]
    except psycopg.OperationalError as e:
        return f"cannot reach the database (TXWATCH_DATABASE_URL): {e}"
    except SchemaMissing as e:
        return str(e)
    return None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the alert review web application",
        description=(
            "Serve the alert review pages and JSON API (docs/review.md). Every page and API "
            "call needs TXWATCH_WEB_TOKEN (Bearer header or the login form). Labels go to "
            "TXWATCH_LABELS_TOPIC and snoozes to TXWATCH_CONTROLS_TOPIC through an outbox "
            "table, so a Kafka outage delays them but loses none."
        ),
    )
    p.add_argument("--host", help="address to bind (default TXWATCH_WEB_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default TXWATCH_WEB_PORT, 8080)")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without a token when TXWATCH_WEB_TOKEN is unset (loopback only)",
    )
    p.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    p.add_argument(
        "--publish-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long a write waits for Kafka before answering 'pending' (default 5)",
    )
    p.add_argument(
        "--retry-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between retries of unpublished labels/controls (default 5)",
    )
    p.set_defaults(func=run)
