"""The pgqueue dashboard inside a Django project, behind Django's staff login::

    # urls.py
    from django.urls import path
    from pgqueue.contrib.django.dashboard import dashboard_urls

    urlpatterns = [
        path("admin/", admin.site.urls),
        path("queue/", dashboard_urls()),            # or dashboard_urls(read_only=True)
    ]

Every request to the prefix goes through Django (its sessions, its authentication
middleware): a user who is not an active staff member is sent to the admin's login
page (``LOGIN_URL`` without the admin), as :func:`staff_member_required` does, and never
reaches the dashboard. The others get the dashboard of :mod:`pgqueue.dashboard`,
connected to ``PGQUEUE["DATABASE"]``, its actions logged under their user name. The
dashboard checks its own CSRF token on every action (Django's CSRF middleware is
bypassed for these URLs only), and runs one connection per request, so it works under
WSGI as under ASGI. Needs the ``dashboard`` extra (starlette, jinja2) and
``django.contrib.auth``'s middleware.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["dashboard_urls"]


def _staff(user: Any) -> bool:
    return bool(user.is_active and user.is_staff)


def _login_url() -> str:
    from django.conf import settings
    from django.shortcuts import resolve_url
    from django.urls import NoReverseMatch
    try:
        return resolve_url("admin:login")
    except NoReverseMatch:
        return resolve_url(settings.LOGIN_URL)


def dashboard_urls(*, read_only: bool = False,
                   allow: Callable[[Any], bool] = _staff) -> tuple[list, str, str]:
    """URL patterns serving the dashboard, for ``path("queue/", dashboard_urls())``.

    :param read_only: hide every action and refuse every POST.
    :param allow: ``allow(user) -> bool`` decides who may see it; default: active staff.
    :returns: what :func:`django.urls.include` returns (namespace ``pgqueue_dashboard``).
    """
    from django.contrib.auth.views import redirect_to_login
    from django.http import HttpResponse
    from django.urls import re_path
    from django.views.decorators.csrf import csrf_exempt

    from ...dashboard import EXTRA_MISSING
    try:
        from ...dashboard.app import create_app
    except ImportError as e:                     # pragma: no cover - depends on extras
        from django.core.exceptions import ImproperlyConfigured
        raise ImproperlyConfigured(f"{EXTRA_MISSING} ({e})") from e

    apps: dict[str, Any] = {}

    def asgi() -> Any:
        # Django's settings are read at the request, not at import
        from . import conninfo
        dsn = conninfo()
        if dsn not in apps:
            apps[dsn] = create_app(dsn, read_only=read_only, pool_size=0,
                                   auth=lambda request: request.scope.get("pgqueue_user"))
        return apps[dsn]

    @csrf_exempt
    async def view(request: Any, path: str = "") -> HttpResponse:
        user = await request.auser()
        if not allow(user):
            return redirect_to_login(request.get_full_path(), _login_url())
        return await _call(asgi(), request, path, user.get_username() or str(user.pk))

    return ([re_path(r"^(?P<path>.*)$", view, name="dashboard")], "pgqueue_dashboard",
            "pgqueue_dashboard")


async def _call(app: Any, request: Any, path: str, user: str) -> Any:
    """Run one request through the dashboard's ASGI application."""
    from django.http import HttpResponse

    root = request.path[:len(request.path) - len(path)].rstrip("/")
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in request.headers.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": request.method, "scheme": request.scheme,
        "path": request.path, "raw_path": request.path.encode(), "root_path": root,
        "query_string": request.META.get("QUERY_STRING", "").encode("latin-1"),
        "headers": headers, "client": (request.META.get("REMOTE_ADDR") or "", 0),
        "server": None, "pgqueue_user": user,
    }
    body = request.body
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()           # never disconnects mid-response
        return {"type": "http.disconnect"}     # pragma: no cover

    start: dict = {}
    chunks: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    response = HttpResponse(b"".join(chunks), status=start.get("status", 500))
    for name, value in start.get("headers", []):
        name, value = name.decode("latin-1"), value.decode("latin-1")
        if name.lower() == "set-cookie":
            response.cookies.load(value)
        elif name.lower() != "content-length":
            response[name] = value
    return response
