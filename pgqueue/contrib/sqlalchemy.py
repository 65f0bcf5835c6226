"""pgqueue with SQLAlchemy 2.x (``pip install pgqueue-jobs[sqlalchemy]``) and Alembic.

Enqueue in the session's transaction
------------------------------------
Pass a ``Session``, ``Connection``, ``AsyncSession`` or ``AsyncConnection`` (also
``scoped_session``/``async_scoped_session``) as ``connection=``::

    with Session(engine) as session, session.begin():
        session.add(order)
        session.flush()                                      # order.id assigned
        send_receipt.using(connection=session).enqueue(order.id)
    # committed together; a rollback discards both

    async with AsyncSession(async_engine) as session, session.begin():
        session.add(order)
        await session.flush()
        await send_receipt.using(connection=session).aenqueue(order.id)

Transaction behaviour: the job row is inserted on the session's own connection, inside
its current transaction (a Session without one begins it, as ``session.execute``
would) or savepoint (``session.begin_nested()``): it exists iff that commits. Nothing
is committed, flushed or rolled back by pgqueue. Unflushed ORM objects are not in the
database yet: flush first when the job refers to their ids.

Drivers: on the psycopg 3 dialect (``postgresql+psycopg://``, sync and async) the row
is inserted on the driver's connection, the same way as with a plain psycopg
connection; on other PostgreSQL drivers (psycopg2, asyncpg, pg8000) through the SQL
API, ``select pgqueue.enqueue(...)`` executed with SQLAlchemy's ``text()`` in the same
transaction. ``enqueue_many`` (COPY) needs psycopg 3.

Alembic
-------
Apply pgqueue's schema from one of your revisions::

    # alembic/versions/xxxx_pgqueue.py
    from pgqueue.contrib.sqlalchemy import drop, upgrade as pgqueue_upgrade

    def upgrade():
        pgqueue_upgrade(op)            # every pgqueue migration this version ships

    def downgrade():
        drop(op)                       # drops the pgqueue schema and its jobs

When you upgrade the pgqueue package later, add a revision that calls
``pgqueue_upgrade(op)`` again (it applies only what is missing), or pin a version with
``pgqueue_upgrade(op, target=2)`` so the revision means the same schema forever.
"""

from __future__ import annotations

from typing import Any

from pgqueue import migrate
from pgqueue.errors import SchemaError

__all__ = ["drop", "upgrade"]


def _bind(op_or_connection: Any) -> Any:
    from sqlalchemy.engine import Connection
    conn = op_or_connection.get_bind() if hasattr(op_or_connection, "get_bind") \
        else op_or_connection
    if not isinstance(conn, Connection):
        raise TypeError("pass Alembic's `op` or a SQLAlchemy Connection, got "
                        f"{type(op_or_connection).__name__}")
    if conn.dialect.name != "postgresql":
        raise SchemaError(f"pgqueue needs PostgreSQL, this connection is {conn.dialect.name}")
    return conn


def _run_script(conn: Any, sql: str) -> None:
    """Run a multi-statement SQL script (no parameters) on ``conn``'s driver."""
    import psycopg
    driver = conn.connection.driver_connection
    if isinstance(driver, psycopg.Connection):
        driver.execute(sql)
    elif isinstance(driver, psycopg.AsyncConnection) or type(driver).__module__.startswith(
            "asyncpg"):
        # Async dialects under Alembic's `connection.run_sync(...)`: we are in a greenlet.
        from sqlalchemy.util import await_only
        await_only(driver.execute(sql))
    else:  # psycopg2, pg8000: a DBAPI cursor without parameters runs the script as is
        cur = conn.connection.dbapi_connection.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()


def upgrade(op_or_connection: Any, target: int | None = None) -> list[int]:
    """Apply pgqueue's pending migrations up to ``target`` in the current transaction.

    :param op_or_connection: Alembic's ``op`` (inside a revision's ``upgrade()``) or a
        SQLAlchemy ``Connection`` on PostgreSQL, any driver.
    :param target: highest pgqueue schema version to apply; ``None``: all shipped.
    :returns: the versions applied (empty when already up to date).
    :raises SchemaError: the database has a pgqueue version newer than this package.

    Runs inside the caller's transaction (Alembic's, for PostgreSQL's transactional
    DDL) under the same advisory lock as ``pgqueue migrate``, recording each version
    in ``pgqueue.migrations``: the result is the schema ``pgqueue migrate`` builds, and
    either tool can take over later.
    """
    from sqlalchemy import text
    conn = _bind(op_or_connection)
    conn.execute(text("select pg_advisory_xact_lock(:k)"), {"k": migrate.MIGRATION_LOCK})
    exists = conn.execute(text(
        "select exists (select 1 from pg_catalog.pg_class c join pg_catalog.pg_namespace n "
        "on n.oid = c.relnamespace where n.nspname = 'pgqueue' and c.relname = 'migrations')"
    )).scalar_one()
    applied = set(conn.execute(text("select version from pgqueue.migrations")).scalars()) \
        if exists else set()
    shipped = migrate.migrations()
    newer = applied - {m.version for m in shipped}
    if newer:
        raise SchemaError(f"the database has pgqueue schema version {max(newer)}, newer than "
                          f"this code (version {migrate.latest_version()}); upgrade pgqueue")
    done = []
    for m in shipped:
        if m.version in applied or (target is not None and m.version > target):
            continue
        _run_script(conn, m.sql)
        conn.execute(text("insert into pgqueue.migrations (version, name) values (:v, :n)"),
                     {"v": m.version, "n": m.name})
        done.append(m.version)
    return done


def drop(op_or_connection: Any) -> None:
    """Drop the ``pgqueue`` schema with every job in it (for a revision's ``downgrade()``)."""
    from sqlalchemy import text
    _bind(op_or_connection).execute(text("drop schema if exists pgqueue cascade"))
