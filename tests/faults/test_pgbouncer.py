"""PgBouncer in transaction pooling mode (case B08; B29 through a pooler).

The test starts its own PgBouncer (Debian's ``pgbouncer``; skipped when the binary is
absent) with ``pool_mode = transaction`` and ``default_pool_size = 5`` in front of the
test server. Workers run in poll-only mode (``--no-listen --poll-interval 1``), so they
keep no session state: no LISTEN, no prepared statements, no session settings, no
session advisory locks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest

from ..conftest import ROOT, wait_until
from .helpers import Fleet, db_now, rows, safe, scalar, secs, side, state_of, worker_id_of

pytestmark = [pytest.mark.faults, pytest.mark.slow]

JOBS = 300


def _advisory_locks(admin_dsn: str, dsn: str) -> int:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    return scalar(admin_dsn, "select count(*) from pg_locks l join pg_database d "
                             "on d.oid = l.database where l.locktype = 'advisory' "
                             "and d.datname = %s", (dbname,))


def test_b08_poll_only_workers_and_producers_through_pgbouncer(
        dsn, fapp, spawn_worker, pgbouncer, pg_server):
    bdsn = pgbouncer.dsn(dsn)
    rows(dsn, "create table public.orders (id bigserial primary key, job_id bigint)")
    fleet = Fleet(spawn_worker, dsn, "-c", "4", "--no-listen", "--poll-interval", "1",
                  "--heartbeat-interval", "1", "--stale-after", "5", db=bdsn)
    procs = fleet.start(3)
    for p in procs:
        worker_id_of(dsn, p.pid)
    work = fapp.tasks["faults.work"]
    t0 = time.monotonic()
    # 300 business transactions through the pooler, each writing a row and a job
    with psycopg.connect(bdsn, prepare_threshold=None) as conn:
        for _ in range(JOBS):
            with conn.transaction():
                (oid,) = conn.execute("insert into public.orders default values "
                                      "returning id").fetchone()
                j = work.using(connection=conn).enqueue(ms=20)
                conn.execute("update public.orders set job_id = %s where id = %s",
                             (j.id, oid))
    wait_until(safe(lambda: scalar(dsn, "select count(*) from pgqueue.jobs "
                                        "where state = 'completed'") == JOBS),
               60, 0.1, f"{JOBS} jobs completed through PgBouncer")
    elapsed = time.monotonic() - t0
    starts = rows(dsn, "select job_id, count(*) from public.side where event = 'start' "
                       "group by job_id")
    # an idle worker finds a new job by polling within about a second
    fresh_at = db_now(dsn)
    fresh = work.enqueue(ms=1)
    wait_until(lambda: side(dsn, fresh.id), 5, 0.02, "the fresh job started")
    pickup = secs(side(dsn, fresh.id)[0][5], fresh_at)
    wait_until(lambda: state_of(dsn, fresh.id) == "completed", 5, 0.02)
    # no session setting of a worker leaked onto the pooled server connections
    leaked = set()
    with psycopg.connect(bdsn, prepare_threshold=None, autocommit=True) as c:
        for _ in range(20):
            leaked.add(c.execute("select current_setting('statement_timeout') || '/' || "
                                 "current_setting('lock_timeout')").fetchone()[0])
    codes = fleet.term_all(30)
    locks = _advisory_locks(pg_server.admin_dsn, dsn)
    logs = "".join(p.log() for p in procs)
    errors = [line for line in logs.splitlines() if "prepared statement" in line
              or " ERROR " in line or "Traceback" in line]
    dup = [r for r in starts if r[1] != 1]
    linked = scalar(dsn, "select count(*) from public.orders o join pgqueue.jobs j "
                         "on j.id = o.job_id where j.state = 'completed'")
    print(f"\nB08: {JOBS} jobs enqueued in business transactions and run by 3 poll-only "
          f"workers through PgBouncer in {elapsed:.1f} s; {len(starts)} distinct "
          f"executions, {len(dup)} duplicated; idle pickup {pickup:.2f} s; advisory locks "
          f"after stop {locks}; server settings seen through the pooler {sorted(leaked)}")
    assert len(starts) == JOBS and not dup
    assert linked == JOBS
    assert not errors, errors[:5]
    assert "prepared statement" not in pgbouncer.log()
    assert codes == [0, 0, 0]
    assert locks == 0
    assert pickup <= 1.0 + 0.5
    assert leaked == {"0/0"}


def test_b08_b29_migrate_through_pgbouncer_on_an_empty_database(
        empty_dsn, pgbouncer, pg_server):
    """Two ``pgqueue migrate`` processes at once through the pooler: both exit 0, each
    version is recorded once, and no advisory lock is left behind."""
    bdsn = pgbouncer.dsn(empty_dsn)
    env = dict(os.environ, PGQUEUE_DSN=bdsn,
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    procs = [subprocess.Popen([sys.executable, "-m", "pgqueue.cli", "migrate"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for out in outs:
        assert "already exists" not in out and "duplicate key" not in out, out
    from pgqueue import migrate
    assert rows(empty_dsn, "select version, count(*) from pgqueue.migrations "
                           "group by version order by version") == \
        [(m.version, 1) for m in migrate.migrations()]
    status = subprocess.run([sys.executable, "-m", "pgqueue.cli", "migrate", "--status"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "pending" not in status.stdout, status.stdout
    assert _advisory_locks(pg_server.admin_dsn, empty_dsn) == 0
