"""Schema: schema.sql equals the migrations; concurrent migrate runs; version checks."""

import datetime as dt
import subprocess
import sys
import threading

import psycopg
import pytest

from pgqueue import SchemaError, migrate
from pgqueue._sql import read_text

DESCRIBE = """
select 'column' as kind, table_name || '.' || column_name as name,
       concat_ws(' ', data_type, is_nullable, column_default) as detail
  from information_schema.columns where table_schema = 'pgqueue'
union all
select 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
  from pg_constraint where connamespace = 'pgqueue'::regnamespace
union all
select 'index', indexname, indexdef from pg_indexes where schemaname = 'pgqueue'
union all
select 'function', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid))
  from pg_proc p where pronamespace = 'pgqueue'::regnamespace
union all
select 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
  from pg_trigger where not tgisinternal and tgrelid::regclass::text like 'pgqueue.%%'
union all
select 'view', viewname, md5(definition) from pg_views where schemaname = 'pgqueue'
union all
select 'reloptions', relname, array_to_string(reloptions, ',')
  from pg_class where relnamespace = 'pgqueue'::regnamespace and reloptions is not null
union all
select 'comment', coalesce(c.relname, '') || '.' || coalesce(a.attname, ''), d.description
  from pg_description d
  join pg_class c on c.oid = d.objoid and d.classoid = 'pg_class'::regclass
  left join pg_attribute a on a.attrelid = c.oid and a.attnum = d.objsubid
 where c.relnamespace = 'pgqueue'::regnamespace
union all
select 'migration', version::text, name from pgqueue.migrations
order by 1, 2
"""


def describe(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(DESCRIBE).fetchall()


def test_schema_sql_equals_migrations(pg_server, empty_dsn):
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate.apply(conn)
    other = f"pgqueue_s_{abs(hash(empty_dsn)) % 10**9}"
    pg_server.drop_db(other)
    dsn2 = pg_server.create_db(other)
    try:
        with psycopg.connect(dsn2, autocommit=True) as conn:
            conn.execute(read_text("schema.sql"))
        a, b = describe(empty_dsn), describe(dsn2)
        assert [r for r in a if r not in b] == [] and [r for r in b if r not in a] == []
        assert len(a) > 50
    finally:
        pg_server.drop_db(other)


def test_status_and_dry_run_then_apply(empty_dsn):
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert all(not applied for _, applied in migrate.status(conn))
        pending = migrate.apply(conn, dry_run=True)
        assert [m.version for m in pending] == [m.version for m in migrate.migrations()]
        assert "pg_advisory_xact_lock" in migrate.render(pending)
        assert conn.execute("select to_regclass('pgqueue.jobs')").fetchone()[0] is None
        with pytest.raises(SchemaError, match="not installed") as refused:
            migrate.check_schema(conn)
        # it names the database, which with no DSN set follows the project directory
        assert repr(conn.info.dbname) in str(refused.value)
        assert "pgqueue embedded status" in str(refused.value)
        migrate.apply(conn)
        assert migrate.check_schema(conn) == migrate.latest_version()
        assert migrate.apply(conn) == []


def test_migrate_prepares_nothing_so_a_transaction_pooler_can_carry_it(empty_dsn):
    """Through a transaction pooler each transaction may land on another server
    connection, where a statement prepared on the first is missing: neither migrate.apply
    (even on a connection that prepares everything) nor the CLI's connection prepares."""
    with psycopg.connect(empty_dsn, autocommit=True, prepare_threshold=0) as conn:
        assert [m.version for m in migrate.apply(conn)] == \
            [m.version for m in migrate.migrations()]
        assert migrate.status(conn)[-1][1]
        assert conn.execute("select count(*) from pg_prepared_statements",
                            prepare=False).fetchone()[0] == 0
    from pgqueue.cli import Ctx
    with Ctx(dsn=empty_dsn).connect() as conn:
        assert conn.prepare_threshold is None


def test_outdated_and_newer_schema_are_refused_naming_both_versions(dsn):
    need = migrate.latest_version()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into pgqueue.migrations (version, name) values (%s, 'future')",
                     (need + 1,))
        with pytest.raises(SchemaError, match=rf"version {need + 1}.*version {need}"):
            migrate.check_schema(conn)
        conn.execute("delete from pgqueue.migrations")
        conn.execute("insert into pgqueue.migrations (version, name) values (0, 'old')")
        with pytest.raises(SchemaError):
            migrate.check_schema(conn)


def test_concurrent_migrate_processes_apply_each_version_once(empty_dsn):
    """Case B29: many migrate runs at once on an empty database."""
    procs = [subprocess.Popen([sys.executable, "-m", "pgqueue.cli", "--dsn", empty_dsn,
                               "migrate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    assert not any("already exists" in o[1] or "duplicate" in o[1] for o in outs)
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute("select version, count(*) from pgqueue.migrations group by 1 "
                            "order by 1").fetchall()
        assert rows == [(m.version, 1) for m in migrate.migrations()]
        locks = conn.execute("select count(*) from pg_locks where locktype = 'advisory'").fetchone()
        assert locks[0] == 0


def test_concurrent_upgrade_processes_apply_each_version_once(empty_dsn):
    """Case B29, the upgrade: the database is at version 1 and four ``pgqueue migrate``
    processes start at once; each later version is applied once, by one of them."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert [m.version for m in migrate.apply(conn, target=1)] == [1]
    procs = [subprocess.Popen([sys.executable, "-m", "pgqueue.cli", "--dsn", empty_dsn,
                               "migrate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert not any("already exists" in o[1] or "duplicate" in o[1] for o in outs), outs
    # a process that waited for the lock re-read the versions and applied nothing
    said = sorted(line for o in outs for line in o[0].splitlines() if line.startswith("applied"))
    assert said == [f"applied {m.name}" for m in migrate.migrations()[1:]], outs
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute("select version, count(*) from pgqueue.migrations group by 1 "
                            "order by 1").fetchall()
        assert rows == [(m.version, 1) for m in migrate.migrations()]
        assert migrate.check_schema(conn) == migrate.latest_version()


def test_concurrent_migrate_threads(empty_dsn):
    errors = []

    def run():
        try:
            with psycopg.connect(empty_dsn, autocommit=True) as conn:
                migrate.apply(conn)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_0016_ends_stuck_plain_pending_jobs_and_shortens_overlong_rate_periods(empty_dsn):
    # Before 0016 a plain job could be inserted as 'pending' (it waited for nothing and
    # never ended) and a rate period could exceed what the claim can subtract from now().
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate.apply(conn, target=15)
        conn.execute("insert into pgqueue.jobs (task, state) values ('m.stuck', 'pending')")
        conn.execute("insert into pgqueue.queues (name, rate_limit, rate_period) "
                     "values ('slow', 1, interval '100000 years')")
        assert [m.version for m in migrate.apply(conn, target=16)] == [16]
        state, errors = conn.execute("select state, errors from pgqueue.jobs").fetchone()
        assert state == "cancelled" and errors[-1]["type"] == "pgqueue.NotRunnable"
        assert conn.execute("select rate_period from pgqueue.queues").fetchone()[0] \
            == dt.timedelta(days=366)
        with pytest.raises(psycopg.errors.CheckViolation, match="pending_only_in_workflows"):
            conn.execute("insert into pgqueue.jobs (task, state) values ('m.x', 'pending')")
