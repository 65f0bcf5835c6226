"""A web dashboard to see and steer the queue (``pip install 'pgqueue-jobs[dashboard]'``).

Run it with ``pgqueue dashboard``, or mount :func:`asgi_app` inside a Starlette or
FastAPI application::

    from fastapi import FastAPI
    from pgqueue.dashboard import asgi_app

    api = FastAPI()
    api.mount("/queue", asgi_app(read_only=False, auth=check_staff))

Importing this package needs no extra; :func:`asgi_app` needs starlette and jinja2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette

__all__ = ["asgi_app"]

EXTRA_MISSING = ("the dashboard needs the 'dashboard' extra: "
                 "pip install 'pgqueue-jobs[dashboard]'")


def asgi_app(dsn: str | None = None, read_only: bool = False, auth: Any = None,
             *, pool_size: int = 4) -> Starlette:
    """An ASGI application serving the dashboard.

    Pages and actions run on a pool of at most ``pool_size`` connections, opened at the
    first request (the host application's lifespan need not know about it);
    ``pool_size=0`` opens one connection per request instead, for hosts that run each
    request in its own event loop (Django under WSGI: see
    :mod:`pgqueue.contrib.django.dashboard`).

    :param dsn: the database (str); default ``$PGQUEUE_DSN``, libpq's environment, else
        the embedded PostgreSQL.
    :param read_only: hide every action and refuse every POST with 403.
    :param auth: who may see the dashboard: ``None`` lets every request in (mount it
        behind the host application's own login); a string is a token (a bearer
        ``Authorization`` header, or the sign-in form; compared in constant time); a
        callable ``auth(request) -> str | None`` (sync or async) returns the user name
        actions are logged under, or ``None`` to refuse the request (401).
    :raises ImportError: without the ``dashboard`` extra (starlette, jinja2).
    """
    try:
        from .app import create_app
    except ImportError as e:                         # pragma: no cover - depends on extras
        raise ImportError(f"{EXTRA_MISSING} ({e})") from e
    from ..app import resolve_dsn
    return create_app(resolve_dsn(dsn), read_only=read_only, auth=auth, pool_size=pool_size)
