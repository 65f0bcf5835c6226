"""Turn what a caller passes as ``connection=`` into a psycopg connection.

Accepted: a psycopg ``Connection``/``AsyncConnection``; a Django connection wrapper
(``django.db.connection``); a SQLAlchemy ``Session``/``Connection`` on the psycopg 3
dialect. The caller's transaction is used as it is: nothing here commits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from .errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from .app import App


def _unwrap(obj: Any) -> Any:
    """Find the DBAPI connection behind a framework object (or return obj)."""
    if isinstance(obj, (psycopg.Connection, psycopg.AsyncConnection)):
        return obj
    # Django: django.db.connection / connections[alias]
    if hasattr(obj, "ensure_connection") and hasattr(obj, "vendor"):
        if obj.vendor != "postgresql":
            raise ConfigurationError(f"Django database vendor {obj.vendor!r} is not PostgreSQL")
        obj.ensure_connection()
        return obj.connection
    # SQLAlchemy Session -> Connection -> DBAPI connection
    if hasattr(obj, "get_bind") and hasattr(obj, "connection") and callable(obj.connection):
        obj = obj.connection()
    if hasattr(obj, "connection") and hasattr(obj.connection, "driver_connection"):
        return obj.connection.driver_connection
    return obj


@contextlib.contextmanager
def sync_connection(app: App, obj: Any) -> Iterator[psycopg.Connection]:
    if obj is None:
        with app.connection() as conn:
            yield conn
        return
    conn = _unwrap(obj)
    if isinstance(conn, psycopg.AsyncConnection):
        raise ConfigurationError("an AsyncConnection was given: use `await ....aenqueue(...)`")
    if not isinstance(conn, psycopg.Connection):
        raise ConfigurationError(
            f"connection= must be a psycopg Connection, a Django connection or a SQLAlchemy "
            f"Session/Connection on the psycopg dialect; got {type(obj).__name__}")
    yield conn


@contextlib.asynccontextmanager
async def async_connection(app: App, obj: Any) -> AsyncIterator[psycopg.AsyncConnection]:
    if obj is None:
        conn = await psycopg.AsyncConnection.connect(app.conninfo, autocommit=True)
        async with conn:
            yield conn
        return
    conn = _unwrap(obj)
    if not isinstance(conn, psycopg.AsyncConnection):
        raise ConfigurationError(
            f"aenqueue needs a psycopg AsyncConnection, got {type(obj).__name__}; "
            "use enqueue() for a sync connection")
    yield conn
