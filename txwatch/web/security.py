"""Access control of the review application.

* Every request except ``/login``, ``/static/*`` and ``/healthz`` is authenticated by
  :class:`AuthMiddleware` (default deny, so a new route cannot forget it): either
  ``Authorization: Bearer <token>`` or the session cookie the login form sets (HttpOnly,
  SameSite=Strict, signed with a key derived from the token, 12 h). A wrong token is a 401 for
  the API and a redirect to the login form for pages.
* Forms carry a CSRF token (double submit: the ``txwatch_csrf`` cookie and the ``csrf_token``
  field must be equal and signed by the server), checked by :meth:`Auth.check_csrf`.
* Unsafe API calls must send ``Content-Type: application/json``: a browser cannot send that
  cross-site without a CORS preflight, which this application never grants.
* ``--insecure-no-auth`` (loopback only) turns the token off; CSRF and Host checks stay on.

>>> a = Auth("s3cret")
>>> a.token_ok("s3cret"), a.token_ok("S3cret"), a.token_ok(None)
(True, False, False)
>>> a.session_ok(a.new_session(now=0.0), now=10.0), a.session_ok("v1.9.x", now=0.0)
(True, False)
>>> c = a.new_csrf(); a.csrf_valid(c, c), a.csrf_valid(c, a.new_csrf())
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import defaultdict, deque
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "txwatch_session"
CSRF_COOKIE = "txwatch_csrf"
REVIEWER_COOKIE = "txwatch_reviewer"
FLASH_COOKIE = "txwatch_flash"
SESSION_SECONDS = 12 * 3600
PUBLIC_PATHS = ("/login", "/healthz")
PUBLIC_PREFIXES = ("/static/",)
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _b64sig(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()[:43]


class Auth:
    """Token checks, signed session and CSRF values; ``token=None`` means no authentication."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.enabled = token is not None
        base = token.encode() if token else secrets.token_bytes(32)
        self._key = hmac.new(base, b"txwatch-web-v1", hashlib.sha256).digest()
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    # token ---------------------------------------------------------------------------------
    def token_ok(self, presented: str | None) -> bool:
        if self.token is None or presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())

    def login_allowed(self, client: str, now: float | None = None, limit: int = 10) -> bool:
        """At most ``limit`` failed logins per client per minute."""
        now = time.monotonic() if now is None else now
        q = self._failures[client]
        while q and q[0] < now - 60:
            q.popleft()
        return len(q) < limit

    def login_failed(self, client: str) -> None:
        self._failures[client].append(time.monotonic())

    # session -------------------------------------------------------------------------------
    def new_session(self, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + SESSION_SECONDS)
        body = f"v1.{expiry}"
        return f"{body}.{_b64sig(self._key, 'session:' + body)}"

    def session_ok(self, value: str | None, now: float | None = None) -> bool:
        if not value or value.count(".") != 2:
            return False
        body, sig = value.rsplit(".", 1)
        if not hmac.compare_digest(sig, _b64sig(self._key, "session:" + body)):
            return False
        try:
            expiry = int(body.split(".")[1])
        except ValueError:
            return False
        return (time.time() if now is None else now) < expiry

    # csrf ----------------------------------------------------------------------------------
    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{_b64sig(self._key, 'csrf:' + nonce)}"

    def csrf_signed(self, value: str | None) -> bool:
        if not value or "." not in value:
            return False
        nonce, sig = value.rsplit(".", 1)
        return hmac.compare_digest(sig, _b64sig(self._key, "csrf:" + nonce))

    def csrf_valid(self, cookie: str | None, submitted: str | None) -> bool:
        """Double submit: the form value equals the cookie and the server signed it."""
        if not cookie or not submitted or not self.csrf_signed(cookie):
            return False
        return hmac.compare_digest(cookie.encode(), submitted.encode())

    # flash ---------------------------------------------------------------------------------
    def sign_flash(self, kind: str, text: str) -> str:
        body = json.dumps([kind, text[:500]], separators=(",", ":"))
        return quote(body, safe="") + "." + _b64sig(self._key, "flash:" + body)

    def read_flash(self, value: str | None) -> tuple[str, str] | None:
        if not value or "." not in value:
            return None
        enc, sig = value.rsplit(".", 1)
        body = unquote(enc)
        if not hmac.compare_digest(sig, _b64sig(self._key, "flash:" + body)):
            return None
        try:
            kind, text = json.loads(body)
        except ValueError:
            return None
        return str(kind), str(text)


def bearer(request: Request) -> str | None:
    h = request.headers.get("authorization")
    if not h:
        return None
    scheme, _, value = h.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/openapi.json"


class AuthMiddleware:
    """Authenticates every non-public request; sets ``scope['state']['auth']``."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        response: Response | None = None
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            how = "public"
        else:
            how = self._authenticate(request)
            if how is None:
                response = self._deny(request)
        if (
            response is None
            and request.method in UNSAFE
            and is_api(path)
            and request.headers.get("content-type", "").split(";")[0].strip().lower()
            != "application/json"
        ):
            response = JSONResponse(
                {"detail": "API writes need Content-Type: application/json"}, status_code=415
            )
        if response is not None:
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["auth"] = how
        await self.app(scope, receive, send)

    def _authenticate(self, request: Request) -> str | None:
        presented = bearer(request)
        if presented is not None:  # a header was sent: it decides, whatever the cookie says
            return "bearer" if self.auth.token_ok(presented) else None
        if not self.auth.enabled:
            return "open"
        if self.auth.session_ok(request.cookies.get(SESSION_COOKIE)):
            return "session"
        return None

    def _deny(self, request: Request) -> Response:
        if is_api(request.url.path) or request.method not in ("GET", "HEAD"):
            return JSONResponse(
                {"detail": "authentication required: Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


class SecurityHeadersMiddleware:
    """Content-Security-Policy (no inline script or style), no framing, no caching of pages."""

    HEADERS: tuple[tuple[bytes, bytes], ...] = (
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.extend(h for h in self.HEADERS if h[0] not in names)
                if not static and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def safe_next(value: str | None, default: str = "/alerts") -> str:
    """A local path to go back to (never another host: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value
