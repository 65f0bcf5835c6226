"""Who may see the dashboard and act on it: authentication, CSRF, response headers.

- Authentication is a callable ``auth(request) -> str | None`` (sync or async) that
  returns the name of the user, written to the log with every action, or ``None`` to
  refuse. :func:`token_auth` is the one ``pgqueue dashboard --token`` uses: a bearer
  token in the ``Authorization`` header, or a cookie set by the login form; both compared
  in constant time.
- Every POST carries a CSRF token: the page's form holds an HMAC of a random cookie under
  a key of the process, so a form posted from another site (which can neither read the
  cookie nor compute the HMAC) is refused with 403 before anything changes.
- Every response carries a content security policy that allows scripts, styles and
  images from the dashboard itself only (no inline script, no inline style).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # pragma: no cover - this module imports without the extra
    from starlette.requests import Request

#: ``auth(request) -> user name | None``, sync or async
Auth = Callable[[Any], Union[str, None, Awaitable[Union[str, None]]]]

TOKEN_COOKIE = "pgqueue_dashboard_token"  # noqa: S105 - a cookie's name, not a secret
CSRF_COOKIE = "pgqueue_dashboard_csrf"
CSRF_FIELD = "csrf_token"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mac(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def token_auth(token: str, *, user: str = "token") -> Auth:
    """An ``auth`` check that accepts requests carrying ``token``.

    :param token: the shared secret; compared in constant time.
    :param user: the name actions are logged under.
    :returns: a callable for :func:`pgqueue.dashboard.asgi_app`'s ``auth``. The login
        form stores an HMAC of the token (not the token) in an HttpOnly cookie.
    """
    if not token:
        raise ValueError("the dashboard token must not be empty")
    key = secrets.token_bytes(32)
    expected_cookie = _mac(key, token)

    def check(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and hmac.compare_digest(
                header[7:].strip().encode(), token.encode()):
            return user
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), expected_cookie.encode()):
            return user
        return None

    def login_cookie(candidate: str) -> str | None:
        if hmac.compare_digest(candidate.encode(), token.encode()):
            return expected_cookie
        return None

    check.login_cookie = login_cookie  # type: ignore[attr-defined]
    return check


async def authenticate(auth: Auth | None, request: Request) -> str | None:
    """The user name for ``request`` (``anonymous`` without an ``auth``), or None."""
    if auth is None:
        return "anonymous"
    result = auth(request)
    if inspect.isawaitable(result):
        result = await result
    return result


class Csrf:
    """CSRF tokens bound to a per-browser random cookie by an HMAC under a process key."""

    def __init__(self, key: bytes | None = None):
        self.key = key or secrets.token_bytes(32)

    def token_for(self, request: Request) -> tuple[str, str | None]:
        """(form token, cookie value to set or None if the browser has one)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        new = None
        if not cookie or len(cookie) > 100:
            cookie = new = secrets.token_urlsafe(32)
        return _mac(self.key, cookie), new

    def valid(self, request: Request, form_token: object) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie or not isinstance(form_token, str) or not form_token:
            return False
        return hmac.compare_digest(form_token.encode(), _mac(self.key, cookie).encode())


class SecurityHeaders:
    """ASGI middleware: the content security policy and friends on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (k, v) for k, v in HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: the names a browser on this machine uses for a loopback address
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str:
    """The name in a ``Host`` header, lower-cased, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """ASGI middleware: refuse (400) a request whose ``Host`` names none of ``allowed``.

    A dashboard on a loopback address without a token trusts whoever can connect to it,
    which a web page can also do: a domain of its own re-bound to 127.0.0.1 (DNS
    rebinding) makes the page same-origin with the dashboard, free to read its pages
    and their form tokens and to post actions. Such a browser sends the page's own name
    as ``Host``, so only this machine's names (and those the operator allows, e.g. a
    reverse proxy's) are served. A request without ``Host`` (not a browser) passes.

    :param allowed: host names (any case; without port).
    """

    def __init__(self, app, allowed: frozenset[str] | set[str]):
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
            name = host_name(raw.decode("latin-1")) if raw is not None else None
            if name is not None and name not in self.allowed:
                body = (f"Host {name!r} is not served: this dashboard answers only "
                        f"{', '.join(sorted(self.allowed))}. Reached through a proxy or "
                        f"another name? Start it with --allowed-host {name}.\n").encode()
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
