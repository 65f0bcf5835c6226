"""Alembic: a throwaway Alembic project whose revision calls
``pgqueue.contrib.sqlalchemy.upgrade(op)``; ``alembic upgrade head`` from an empty
database builds exactly the schema ``pgqueue migrate`` builds, on each driver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import psycopg
import pytest

from pgqueue import migrate

from .conftest import ROOT
from .test_migrations import describe

pytest.importorskip("alembic")
pytest.importorskip("sqlalchemy")

ENV_SYNC = """
import os
import psycopg
from alembic import context
from sqlalchemy import create_engine

dsn = os.environ["TEST_DSN"]
driver = os.environ["TEST_DRIVER"]
if driver == "psycopg2":
    import psycopg2
    engine = create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))
else:
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

ENV_ASYNC = """
import asyncio
import os
import asyncpg
from alembic import context
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.ext.asyncio import create_async_engine

p = conninfo_to_dict(os.environ["TEST_DSN"])


def connect():
    return asyncpg.connect(host=p.get("host"), port=int(p.get("port") or 5432),
                           user=p.get("user"), password=p.get("password"),
                           database=p.get("dbname"))


def run(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()

asyncio.run(main())
"""

REVISION = '''
"""install pgqueue"""
from alembic import op
from pgqueue.contrib.sqlalchemy import drop, upgrade as pgqueue_upgrade

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("create table public.orders (id serial primary key)")
    pgqueue_upgrade(op)


def downgrade():
    drop(op)
    op.execute("drop table public.orders")
'''


def make_project(path, driver: str):
    (path / "versions").mkdir(parents=True)
    (path / "env.py").write_text(ENV_ASYNC if driver == "asyncpg" else ENV_SYNC)
    (path / "script.py.mako").write_text("")
    (path / "versions" / "a1_pgqueue.py").write_text(textwrap.dedent(REVISION))
    ini = path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {path}\n")
    return ini


def alembic(ini, dsn: str, driver: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TEST_DSN=dsn, TEST_DRIVER=driver,
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("driver", [
    "psycopg",
    pytest.param("psycopg2", marks=pytest.mark.skipif(not _has("psycopg2"),
                                                      reason="psycopg2 not installed")),
    pytest.param("asyncpg", marks=pytest.mark.skipif(not _has("asyncpg"),
                                                     reason="asyncpg not installed")),
])
def test_alembic_upgrade_head_equals_pgqueue_migrate(tmp_path, pg_server, empty_dsn, driver):
    ini = make_project(tmp_path / "alembic", driver)
    r = alembic(ini, empty_dsn, driver, "upgrade", "head")
    assert r.returncode == 0, r.stderr

    reference = f"pgqueue_ref_{uuid.uuid4().hex[:10]}"
    ref_dsn = pg_server.create_db(reference)
    try:
        with psycopg.connect(ref_dsn, autocommit=True) as conn:
            migrate.apply(conn)
        a, b = describe(empty_dsn), describe(ref_dsn)
        assert len(a) > 50
        assert [r for r in a if r not in b] == [] and [r for r in b if r not in a] == []
    finally:
        pg_server.drop_db(reference)

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert migrate.check_schema(conn) == migrate.latest_version()
        assert conn.execute("select version_num from alembic_version").fetchone() == ("a1",)
        # a second `pgqueue migrate` finds nothing to do: the tools agree on the versions
        assert migrate.apply(conn) == []

    r = alembic(ini, empty_dsn, driver, "downgrade", "base")
    assert r.returncode == 0, r.stderr
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute("select to_regnamespace('pgqueue')").fetchone()[0] is None


def test_upgrade_helper_with_target_and_is_idempotent(empty_dsn):
    import sqlalchemy as sa

    from pgqueue.contrib.sqlalchemy import upgrade

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(empty_dsn))
    try:
        with engine.begin() as c:
            assert upgrade(c, target=1) == [1]
        with engine.begin() as c:
            assert upgrade(c) == [m.version for m in migrate.migrations()][1:]
            assert upgrade(c) == []
        with engine.connect() as c, pytest.raises(TypeError, match="Alembic's `op`"):
            upgrade(engine)
    finally:
        engine.dispose()
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert migrate.check_schema(conn) == migrate.latest_version()
