"""Turn what a caller passes as ``connection=`` into something that can enqueue.

Accepted objects, each used inside the caller's current transaction or savepoint
(nothing here commits, rolls back or begins anything the caller does not see):

=====================================  ==================================================
object                                 how the job row is inserted
=====================================  ==================================================
``psycopg.Connection``                 on that connection
``psycopg.AsyncConnection``            on that connection (``aenqueue`` only)
Django connection                      through Django's cursor (``django.db.connection``,
(``django.db.connections[alias]``)     ``connections["x"]``): psycopg 3 or psycopg2
                                       backend; ``aenqueue`` runs the sync call through
                                       ``asgiref.sync_to_async(thread_sensitive=True)``
SQLAlchemy ``Session``/``Connection``  psycopg 3 dialect: on the driver connection;
                                       other PostgreSQL drivers (psycopg2, pg8000...):
                                       ``select pgqueue.enqueue(...)`` through the
                                       session's own ``text()`` execution
SQLAlchemy ``AsyncSession``/           psycopg 3 async dialect: on the driver's
``AsyncConnection``                    ``AsyncConnection``; asyncpg: ``text()`` through
                                       SQLAlchemy (``aenqueue`` only)
=====================================  ==================================================

A Session that has no transaction yet begins one (SQLAlchemy's autobegin), exactly as
``session.execute`` would: the job then commits with ``session.commit()``.

When ``pgqueue.contrib.django`` is installed, a call without a connection uses
Django's default database connection (see :func:`set_default_connection`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from ._sql import q
from .errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from .app import App

#: The SQL API call used where the driver is not psycopg 3. SQLAlchemy's ``text()``
#: binds ``:name`` parameters; every parameter is cast, so drivers that type their
#: parameters from the server (asyncpg) get exactly the function's argument types.
ENQUEUE_TEXT = (
    "select pgqueue.enqueue(task => cast(:task as text), args => cast(:args as jsonb), "
    "kwargs => cast(:kwargs as jsonb), queue => cast(:queue as text), "
    "priority => cast(:priority as integer), "
    "run_at => cast(:run_at as timestamptz), "
    "delay => make_interval(secs => cast(:delay as double precision)), "
    "max_attempts => cast(:max_attempts as integer), "
    "unique_key => cast(:unique_key as text), meta => cast(:meta as jsonb), "
    "partition_key => cast(:partition_key as text), "
    "debounce => make_interval(secs => cast(:debounce as double precision)), "
    "debounce_key => cast(:debounce_key as text), "
    "debounce_max => make_interval(secs => cast(:debounce_max as double precision)))"
)

_default_provider: Callable[[], Any] | None = None


def set_default_connection(provider: Callable[[], Any] | None) -> None:
    """Make ``task.enqueue()`` without ``connection=`` use ``provider()``'s connection.

    :param provider: a callable returning any object accepted as ``connection=`` (called
        at every enqueue, in the enqueuing thread), or ``None`` to go back to the app's
        pool. ``pgqueue.contrib.django`` installs ``lambda: connections[alias]``.
    """
    global _default_provider
    _default_provider = provider


def has_default_connection() -> bool:
    """Whether a default connection provider is installed."""
    return _default_provider is not None


def default_connection() -> Any:
    """The connection a call without ``connection=`` uses (``None``: the app's pool)."""
    return _default_provider() if _default_provider is not None else None


# -- classification ---------------------------------------------------------------

def _is_django(obj: Any) -> bool:
    return hasattr(obj, "ensure_connection") and hasattr(obj, "vendor") and hasattr(obj, "alias")


def _is_sa_async(obj: Any) -> bool:
    if "sqlalchemy.ext.asyncio" not in sys.modules:
        return False
    from sqlalchemy.ext.asyncio import (AsyncConnection, AsyncEngine, AsyncSession,
                                        async_scoped_session)
    return isinstance(obj, (AsyncSession, AsyncConnection, AsyncEngine, async_scoped_session))


def _is_sa(obj: Any) -> bool:
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session, scoped_session
    return (isinstance(obj, (Session, Connection, Engine, scoped_session))
            or _is_sa_async(obj))


def _sa_check_dialect(conn: Any) -> None:
    dialect = conn.dialect
    if dialect.name != "postgresql":
        raise ConfigurationError(
            f"the SQLAlchemy connection uses the {dialect.name!r} dialect; pgqueue needs "
            "PostgreSQL")


def _sa_sync_connection(obj: Any) -> Any:
    """A sync SQLAlchemy ``Connection`` from a Session or Connection (autobegins)."""
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session, scoped_session
    if isinstance(obj, scoped_session):
        obj = obj()
    if isinstance(obj, Session):
        obj = obj.connection()
    if not isinstance(obj, Connection):
        raise ConfigurationError(
            f"connection= got a SQLAlchemy {type(obj).__name__}; pass a Session or a "
            "Connection (an Engine has no transaction of yours to join)")
    _sa_check_dialect(obj)
    if not obj.in_transaction():
        # What Connection.execute() would do (autobegin), so that Connection.commit()
        # commits the row we insert on the driver connection.
        obj.begin()
    return obj


async def _sa_async_connection(obj: Any) -> Any:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
    if isinstance(obj, async_scoped_session):
        obj = obj()
    if isinstance(obj, AsyncSession):
        obj = await obj.connection()
    if not isinstance(obj, AsyncConnection):
        raise ConfigurationError(
            f"connection= got a SQLAlchemy {type(obj).__name__}; pass an AsyncSession or "
            "an AsyncConnection (an AsyncEngine has no transaction of yours to join)")
    _sa_check_dialect(obj.sync_connection)
    if not obj.in_transaction():
        await obj.begin()
    return obj


def _django_check(obj: Any) -> None:
    if obj.vendor != "postgresql":
        raise ConfigurationError(f"Django database {obj.alias!r} uses {obj.vendor!r}, "
                                 "not PostgreSQL")


def _wrong_type(obj: Any) -> ConfigurationError:
    return ConfigurationError(
        "connection= must be a psycopg Connection/AsyncConnection, a Django connection, or "
        "a SQLAlchemy Session/Connection/AsyncSession/AsyncConnection on PostgreSQL; got "
        f"{type(obj).__module__}.{type(obj).__qualname__}")


# -- psycopg connection (for COPY and other psycopg-only paths) --------------------

def _unwrap(obj: Any) -> Any:
    """The psycopg connection behind ``obj`` (or ``obj`` itself when it is not wrapped)."""
    if isinstance(obj, (psycopg.Connection, psycopg.AsyncConnection)):
        return obj
    if _is_django(obj):
        _django_check(obj)
        obj.ensure_connection()
        return obj.connection
    if _is_sa(obj) and not _is_sa_async(obj):
        return _sa_sync_connection(obj).connection.driver_connection
    return obj


@contextlib.contextmanager
def sync_connection(app: App, obj: Any) -> Iterator[psycopg.Connection]:
    """The psycopg 3 connection to run on: ``obj``'s, or one from the app's pool.

    :raises ConfigurationError: ``obj`` is async, of an unknown type, or uses a driver
        other than psycopg 3 (use ``enqueue``, which goes through the SQL API there).
    """
    from_default = obj is None
    if obj is None:
        obj = default_connection()
    conn = _unwrap(obj) if obj is not None else None
    if obj is None or (from_default and not isinstance(conn, psycopg.Connection)):
        # No connection, or a default one this path cannot use (psycopg2): the pool.
        with app.connection() as pooled:
            yield pooled
        return
    if isinstance(conn, psycopg.AsyncConnection) or _is_sa_async(obj):
        raise ConfigurationError("an async connection was given: use `await ....aenqueue(...)`")
    if not isinstance(conn, psycopg.Connection):
        if _is_django(obj) or _is_sa(obj):
            raise ConfigurationError(
                f"this operation needs the psycopg 3 driver; {type(obj).__name__} uses "
                f"{type(conn).__module__}: use task.using(connection=...).enqueue(...) "
                "(one job per call, through the SQL API)")
        raise _wrong_type(obj)
    yield conn


@contextlib.asynccontextmanager
async def async_connection(app: App, obj: Any) -> AsyncIterator[psycopg.AsyncConnection]:
    """The psycopg ``AsyncConnection`` to run on (``obj``'s, or a new autocommit one)."""
    if obj is None:
        conn = await psycopg.AsyncConnection.connect(app.conninfo, autocommit=True)
        async with conn:
            yield conn
        return
    if _is_sa_async(obj):
        sa = await _sa_async_connection(obj)
        raw = await sa.get_raw_connection()
        conn = raw.driver_connection
    else:
        conn = _unwrap(obj)
    if not isinstance(conn, psycopg.AsyncConnection):
        raise ConfigurationError(
            f"this needs a psycopg AsyncConnection, got {type(obj).__name__} "
            f"({type(conn).__module__}); use enqueue() for a sync connection")
    yield conn


# -- enqueue one job -------------------------------------------------------------------

#: the options that need pgqueue.enqueue (a key to look up, a due time to compute)
_FUNCTION_OPTIONS = ("unique_key", "delay", "run_at", "debounce", "debounce_key",
                     "debounce_max")


def enqueue_sql(params: dict[str, Any]) -> str:
    """The statement for one job: a plain INSERT (``enqueue_plain``) when no option
    needs the function's logic, else the ``pgqueue.enqueue`` call."""
    for k in _FUNCTION_OPTIONS:
        if params.get(k) is not None:
            return q("enqueue")
    return q("enqueue_plain")


def enqueue_one(app: App, obj: Any, params: dict[str, Any]) -> int:
    """Insert one job through ``obj`` (see the module docstring); return its id.

    :param params: the parameters of the ``enqueue`` query (task, args and kwargs as
        JSON text, queue, priority, max_attempts, unique_key, delay in seconds or
        ``None``, run_at as an aware datetime or ``None``).
    """
    if obj is None:
        obj = default_connection()
    if obj is None:
        # The pool's connections are autocommit and lent to one thread at a time, so
        # each keeps one cursor: a new cursor per call costs more than the client's
        # whole share of the INSERT (its adapters map is copied each time). The cursor
        # is an attribute of its connection, not a value of a weak-keyed map: it holds
        # the connection, so such a map would keep every connection the pool dropped.
        pool = app.pool
        conn = pool.getconn()
        try:
            cur = getattr(conn, "_pgqueue_cursor", None)
            if cur is None or cur.closed:
                cur = conn._pgqueue_cursor = conn.cursor()  # type: ignore[attr-defined]
            job_id = cur.execute(enqueue_sql(params), params, prepare=True).fetchone()[0]
            if not conn.autocommit:     # a borrower turned it off: commit as `with conn` did
                conn.commit()
            return job_id
        finally:
            pool.putconn(conn)
    if isinstance(obj, psycopg.Connection):
        return obj.execute(enqueue_sql(params), params, prepare=True).fetchone()[0]
    if isinstance(obj, psycopg.AsyncConnection) or _is_sa_async(obj):
        raise ConfigurationError(
            "an async connection was given: use `await task.using(connection=...).aenqueue()`")
    if _is_django(obj):
        _django_check(obj)
        # Django's cursor: works on the psycopg 3 and psycopg2 backends, joins the
        # current atomic() block, and shows in Django's query logging.
        with obj.cursor() as cur:
            cur.execute(enqueue_sql(params), params)
            return cur.fetchone()[0]
    if _is_sa(obj):
        sa = _sa_sync_connection(obj)
        driver = sa.connection.driver_connection
        if isinstance(driver, psycopg.Connection):
            return driver.execute(enqueue_sql(params), params, prepare=True).fetchone()[0]
        from sqlalchemy import text
        return sa.execute(text(ENQUEUE_TEXT), params).scalar_one()
    raise _wrong_type(obj)


async def aenqueue_one(app: App, obj: Any, params: dict[str, Any]) -> int:
    """``enqueue_one`` for async callers (psycopg ``AsyncConnection``, SQLAlchemy async,
    a Django connection through ``sync_to_async``, or a new autocommit connection)."""
    if obj is None:
        obj = default_connection()
        if obj is not None and _is_django(obj):
            return await _django_async(app, None, params)
    if obj is None:
        conn = await psycopg.AsyncConnection.connect(app.conninfo, autocommit=True)
        async with conn:
            cur = await conn.execute(enqueue_sql(params), params, prepare=True)
            return (await cur.fetchone())[0]
    if isinstance(obj, psycopg.AsyncConnection):
        cur = await obj.execute(enqueue_sql(params), params, prepare=True)
        return (await cur.fetchone())[0]
    if _is_django(obj):
        return await _django_async(app, obj, params)
    if _is_sa_async(obj):
        sa = await _sa_async_connection(obj)
        raw = await sa.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, psycopg.AsyncConnection):
            cur = await driver.execute(enqueue_sql(params), params, prepare=True)
            return (await cur.fetchone())[0]
        from sqlalchemy import text
        return (await sa.execute(text(ENQUEUE_TEXT), params)).scalar_one()
    if isinstance(obj, psycopg.Connection) or _is_sa(obj):
        raise ConfigurationError(
            f"aenqueue needs an async connection, got a sync {type(obj).__name__}; "
            "use enqueue()")
    raise _wrong_type(obj)


async def _django_async(app: App, obj: Any, params: dict[str, Any]) -> int:
    # Django connections are per thread; its transactions live in the thread that
    # sync_to_async(thread_sensitive=True) uses, so the insert must run there too.
    from asgiref.sync import sync_to_async

    def run() -> int:
        return enqueue_one(app, obj if obj is not None else default_connection(), params)
    return await sync_to_async(run, thread_sensitive=True)()
