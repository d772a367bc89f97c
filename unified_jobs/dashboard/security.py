"""Who may see the dashboard, and what protects its actions.

- **Credentials**: a bearer token and/or HTTP basic auth, from the config's ``dashboard:``
  section or the environment. Without any, only loopback clients are served (so an app that
  mounts the dashboard and listens on every address does not expose it by accident), and
  ``unified-jobs dashboard`` refuses to bind anything but a loopback address.
- **Cross-site requests**: every action is a POST carrying a CSRF token that must equal the
  one in the dashboard's own cookie (SameSite=Strict, HttpOnly), and whose ``Origin`` (or
  ``Sec-Fetch-Site``), when the browser sends one, is this site.
- **Headers**: a strict Content-Security-Policy (every asset from the package, no inline
  script), no framing, no caching of pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unified_jobs.config import DashboardConfig

__all__ = [
    "CSRF_COOKIE",
    "Credentials",
    "SecurityMiddleware",
    "check_csrf",
    "csrf_token",
    "is_loopback",
]

TOKEN_VAR = "UNIFIED_JOBS_DASHBOARD_TOKEN"
USERNAME_VAR = "UNIFIED_JOBS_DASHBOARD_USERNAME"
PASSWORD_VAR = "UNIFIED_JOBS_DASHBOARD_PASSWORD"

CSRF_COOKIE = "uj_csrf"
TOKEN_COOKIE = "uj_token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Credentials:
    """What a client must show; both ``None``: loopback clients only."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_config(cls, config: DashboardConfig, environ: dict[str, str] | None = None) -> Credentials:
        """The config's credentials, each overridden by its environment variable if set."""
        env = os.environ if environ is None else environ
        token = env.get(TOKEN_VAR) or config.token
        username = env.get(USERNAME_VAR) or config.username
        password = env.get(PASSWORD_VAR) or config.password
        if (username is None) != (password is None):
            from unified_jobs.errors import ConfigError

            raise ConfigError(
                f"the dashboard's basic auth needs both a username and a password "
                f"(dashboard.username/password or {USERNAME_VAR}/{PASSWORD_VAR}); one is missing"
            )
        if token is not None and len(token) < 16:
            from unified_jobs.errors import ConfigError

            raise ConfigError(
                f"the dashboard token ({TOKEN_VAR} or dashboard.token) must be 16 characters or more"
            )
        return cls(token, username, password)

    @property
    def required(self) -> bool:
        return self.token is not None or self.username is not None

    def _token_cookie(self) -> str:
        """What the token cookie holds: a digest of the token, never the token itself."""
        assert self.token is not None
        return hashlib.sha256(b"unified_jobs dashboard\0" + self.token.encode()).hexdigest()

    def allows(self, scope: Scope, headers: dict[str, str], cookies: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and _same(value.strip(), self.token):
                return True
            if _same(cookies.get(TOKEN_COOKIE, ""), self._token_cookie()):
                return True
        if self.username is not None and self.password is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return _same(user, self.username) & _same(password, self.password)
        return False


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name] = value
    return out


class SecurityMiddleware:
    """Authentication, the CSRF cookie and the security headers, for every request."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        cookies = _cookies(headers)
        refusal = self._refusal(scope, headers, cookies)
        if refusal is not None:
            await _with_headers(refusal)(scope, receive, send)
            return
        csrf = cookies.get(CSRF_COOKIE, "")
        new_csrf = None
        if len(csrf) != 43:  # token_urlsafe(32): a client without one (or with junk) gets one
            csrf = new_csrf = secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf"] = csrf
        secure = scope.get("scheme") == "https"

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                _add_security_headers(out)
                if new_csrf is not None:
                    out.append(
                        "set-cookie",
                        f"{CSRF_COOKIE}={new_csrf}; Path=/; HttpOnly; SameSite=Strict"
                        + ("; Secure" if secure else ""),
                    )
            await send(message)

        await self.app(scope, receive, send_secured)

    def _refusal(self, scope: Scope, headers: dict[str, str], cookies: dict[str, str]) -> Response | None:
        creds = self.credentials
        client = scope.get("client")
        if not creds.required:
            if is_loopback(client[0] if client else None):
                return None
            return PlainTextResponse(
                "This dashboard has no credentials configured, so it serves this machine only. Set "
                f"{TOKEN_VAR} (or {USERNAME_VAR} and {PASSWORD_VAR}), or dashboard.token in the config.",
                status_code=403,
            )
        if creds.allows(scope, headers, cookies):
            return None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if creds.token is not None and _same(query.get("token", ""), creds.token):
            # A browser given ?token= once: a cookie holds a digest of it; the URL loses it.
            rest = urlencode({k: v for k, v in query.items() if k != "token"})
            root, path = scope.get("root_path", ""), scope["path"]
            path = path if path.startswith(root) else root + path
            response = RedirectResponse(path + (f"?{rest}" if rest else ""), status_code=303)
            secure = "; Secure" if scope.get("scheme") == "https" else ""
            response.headers.append(
                "set-cookie",
                f"{TOKEN_COOKIE}={creds._token_cookie()}; Path=/; HttpOnly; SameSite=Strict{secure}",
            )
            return response
        refused = PlainTextResponse(
            "Authentication required: a bearer token (Authorization: Bearer ..., or ?token=... once "
            "in a browser)" + (" or HTTP basic auth" if creds.username is not None else "") + ".",
            status_code=401,
        )
        if creds.username is not None:
            refused.headers["WWW-Authenticate"] = 'Basic realm="unified_jobs dashboard", charset="UTF-8"'
        return refused


def _add_security_headers(headers: MutableHeaders) -> None:
    headers.setdefault("content-security-policy", CSP)
    headers.setdefault("x-frame-options", "DENY")
    headers.setdefault("x-content-type-options", "nosniff")
    headers.setdefault("referrer-policy", "same-origin")
    headers.setdefault("cache-control", "no-store")


def _with_headers(response: Response) -> Response:
    _add_security_headers(response.headers)
    return response


def csrf_token(scope_state: Any) -> str:
    """The CSRF token of this request (its cookie's), for the forms a page renders."""
    return str(scope_state.csrf)


def check_csrf(headers: Any, scope_state: Any, form_token: str | None, host: str) -> str | None:
    """Why a POST must be refused (``None``: it may go on): a missing or wrong CSRF token, or
    a browser that says it comes from another site."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    if origin is not None and origin != "null":
        origin_host = origin.split("://", 1)[-1]
        if origin_host != host:
            return f"cross-site request refused (Origin {origin} is not this dashboard's)"
    if not form_token or not _same(form_token, str(scope_state.csrf)):
        return "the form's CSRF token is missing or stale: reload the page and try again"
    return None
