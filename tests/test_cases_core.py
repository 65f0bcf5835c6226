"""The core failure cases of /work/shared/cases/README.md, as tests.

B01 (SIGKILL), B02 (SIGTERM), B03 (heartbeat vs. stale threshold), B06 (notifications
during a busy listener), B10 (transactional enqueue and wake-up), B16 (rich argument
types, delayed jobs), B24 (pool smaller than concurrency, database restart), B27
(priority of rescued and fresh jobs), B29 (worker side of concurrent first migrations),
B30 (lock and statement timeouts).

Case states map to pgqueue's: queued -> available, succeeded -> completed,
failed -> discarded. Executions are counted with rows of ``public.side`` (one ``start``
row per execution, written by the tasks of ``tests/apps/cases.py``); times are compared
on the database clock. Measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

import pgqueue
from pgqueue import worker as worker_mod

from .apps import cases
from .conftest import ROOT, SIDE_DDL, WorkerThread, wait_until
from .faults.helpers import TERMINAL, db_now, rows, safe, scalar, secs

CASES = "tests.apps.cases"
CASES_POOL = "tests.apps.cases:pool_app"
#: heartbeat every 1 s, stale after 5 s (the B01/B02/B27 scenarios)
HB = ("--heartbeat-interval", "1", "--stale-after", "5")

# -- helpers ------------------------------------------------------------------------

def execute(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        c.execute(sql)


def wait_workers(dsn: str, n: int, timeout: float = 20) -> None:
    wait_until(safe(lambda: scalar(dsn, "select count(*) from pgqueue.workers") >= n),
               timeout, 0.05, f"{n} worker(s) registered")


def worker_id_of(dsn: str, pid: int) -> uuid.UUID:
    return wait_until(lambda: scalar(dsn, "select id from pgqueue.workers where pid = %s",
                                     (pid,)), 20, 0.05, f"worker row of pid {pid}")


def starts(dsn: str, job_id: int) -> list[tuple]:
    """(attempt, pid, at) of each start row of a job, in order."""
    return rows(dsn, "select attempt, pid, at from public.side "
                     "where job_id = %s and event = 'start' order by id", (job_id,))


def job(dsn: str, job_id: int) -> dict:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.cursor(row_factory=dict_row)
        return cur.execute("select * from pgqueue.jobs where id = %s", (job_id,)).fetchone()


def state_of(dsn: str, job_id: int) -> str:
    return scalar(dsn, "select state from pgqueue.jobs where id = %s", (job_id,))


def unowned_running(dsn: str, stale_after: float) -> int:
    """Running jobs whose owner is not a live (heartbeating) process instance."""
    return scalar(dsn, """
        select count(*) from pgqueue.jobs j
         where j.state = 'running'
           and not exists (select 1 from pgqueue.workers w
                            where w.id = j.worker_id
                              and w.heartbeat_at > now() - make_interval(secs => %s))""",
                  (stale_after,))


def at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


class Pruner:
    """B01's aggressive worker-row pruning: every ``every`` s, delete workers silent
    for more than ``silent`` s (faster than stalled-job detection)."""

    def __init__(self, dsn: str, silent: float = 3.0, every: float = 2.0):
        self.dsn, self.silent, self.every = dsn, silent, every
        self.deleted = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(psycopg.Error):
                self.deleted += len(rows(self.dsn, """
                    delete from pgqueue.workers
                     where heartbeat_at < now() - make_interval(secs => %s) returning id""",
                                         (self.silent,)))

    def __enter__(self) -> Pruner:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)


class HeartbeatSampler:
    """Samples ``pgqueue.workers.heartbeat_at`` of one worker every 0.1 s (DB clock)."""

    def __init__(self, dsn: str, worker_id: uuid.UUID):
        self.dsn, self.worker_id = dsn, worker_id
        self.values: set[dt.datetime] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.wait(0.1):
                r = c.execute("select heartbeat_at from pgqueue.workers where id = %s",
                              (self.worker_id,)).fetchone()
                if r:
                    self.values.add(r[0])

    def gaps(self) -> list[float]:
        v = sorted(self.values)
        return [secs(b, a) for a, b in zip(v, v[1:], strict=False)]

    def __enter__(self) -> HeartbeatSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)


@pytest.fixture
def capp(dsn):
    """The producer side: an App on the test database with the cases tasks."""
    a = cases.make_app(dsn)
    yield a
    a.close()


@pytest.fixture
def spawn(spawn_worker):
    """``spawn_worker`` (worker logs kept with PGQUEUE_KEEP_WORKER_LOGS=DIR)."""
    return spawn_worker


# -- B01: SIGKILL -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("variant", ["a", "b"])
def test_b01_sigkilled_workers_job_is_rescued_and_runs_again(dsn, capp, spawn, variant):
    """a: only an idle W2 is left; b: a new process reuses the name ``w1`` within 1 s.
    Worker rows of silent workers are pruned every 2 s (after 3 s of silence), so the
    rescue must also catch a running job whose owner row is gone."""
    w1 = spawn(CASES, "-c", "1", "--name", "w1", *HB)
    w1_id = worker_id_of(dsn, w1.pid)
    j = capp.tasks["cases.first_long"].using(max_attempts=3).enqueue(long=60, short=0.5)
    wait_until(lambda: len(starts(dsn, j.id)) == 1, 15, 0.05, "J running on W1")
    assert state_of(dsn, j.id) == "running"
    w2 = None
    if variant == "a":
        w2 = spawn(CASES, "-c", "1", "--name", "w2", *HB)
        wait_workers(dsn, 2)
    with Pruner(dsn) as pruner:
        w1.kill()
        t_kill = db_now(dsn)
        runner = w2
        if variant == "b":
            runner = spawn(CASES, "-c", "1", "--name", "w1", *HB)
        # J leaves `running` within 15 s of the kill ...
        wait_until(lambda: job(dsn, j.id)["errors"], 15, 0.05, "J rescued")
        # ... and ends completed on the other process
        wait_until(lambda: state_of(dsn, j.id) in TERMINAL, 15, 0.05, "J finished")
    row = job(dsn, j.id)
    (lost,) = row["errors"]
    assert lost["type"] == "pgqueue.WorkerLost" and lost["attempt"] == 1
    assert lost["worker"] == str(w1_id)
    rescue_delay = secs(at(lost["at"]), t_kill)
    print(f"\nB01{variant}: J rescued {rescue_delay:.2f} s after SIGKILL "
          f"(pruner deleted {pruner.deleted} worker rows)")
    assert 0 < rescue_delay <= 15
    assert row["state"] == "completed" and row["attempt"] == 2
    s = starts(dsn, j.id)
    assert [(a, p) for a, p, _ in s] == [(1, w1.pid), (2, runner.pid)]
    if variant == "b":   # ownership is keyed on the process instance, never the name
        names = rows(dsn, "select id, name from pgqueue.workers where pid = %s", (runner.pid,))
        assert names and names[0][1] == "w1" and names[0][0] != w1_id
        assert row["worker_id"] == names[0][0]
    assert unowned_running(dsn, 5) == 0
    assert runner.proc.poll() is None


# -- B02: SIGTERM -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.faults
def test_b02_sigterm_hands_back_unfinished_jobs_in_one_transaction(dsn, capp, spawn):
    w1 = spawn(CASES, "-c", "4", "--shutdown-grace", "3", *HB)
    w1_id = worker_id_of(dsn, w1.pid)
    first_long = capp.tasks["cases.first_long"]
    ids = [first_long.enqueue(long=30, short=0.5).id for _ in range(4)]
    wait_until(lambda: scalar(dsn, "select count(*) from public.side where pid = %s",
                              (w1.pid,)) == 4, 15, 0.05, "4 jobs running on W1")
    w2 = spawn(CASES, "-c", "4", *HB)
    wait_workers(dsn, 2)
    t_term = db_now(dsn)
    w1.signal(signal.SIGTERM)
    assert w1.wait(15) == 0, w1.log()
    # no job is running without a live owner once W1 has exited
    assert scalar(dsn, "select count(*) from pgqueue.jobs where state = 'running' "
                       "and worker_id = %s", (w1_id,)) == 0
    assert unowned_running(dsn, 5) == 0
    wait_until(lambda: all(state_of(dsn, i) == "completed" for i in ids), 20, 0.05,
               "the 4 jobs completed on W2")
    handbacks = set()
    for i in ids:
        row = job(dsn, i)
        (entry,) = row["errors"]
        assert entry["type"] == "pgqueue.Interrupted" and entry["interrupted"] is True
        assert entry["attempt"] == 1 and entry["worker"] == str(w1_id)
        assert row["attempt"] == 1, "the interrupted attempt must not count"
        handbacks.add(entry["at"])
    # one transaction: the same now() in every entry
    assert len(handbacks) == 1
    handback = at(handbacks.pop())
    grace_used = secs(handback, t_term)
    restart = []
    for i in ids:
        (a1, p1, _), (a2, p2, started) = starts(dsn, i)
        assert (a1, p1, a2, p2) == (1, w1.pid, 1, w2.pid)
        restart.append(secs(started, handback))
    print(f"\nB02: handback {grace_used:.2f} s after SIGTERM (grace 3 s); W2 restarted the "
          f"jobs {min(restart):.2f}..{max(restart):.2f} s after the handback")
    assert 2.5 <= grace_used <= 5.0
    assert max(restart) <= 2.0
    # W1 started only its 4 jobs (claimed nothing after SIGTERM)
    assert scalar(dsn, "select count(*) from public.side where pid = %s and event = 'start'",
                  (w1.pid,)) == 4


@pytest.mark.faults
def test_b02_second_sigterm_skips_the_grace_period(dsn, capp, spawn):
    w1 = spawn(CASES, "-c", "2", "--shutdown-grace", "60", *HB)
    w1_id = worker_id_of(dsn, w1.pid)
    ids = [capp.tasks["cases.first_long"].enqueue(long=30).id for _ in range(2)]
    wait_until(lambda: scalar(dsn, "select count(*) from pgqueue.jobs where state = 'running'")
               == 2, 15, 0.05, "2 jobs running")
    t_term = db_now(dsn)
    w1.signal(signal.SIGTERM)
    time.sleep(0.5)
    w1.signal(signal.SIGTERM)
    try:
        code = w1.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("worker still running 10 s after a second SIGTERM:\n" + w1.log()[-6000:])
    assert code == 0, w1.log()
    for i in ids:
        row = job(dsn, i)
        assert row["state"] == "available" and row["attempt"] == 0 and row["worker_id"] is None
        (entry,) = row["errors"]
        assert entry["interrupted"] is True and entry["worker"] == str(w1_id)
        assert secs(at(entry["at"]), t_term) < 3.0


@pytest.mark.slow
@pytest.mark.faults
def test_b02_sigkill_during_grace_falls_back_to_rescue(dsn, capp, spawn):
    w1 = spawn(CASES, "-c", "2", "--shutdown-grace", "30", *HB)
    ids = [capp.tasks["cases.first_long"].enqueue(long=30, short=0.3).id for _ in range(2)]
    wait_until(lambda: scalar(dsn, "select count(*) from public.side where pid = %s",
                              (w1.pid,)) == 2, 15, 0.05, "2 jobs running on W1")
    w2 = spawn(CASES, "-c", "2", *HB)
    wait_workers(dsn, 2)
    w1.signal(signal.SIGTERM)
    time.sleep(1.0)
    w1.kill()
    t_kill = db_now(dsn)
    wait_until(lambda: all(state_of(dsn, i) == "completed" for i in ids), 20, 0.05,
               "jobs rescued and completed on W2")
    delays = []
    for i in ids:
        row = job(dsn, i)
        assert [e["type"] for e in row["errors"]] == ["pgqueue.WorkerLost"]
        delays.append(secs(at(row["errors"][0]["at"]), t_kill))
        assert [p for _, p, _ in starts(dsn, i)] == [w1.pid, w2.pid]
    print(f"\nB02 (SIGKILL in grace): rescued {max(delays):.2f} s after the kill")
    assert max(delays) <= 5 + 1 + 1.5


# -- B03: heartbeats and duplicates -------------------------------------------------

@pytest.mark.slow
def test_b03_long_job_runs_once_and_heartbeats_stay_within_half_the_stale_threshold(
        dsn, capp, spawn):
    """Shortened from 20 s / stale 6 s to 8 s / stale 3 s (same ratios)."""
    args = ("-c", "1", "--heartbeat-interval", "1", "--stale-after", "3")
    spawn(CASES, *args)
    spawn(CASES, *args)
    wait_workers(dsn, 2)
    j = capp.tasks["cases.tick"].enqueue(sleep=8.0)
    owner = wait_until(lambda: scalar(dsn, "select worker_id from pgqueue.jobs where id = %s "
                                           "and state = 'running'", (j.id,)), 15, 0.02,
                       "job running")
    with HeartbeatSampler(dsn, owner) as hb:
        wait_until(lambda: state_of(dsn, j.id) in TERMINAL, 20, 0.1, "job finished")
    row = job(dsn, j.id)
    assert row["state"] == "completed" and row["attempt"] == 1 and row["errors"] == []
    assert len(starts(dsn, j.id)) == 1
    gaps = hb.gaps()
    print(f"\nB03: {len(hb.values)} heartbeats while the job ran, max gap {max(gaps):.2f} s "
          f"(stale threshold 3 s)")
    assert len(gaps) >= 5
    assert max(gaps) <= 1.5


@pytest.mark.slow
def test_b03_500_short_jobs_on_two_workers_run_exactly_once(dsn, capp, spawn):
    spawn(CASES, "-c", "8")
    spawn(CASES, "-c", "8")
    wait_workers(dsn, 2)
    t0 = time.monotonic()
    assert capp.tasks["cases.tick"].enqueue_many([{"sleep": 0.01}] * 500) == 500
    wait_until(lambda: scalar(dsn, "select count(*) from pgqueue.jobs "
                                   "where state = 'completed'") == 500, 60, 0.1,
               "500 jobs completed")
    elapsed = time.monotonic() - t0
    total, distinct, workers = rows(dsn, "select count(*), count(distinct job_id), "
                                         "count(distinct pid) from public.side "
                                         "where event = 'start'")[0]
    print(f"\nB03: 500 jobs in {elapsed:.2f} s on {workers} workers")
    assert (total, distinct) == (500, 500)
    assert scalar(dsn, "select max(attempt) from pgqueue.jobs") == 1


# -- B06: notifications while the listener connection is busy ----------------------

class _SlowHealthListener(worker_mod._Conn):
    """The listener connection, with each health check taking 3 s (``pg_sleep(3)``)."""

    def __init__(self, w, role):
        super().__init__(w, role)
        self.in_check = threading.Event()
        self.check_end: dt.datetime | None = None
        self.checks = 0

    def get(self):
        return _HealthProxy(super().get(), self)


class _HealthProxy:
    def __init__(self, conn, owner):
        self._conn, self._owner = conn, owner

    def execute(self, query, *args, **kwargs):
        if query == "select 1":
            self._owner.checks += 1
            self._owner.in_check.set()
            cur = self._conn.execute("select clock_timestamp() from pg_sleep(3)")
            self._owner.check_end = cur.fetchone()[0]
            self._owner.in_check.clear()
            return cur
        return self._conn.execute(query, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.mark.slow
def test_b06_notifications_during_a_busy_listener_are_not_lost(dsn, capp):
    version = tuple(int(x) for x in psycopg.__version__.split(".")[:3])
    assert version >= (3, 2, 4), "psycopg >= 3.2.4 buffers notifies between generator runs"
    wapp = cases.make_app(dsn)
    w = pgqueue.Worker(wapp, concurrency=8, poll_interval=60.0, shutdown_grace=2.0)
    listener = _SlowHealthListener(w._connector, "listen")
    w._listener = listener
    received = []
    on_notify = w._on_notify

    def counting(n):
        if n.channel == "pgqueue_jobs":
            received.append(n.payload)
        on_notify(n)
    w._on_notify = counting
    wt = WorkerThread(w).start()
    try:
        # the worker is idle and has nothing due: only a notification can wake it now
        with capp.connection() as c:    # warm the producer's pool up
            c.execute("select 1")
        assert listener.in_check.wait(15), "no health check on the listener connection"
        tick = capp.tasks["cases.tick"]
        ids = [tick.enqueue().id for _ in range(5)]     # 5 transactions, 5 NOTIFYs
        assert listener.in_check.is_set(), "enqueued after the health check ended"
        wait_until(lambda: scalar(dsn, "select count(*) from public.side "
                                       "where event = 'start'") == 5, 10, 0.05,
                   "5 jobs started")
        check_end = listener.check_end
        latest = scalar(dsn, "select max(at) from public.side where event = 'start'")
        enqueued = scalar(dsn, "select max(created_at) from pgqueue.jobs")
        assert enqueued < check_end
        lag = secs(latest, check_end)
        print(f"\nB06: all 5 jobs started {lag:.3f} s after the 3 s health check ended; "
              f"{len(received)} notifications received")
        assert lag <= 1.0
        wait_until(lambda: all(state_of(dsn, i) == "completed" for i in ids), 10)
        assert len(received) == 5
    finally:
        wt.stop()
        wapp.close()


# -- B10: transactional enqueue ------------------------------------------------------

def _users(dsn: str) -> None:
    execute(dsn, "create table public.users (id integer primary key, name text not null)")


@pytest.mark.slow
def test_b10_job_starts_after_commit_and_within_a_second_of_it(dsn, capp, spawn):
    _users(dsn)
    spawn(CASES, "-c", "2", "--poll-interval", "60")
    wait_workers(dsn, 1)
    time.sleep(0.5)     # let the listener LISTEN
    welcome = capp.tasks["cases.welcome"]
    with psycopg.connect(dsn) as tx:
        tx.execute("insert into public.users values (42, 'ada')")
        j = welcome.using(connection=tx).enqueue(user_id=42)
        time.sleep(3)
        assert scalar(dsn, "select count(*) from pgqueue.jobs") == 0
        assert scalar(dsn, "select count(*) from public.side") == 0
        before_commit = tx.execute("select clock_timestamp()").fetchone()[0]
        tx.commit()
        after_commit = tx.execute("select clock_timestamp()").fetchone()[0]
    wait_until(lambda: starts(dsn, j.id), 10, 0.02, "job started")
    ((attempt, _, started),) = starts(dsn, j.id)
    latency = secs(started, after_commit)
    print(f"\nB10: job started {secs(started, before_commit):.3f} s after the commit began, "
          f"{latency:.3f} s after it returned (poll interval 60 s)")
    assert started > before_commit
    assert latency <= 1.0
    wait_until(lambda: state_of(dsn, j.id) == "completed", 10)
    row = job(dsn, j.id)
    assert row["attempt"] == 1 and row["errors"] == []
    assert scalar(dsn, "select note from public.side where job_id = %s", (j.id,)) == "ada"


@pytest.mark.slow
def test_b10_rolled_back_enqueue_never_runs(dsn, capp, spawn):
    _users(dsn)
    spawn(CASES, "-c", "2", "--poll-interval", "60")
    wait_workers(dsn, 1)
    time.sleep(0.5)
    welcome = capp.tasks["cases.welcome"]
    with psycopg.connect(dsn) as tx:
        tx.execute("insert into public.users values (42, 'ada')")
        welcome.using(connection=tx).enqueue(user_id=42)
        time.sleep(3)
        tx.rollback()
    time.sleep(2)
    assert scalar(dsn, "select count(*) from pgqueue.jobs") == 0
    assert scalar(dsn, "select count(*) from public.side") == 0
    # nothing stale is left acting on the worker: the next job wakes it promptly
    t = db_now(dsn)
    j = capp.tasks["cases.tick"].enqueue()
    wait_until(lambda: starts(dsn, j.id), 5, 0.02, "next job started")
    assert secs(starts(dsn, j.id)[0][2], t) <= 1.0


# -- B16: rich argument types, delay and run_at --------------------------------------

@pytest.mark.slow
def test_b16_rich_types_round_trip_and_both_schedules_start_5s_later(dsn, capp, spawn):
    spawn(CASES, "-c", "2", "--poll-interval", "60")
    wait_workers(dsn, 1)
    types = capp.tasks["cases.types"]
    paris = dt.datetime(2026, 11, 29, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
    values = (paris, dt.date(2026, 11, 29), Decimal("12.30"),
              uuid.UUID("12345678-1234-5678-1234-567812345678"))
    # a naive datetime and an unsupported type are refused before anything is written,
    # and the caller's transaction stays usable
    with psycopg.connect(dsn) as tx:
        tx.execute("insert into public.side (event, note) values ('marker', 'b16')")
        with pytest.raises(pgqueue.SerializationError, match="naive"):
            types.using(connection=tx).enqueue(dt.datetime(2026, 11, 29, 10, 0))
        with pytest.raises(TypeError, match="not supported"):
            types.using(connection=tx).enqueue({1, 2})
        with pytest.raises(pgqueue.EnqueueError, match="naive"):
            types.using(connection=tx, run_at=dt.datetime(2026, 11, 29, 10, 0))
        tx.commit()
    assert scalar(dsn, "select count(*) from pgqueue.jobs") == 0
    assert scalar(dsn, "select count(*) from public.side where event = 'marker'") == 1

    now = db_now(dsn)
    j1 = types.using(delay=dt.timedelta(seconds=5)).enqueue(*values)
    j2 = types.using(run_at=now + dt.timedelta(seconds=5)).enqueue(*values)
    wait_until(lambda: starts(dsn, j1.id) and starts(dsn, j2.id), 15, 0.05, "both started")
    expected = [
        {"type": "datetime.datetime", "aware": True, "utc": "2026-11-29T09:00:00+00:00"},
        {"type": "datetime.date", "str": "2026-11-29"},
        {"type": "decimal.Decimal", "str": "12.30"},
        {"type": "uuid.UUID", "str": "12345678-1234-5678-1234-567812345678"},
    ]
    delays = []
    for j in (j1, j2):
        row = job(dsn, j.id)
        ((_, _, started),) = starts(dsn, j.id)
        delays.append(secs(started, row["created_at"]))
        note = json.loads(scalar(dsn, "select note from public.side where job_id = %s",
                                 (j.id,)))
        for got, want in zip(note, expected, strict=True):
            assert {k: got[k] for k in want} == want
    print(f"\nB16: delay=5 s started after {delays[0]:.3f} s, run_at=+5 s after "
          f"{delays[1]:.3f} s")
    for d in delays:
        assert 4.0 <= d <= 6.0


@pytest.mark.slow
def test_b16_a_finished_job_does_not_make_the_worker_forget_the_next_due_time(
        dsn, capp, spawn):
    """Regression: a slot freed by a finished job woke the idle claim loop, which then
    slept the whole poll interval (60 s) instead of until the next scheduled job."""
    spawn(CASES, "-c", "2", "--poll-interval", "60")
    wait_workers(dsn, 1)
    tick = capp.tasks["cases.tick"]
    a = tick.using(delay=1.0).enqueue()
    b = tick.using(delay=2.5).enqueue()
    wait_until(lambda: starts(dsn, b.id), 10, 0.05, "the second scheduled job started")
    for j, due in ((a, 1.0), (b, 2.5)):
        late = secs(starts(dsn, j.id)[0][2], job(dsn, j.id)["created_at"]) - due
        assert -0.05 <= late <= 1.0, (j.id, late)


# -- B24: a pool smaller than the concurrency, and a database restart ---------------

@pytest.mark.slow
@pytest.mark.faults
def test_b24_small_pool_and_a_database_restart(dsn, capp, spawn, pg_server):
    w = spawn(CASES_POOL, "-c", "8")
    wait_workers(dsn, 1)
    pool_hold = capp.tasks["cases.pool_hold"]
    t0 = time.monotonic()
    # the first 10 wait at most 0.3 s for a pool connection on their first attempt
    ids = [pool_hold.enqueue(hold=1.0, pool_timeout=0.3).id for _ in range(10)]
    pool_hold.enqueue_many([{"hold": 1.0}] * 40)
    capp.close()
    wait_until(safe(lambda: scalar(dsn, "select count(*) from pgqueue.jobs "
                                        "where state = 'completed'") >= 6), 30, 0.1,
               "some jobs completed")
    assert scalar(dsn, "select count(*) from pgqueue.jobs where state = 'running'") > 0
    if pg_server.embedded is not None:
        pg_server.embedded.restart()
        how = "PostgreSQL restarted"
    else:
        rows(dsn, "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                  "where datname = current_database() and pid <> pg_backend_pid()")
        how = "all backends terminated"
    restarted = wait_until(safe(lambda: db_now(dsn)), 30, 0.1, "database back")

    def all_terminal():
        return scalar(dsn, "select count(*) from pgqueue.jobs where state in "
                           "('completed', 'discarded', 'cancelled')") == 50
    wait_until(safe(all_terminal), max(5.0, 60 - (time.monotonic() - t0)), 0.2,
               "all 50 jobs terminal within 60 s")
    elapsed = time.monotonic() - t0
    counts = dict(rows(dsn, "select state, count(*) from pgqueue.jobs group by state"))
    errors = [e["type"] for (errs,) in rows(dsn, "select errors from pgqueue.jobs")
              for e in errs]
    after = scalar(dsn, "select count(*) from public.side where event = 'start' and at > %s",
                   (restarted,))
    print(f"\nB24: 50 jobs terminal in {elapsed:.1f} s ({how} once): {counts}; "
          f"errors {sorted(set(errors))} x{len(errors)}; {after} starts after the restart")
    assert counts.get("running", 0) == 0
    assert any(t.endswith("PoolTimeout") for t in errors)
    assert after > 0
    assert counts.get("completed") == 50
    assert w.proc.poll() is None, "the worker crashed"
    hb = scalar(dsn, "select max(heartbeat_at) from pgqueue.workers")
    assert hb > restarted
    assert set(ids) <= {r[0] for r in rows(dsn, "select job_id from public.side")}


# -- B27: priority ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.faults
def test_b27_rescued_high_priority_job_runs_ahead_of_a_low_priority_stream(dsn, capp, spawn):
    w1 = spawn(CASES, "-c", "1", *HB)
    w1_id = worker_id_of(dsn, w1.pid)
    h = capp.tasks["cases.first_long"].using(priority=100).enqueue(long=60, short=0.2)
    wait_until(lambda: starts(dsn, h.id), 15, 0.05, "H running on W1")
    w2 = spawn(CASES, "-c", "1", *HB)
    wait_workers(dsn, 2)
    tick = capp.tasks["cases.tick"]
    stop = threading.Event()

    def produce():
        while not stop.wait(0.05):
            tick.enqueue(sleep=0.1)
    producer = threading.Thread(target=produce, daemon=True)
    w1.kill()
    producer.start()
    try:
        wait_until(lambda: state_of(dsn, h.id) == "completed", 25, 0.05, "H completed")
    finally:
        stop.set()
        producer.join(5)
    row = job(dsn, h.id)
    last_hb = scalar(dsn, "select heartbeat_at from pgqueue.workers where id = %s", (w1_id,))
    rescued = at(row["errors"][-1]["at"])
    (_, p1, _), (_, p2, second) = starts(dsn, h.id)
    assert (p1, p2) == (w1.pid, w2.pid)
    overtaken = scalar(dsn, "select count(*) from pgqueue.jobs where priority = 0 "
                            "and started_at > %s and started_at < %s",
                       (rescued, row["started_at"]))
    backlog = scalar(dsn, "select count(*) from pgqueue.jobs where priority = 0 "
                          "and created_at < %s and (started_at is null or started_at > %s)",
                     (rescued, rescued))
    wait = secs(second, last_hb)
    print(f"\nB27: H ran again {wait:.2f} s after W1's last heartbeat (stale 5 s), "
          f"{secs(second, rescued):.3f} s after its rescue, ahead of {backlog} waiting "
          f"priority-0 jobs ({overtaken} claimed in between)")
    assert backlog > 0
    assert overtaken <= 1
    assert wait <= 5 + 1 + 1.0


@pytest.mark.slow
def test_b27_priority_job_inserted_last_is_claimed_next(dsn, capp, spawn):
    tick = capp.tasks["cases.tick"]
    assert tick.enqueue_many([{}] * 1000) == 1000
    h1 = tick.using(priority=100).enqueue()
    spawn(CASES, "-c", "1")
    wait_until(lambda: state_of(dsn, h1.id) == "completed", 20, 0.05, "H1 completed")
    assert scalar(dsn, "select id from pgqueue.jobs where started_at is not null "
                       "order by started_at, id limit 1") == h1.id
    wait_until(lambda: scalar(dsn, "select count(*) from pgqueue.jobs "
                                   "where state = 'completed'") >= 100, 20, 0.05)
    # Hold the worker (one slot) inside a priority-0 job while H2 commits: its task
    # blocks on its first write to public.side, so no claim can start before H2 is
    # visible, however the machine schedules the two processes.
    with psycopg.connect(dsn) as gate:
        gate.execute("lock table public.side in share mode")
        wait_until(lambda: scalar(dsn, "select count(*) from pg_locks where not granted "
                                       "and relation = 'public.side'::regclass"),
                   20, 0.02, "the worker's running job blocked on public.side")
        with psycopg.connect(dsn) as c:
            h2 = tick.using(connection=c, priority=100).enqueue()
            committing = c.execute("select clock_timestamp()").fetchone()[0]
            c.commit()
        released = gate.execute("select clock_timestamp()").fetchone()[0]
        gate.commit()
    wait_until(lambda: state_of(dsn, h2.id) == "completed", 10, 0.02, "H2 completed")
    row = job(dsn, h2.id)
    # priority-0 jobs still waiting when H2 was claimed
    left = scalar(dsn, "select count(*) from pgqueue.jobs where priority = 0 "
                       "and (started_at is null or started_at > %s)", (row["started_at"],))
    # claims that began while H2 committed or later, before H2 was claimed: the job in
    # flight started before, so none may (at most one was the bound while this raced)
    overtaken = scalar(dsn, "select count(*) from pgqueue.jobs where priority = 0 "
                            "and started_at > %s and started_at < %s",
                       (committing, row["started_at"]))
    print(f"\nB27: H2 claimed {secs(row['started_at'], released):.3f} s after the worker's "
          f"slot was free again, ahead of {left} priority-0 jobs ({overtaken} claimed "
          f"in between)")
    assert left > 0
    assert overtaken == 0
    assert secs(row["started_at"], released) < 1.0


# -- B29: workers and migrate processes on an empty database -------------------------

@pytest.mark.slow
def test_b29_workers_wait_for_concurrent_first_migrations(empty_dsn, spawn):
    env = dict(os.environ, PGQUEUE_DSN=empty_dsn,
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    workers = [spawn(CASES, "-c", "2", "--schema-wait", "30", db=empty_dsn)
               for _ in range(8)]
    migrates = [subprocess.Popen([sys.executable, "-m", "pgqueue.cli", "migrate"], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for _ in range(2)]
    outs = [m.communicate(timeout=60)[0] for m in migrates]
    assert [m.returncode for m in migrates] == [0, 0], outs
    for out in outs:
        assert "already exists" not in out and "duplicate key" not in out
    wait_workers(empty_dsn, 8, timeout=15)
    assert rows(empty_dsn, "select version, count(*) from pgqueue.migrations "
                           "group by version having count(*) <> 1") == []
    assert scalar(empty_dsn, "select count(*) from pgqueue.migrations") == \
        len(pgqueue.migrate.migrations())
    execute(empty_dsn, SIDE_DDL)
    a = cases.make_app(empty_dsn)
    try:
        j = a.tasks["cases.tick"].enqueue()
        wait_until(lambda: state_of(empty_dsn, j.id) == "completed", 10, 0.05, "job done")
    finally:
        a.close()
    assert len(starts(empty_dsn, j.id)) == 1
    for w in workers:
        assert w.proc.poll() is None, w.log()
        log = w.log()
        assert "already exists" not in log and "duplicate key" not in log


# -- B30: lock and statement timeouts ----------------------------------------------

@pytest.mark.slow
def test_b30a_access_exclusive_lock_on_jobs_does_not_hang_the_worker(dsn, capp, spawn):
    """The lock is held 45 s, as in the case; the worker's lock timeout is 5 s. Each
    lock timeout is a warning and the claim queues for the lock again at once, so the
    jobs start the moment the lock goes, not after a backoff grown during the stall."""
    w = spawn(CASES, "-c", "4", "--poll-interval", "1", *HB)
    w_id = worker_id_of(dsn, w.pid)
    time.sleep(0.5)
    with psycopg.connect(dsn) as locker:
        locker.execute("lock table pgqueue.jobs in access exclusive mode")
        time.sleep(40)
        # Release just after a claim gave up on the lock: the moment a backoff grown
        # over the stall would keep the worker asleep (up to 5 s) with jobs waiting.
        seen = w.log().count("claim failed (canceling statement due to lock timeout")
        wait_until(lambda: w.log().count("claim failed (canceling statement due to lock "
                                         "timeout") > seen, 10, 0.01, "a claim timed out")
        time.sleep(0.2)
        locker.commit()
        released = locker.execute("select clock_timestamp()").fetchone()[0]
    n = capp.tasks["cases.tick"].enqueue_many([{}] * 10)
    assert n == 10
    wait_until(lambda: scalar(dsn, "select count(*) from pgqueue.jobs "
                                   "where state = 'completed'") == 10, 10, 0.05,
               "10 jobs completed")
    latest = scalar(dsn, "select max(at) from public.side where event = 'start'")
    lag = secs(latest, released)
    log = w.log()
    timeouts = log.count("lock timeout")
    print(f"\nB30a: the 10 jobs started within {lag:.3f} s of the lock release; "
          f"{timeouts} lock-timeout log lines during the 45 s lock")
    assert w.proc.poll() is None, log
    assert timeouts >= 8, log         # at least one every 5 s
    assert lag <= 1.0
    assert scalar(dsn, "select count(*) from pgqueue.jobs where state = 'running'") == 0
    assert scalar(dsn, "select count(*) from public.side where event = 'start'") == 10
    # the worker is alive and heartbeating again
    wait_until(lambda: scalar(dsn, "select heartbeat_at > %s from pgqueue.workers "
                                   "where id = %s", (released, w_id)), 5, 0.1)


@pytest.mark.slow
def test_b30a_jobs_running_through_the_lock_are_not_rescued_from_a_live_worker(
        dsn, capp, spawn):
    """The lock also blocks heartbeats (they read pgqueue.jobs) for longer than the stale
    threshold. Once it is released, no worker may take the running jobs of a worker that
    was only blocked like itself: each job runs once."""
    w1 = spawn(CASES, "-c", "2", *HB)
    worker_id_of(dsn, w1.pid)
    ids = [capp.tasks["cases.first_long"].enqueue(long=16, short=0.2).id for _ in range(2)]
    wait_until(lambda: scalar(dsn, "select count(*) from public.side where pid = %s",
                              (w1.pid,)) == 2, 15, 0.05, "2 jobs running on W1")
    w2 = spawn(CASES, "-c", "2", *HB)
    wait_workers(dsn, 2)
    time.sleep(1.0)
    with psycopg.connect(dsn) as locker:
        locker.execute("lock table pgqueue.jobs in access exclusive mode")
        time.sleep(12)      # > stale threshold (5 s)
        locker.commit()
    wait_until(lambda: all(state_of(dsn, i) in TERMINAL for i in ids), 25, 0.1,
               "jobs finished")
    for i in ids:
        row = job(dsn, i)
        assert [p for _, p, _ in starts(dsn, i)] == [w1.pid], row["errors"]
        assert row["state"] == "completed" and row["attempt"] == 1 and row["errors"] == []
    assert w1.proc.poll() is None and w2.proc.poll() is None


@pytest.fixture
def limited_role(dsn, pg_server):
    """A login role with statement_timeout=1s and idle_in_transaction_session_timeout=2s
    and the rights a worker needs; yields a DSN that connects as it."""
    role = f"pgq_worker_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as c:
        for stmt in (
            f"create role {role} login",
            f"alter role {role} set statement_timeout = '1s'",
            f"alter role {role} set idle_in_transaction_session_timeout = '2s'",
            f"grant usage on schema pgqueue to {role}",
            f"grant select, insert, update, delete on all tables in schema pgqueue to {role}",
            f"grant usage, select on all sequences in schema pgqueue to {role}",
            f"grant execute on all functions in schema pgqueue to {role}",
            f"grant select, insert on public.side to {role}",
            f"grant usage, select on sequence public.side_id_seq to {role}",
        ):
            c.execute(stmt)
    params = conninfo_to_dict(dsn)
    params["user"] = role
    params.pop("password", None)
    yield role, make_conninfo(**params)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                  (role,))
        c.execute(f"drop owned by {role}")
    with pg_server.admin() as c:
        for _ in range(50):
            try:
                c.execute(f"drop role if exists {role}")
                break
            except psycopg.errors.DependentObjectsStillInUse:
                time.sleep(0.1)


@pytest.mark.slow
def test_b30b_role_timeouts_fail_the_job_not_the_worker(dsn, capp, spawn, limited_role):
    role, role_dsn = limited_role
    w = spawn(CASES, "-c", "2", *HB, db=role_dsn)
    w_id = worker_id_of(dsn, w.pid)

    def backends():
        return set(rows(dsn, "select pid from pg_stat_activity where usename = %s "
                             "and application_name like 'pgqueue-worker:%%'", (role,)))
    wait_until(lambda: len(backends()) >= 3, 10, 0.05, "worker connections")
    before = backends()
    with HeartbeatSampler(dsn, w_id) as hb, contextlib.ExitStack() as stack:
        stack.callback(w.kill)
        slow = capp.tasks["cases.slow_query"].enqueue(seconds=3)
        ok = capp.tasks["cases.tick"].enqueue()
        wait_until(lambda: state_of(dsn, slow.id) in TERMINAL, 20, 0.05, "slow job finished")
        wait_until(lambda: state_of(dsn, ok.id) == "completed", 10, 0.05, "quick job done")
        time.sleep(2.5)     # past idle_in_transaction_session_timeout
        after = backends()
        alive = w.proc.poll() is None
        log = w.log()
    row = job(dsn, slow.id)
    kinds = [e["type"] for e in row["errors"]]
    gaps = hb.gaps()
    print(f"\nB30b: slow job {row['state']} after {row['attempt']} attempts {kinds}; "
          f"{len(hb.values)} heartbeats, max gap {max(gaps):.2f} s")
    assert row["state"] == "discarded" and row["attempt"] == 2
    assert kinds == ["psycopg.errors.QueryCanceled"] * 2
    assert scalar(dsn, "select count(*) from public.side where job_id = %s "
                       "and event = 'end'", (slow.id,)) == 0
    assert len(starts(dsn, slow.id)) == 2
    assert alive, log
    assert max(gaps) <= 2.0 and len(gaps) >= 4
    # no worker session was cancelled, killed or replaced
    assert before <= after
    for bad in ("heartbeat failed", "claim failed", "recording", "listener connection lost"):
        assert bad not in log, log
