"""SQLAlchemy: enqueue in the caller's transaction through Session, Connection,
AsyncSession and AsyncConnection, on the psycopg 3, psycopg2 and asyncpg drivers.

Every assertion reads ``pgqueue.jobs`` from a separate autocommit connection (what
another session, e.g. a worker, can see) unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgqueue

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

PARIS = dt.datetime(2026, 11, 29, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
B16_VALUES = [PARIS, dt.date(2026, 11, 29), Decimal("12.30"),
              uuid.UUID("12345678-1234-5678-1234-567812345678")]


def _driver_available(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def sync_engine(dsn: str, driver: str = "psycopg"):
    if driver == "psycopg":
        return sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    if driver == "psycopg2":
        psycopg2 = pytest.importorskip("psycopg2")
        return sa.create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))
    raise ValueError(driver)


def async_engine(dsn: str, driver: str = "psycopg"):
    if driver == "psycopg":
        return create_async_engine(
            "postgresql+psycopg://",
            async_creator=lambda: psycopg.AsyncConnection.connect(dsn))
    if driver == "asyncpg":
        asyncpg = pytest.importorskip("asyncpg")
        p = conninfo_to_dict(dsn)

        def connect():
            return asyncpg.connect(host=p.get("host"), port=int(p.get("port") or 5432),
                                   user=p.get("user"), password=p.get("password"),
                                   database=p.get("dbname"))
        return create_async_engine("postgresql+asyncpg://", async_creator=connect)
    raise ValueError(driver)


@pytest.fixture
def note(app):
    @app.task(name="tests.sa.note")
    def note(*args, **kwargs):
        return list(args)
    return note


def job_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("select id, args from pgqueue.jobs order by id").fetchall()


def seen_args(conn: psycopg.Connection) -> list:
    return [pgqueue.serialization.decode(a)[0] for _, a in job_rows(conn)]


SYNC_DRIVERS = ["psycopg", pytest.param("psycopg2", marks=pytest.mark.skipif(
    not _driver_available("psycopg2"), reason="psycopg2 not installed"))]
ASYNC_DRIVERS = ["psycopg", pytest.param("asyncpg", marks=pytest.mark.skipif(
    not _driver_available("asyncpg"), reason="asyncpg not installed"))]


# -- sync Session ---------------------------------------------------------------------

@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_session_commit_rollback_and_savepoint(dsn, conn, note, driver):
    engine = sync_engine(dsn, driver)
    try:
        with Session(engine) as s:
            note.using(connection=s).enqueue("kept")
            # visible inside the transaction on the same connection, not outside
            assert s.execute(text("select count(*) from pgqueue.jobs")).scalar_one() == 1
            assert job_rows(conn) == []
            s.commit()
        assert seen_args(conn) == ["kept"]

        with Session(engine) as s:
            note.using(connection=s).enqueue("rolled back")
            s.rollback()
        assert seen_args(conn) == ["kept"]

        with Session(engine) as s, s.begin():
            note.using(connection=s).enqueue("outer")
            nested = s.begin_nested()
            note.using(connection=s).enqueue("inner")
            nested.rollback()
            note.using(connection=s).enqueue("after")
        assert seen_args(conn) == ["kept", "outer", "after"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_session_rollback_then_new_enqueue_keeps_only_the_second(dsn, conn, note, driver):
    engine = sync_engine(dsn, driver)
    try:
        with Session(engine) as s:
            note.using(connection=s).enqueue("first")
            s.rollback()
            note.using(connection=s).enqueue("second")
            s.commit()
        assert seen_args(conn) == ["second"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_connection_joins_its_transaction(dsn, conn, note, driver):
    engine = sync_engine(dsn, driver)
    try:
        with engine.connect() as c:
            note.using(connection=c).enqueue("a")
            c.rollback()
            note.using(connection=c).enqueue("b")
            c.commit()
        with engine.begin() as c:
            note.using(connection=c, delay=5, queue="later", priority=3).enqueue("c")
        assert seen_args(conn) == ["b", "c"]
        row = conn.execute("select queue, priority, state, run_at - created_at "
                           "from pgqueue.jobs order by id desc limit 1").fetchone()
        assert row[:3] == ("later", 3, "scheduled")
        assert abs(row[3].total_seconds() - 5) < 0.5
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_b16_values_round_trip_and_naive_datetime_is_refused(dsn, conn, note, driver):
    engine = sync_engine(dsn, driver)
    try:
        with Session(engine) as s:
            with pytest.raises(pgqueue.SerializationError, match="naive datetime"):
                note.using(connection=s).enqueue(dt.datetime(2026, 11, 29, 10, 0))
            with pytest.raises(TypeError, match="not supported"):
                note.using(connection=s).enqueue({1, 2})
            # the transaction is still usable
            job = note.using(connection=s, run_at=PARIS).enqueue(*B16_VALUES)
            s.commit()
        args = job.args
        assert args == B16_VALUES
        assert [type(a) for a in args] == [type(v) for v in B16_VALUES]
        assert str(args[2]) == "12.30"
        assert args[0].astimezone(dt.timezone.utc) == dt.datetime(2026, 11, 29, 9, 0,
                                                                  tzinfo=dt.timezone.utc)
        assert job.row["run_at"] == PARIS
        assert len(job_rows(conn)) == 1
    finally:
        engine.dispose()


def test_session_with_a_worker_runs_the_job(dsn, app, note, start_worker):
    engine = sync_engine(dsn)
    try:
        with Session(engine) as s, s.begin():
            job = note.using(connection=s).enqueue(*B16_VALUES)
        start_worker(app, concurrency=1)
        assert job.result(timeout=15) == B16_VALUES
    finally:
        engine.dispose()


def test_enqueue_many_on_a_session(dsn, conn, note):
    engine = sync_engine(dsn)
    try:
        with Session(engine) as s:
            assert note.using(connection=s).enqueue_many([("x",), ("y",)]) == 2
            s.rollback()
            assert note.using(connection=s).enqueue_many([("z",)]) == 1
            s.commit()
        assert seen_args(conn) == ["z"]
    finally:
        engine.dispose()


def test_wrong_objects_are_refused_clearly(dsn, note):
    engine = sync_engine(dsn)
    try:
        with pytest.raises(pgqueue.ConfigurationError, match="Engine has no transaction"):
            note.using(connection=engine).enqueue(1)
        with Session(engine) as s, pytest.raises(pgqueue.ConfigurationError,
                                                 match="aenqueue needs an async"):
            asyncio.run(note.using(connection=s).aenqueue(1))
    finally:
        engine.dispose()
    sqlite = sa.create_engine("sqlite://")
    with sqlite.connect() as c, pytest.raises(pgqueue.ConfigurationError, match="PostgreSQL"):
        note.using(connection=c).enqueue(1)


# -- async ----------------------------------------------------------------------------

@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_session_commit_rollback_and_savepoint(dsn, conn, note, driver):
    async def main():
        engine = async_engine(dsn, driver)
        try:
            async with AsyncSession(engine) as s:
                await note.using(connection=s).aenqueue("kept")
                n = (await s.execute(text("select count(*) from pgqueue.jobs"))).scalar_one()
                assert n == 1
                assert job_rows(conn) == []
                await s.commit()
            assert seen_args(conn) == ["kept"]

            async with AsyncSession(engine) as s:
                await note.using(connection=s).aenqueue("rolled back")
                await s.rollback()
                await note.using(connection=s).aenqueue("second")
                await s.commit()
            assert seen_args(conn) == ["kept", "second"]

            async with AsyncSession(engine) as s, s.begin():
                await note.using(connection=s).aenqueue("outer")
                nested = await s.begin_nested()
                await note.using(connection=s).aenqueue("inner")
                await nested.rollback()
            assert seen_args(conn) == ["kept", "second", "outer"]

            async with engine.connect() as c:
                await note.using(connection=c).aenqueue("conn")
                await c.commit()
            assert seen_args(conn)[-1] == "conn"

            with pytest.raises(pgqueue.ConfigurationError, match="await"):
                async with AsyncSession(engine) as s:
                    note.using(connection=s).enqueue("sync call")
        finally:
            await engine.dispose()
    asyncio.run(main())


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_b16_values_and_naive_datetime(dsn, conn, note, driver):
    async def main():
        engine = async_engine(dsn, driver)
        try:
            async with AsyncSession(engine) as s:
                with pytest.raises(pgqueue.SerializationError, match="naive datetime"):
                    await note.using(connection=s).aenqueue(dt.datetime(2026, 11, 29, 10))
                job = await note.using(connection=s, delay=dt.timedelta(seconds=5)).aenqueue(
                    *B16_VALUES)
                await s.commit()
            return job
        finally:
            await engine.dispose()
    job = asyncio.run(main())
    assert job.args == B16_VALUES
    assert [type(a) for a in job.args] == [type(v) for v in B16_VALUES]
    row = conn.execute("select state, run_at - created_at from pgqueue.jobs").fetchone()
    assert row[0] == "scheduled" and abs(row[1].total_seconds() - 5) < 0.5


# -- examples/sqlalchemy_app.py ---------------------------------------------------------

def test_sqlalchemy_example_runs_end_to_end(dsn):
    import os
    import subprocess
    import sys

    from .conftest import ROOT
    env = dict(os.environ, PGQUEUE_DSN=dsn,
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "sqlalchemy_app.py")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "refused: quantity must be at least 1 (no order, no job)" in r.stdout
    with psycopg.connect(dsn, autocommit=True) as conn:
        orders = conn.execute("select item, receipt_sent from example_orders").fetchall()
        jobs = conn.execute("select task, state from pgqueue.jobs").fetchall()
    assert orders == [("tea", True)]
    assert jobs == [("examples.send_receipt", "completed")]
