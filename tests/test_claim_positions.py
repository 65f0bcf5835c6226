"""Claiming while an old snapshot keeps vacuum from cleaning up (case B23).

Every claimed job leaves a dead entry in the claim index (and every finished attempt
one in the index of running jobs). While a REPEATABLE READ transaction stays open,
vacuum cannot remove them. These tests count the index entries that the worker's own
statements read, with the server's per-transaction counters
(``pg_stat_get_xact_tuples_returned`` of an index: entries it returned to scans in the
statement), so they do not depend on timing: a claim that starts at its
positions, a completion and a heartbeat read a few entries, while a claim from the
start of the queue reads past every dead one.

The worker tests check the other side of positions: nothing waits behind one. A job
handed back or rescued keeps its place in line, a job enqueued with a past run_at goes
where it belongs, and a job whose transaction committed long after its run_at is
still claimed within the position-free claim each worker runs every second.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
import uuid

import psycopg
import pytest

from pgqueue._positions import ClaimPositions
from pgqueue._sql import q

from .apps import cases
from .conftest import wait_until
from .faults.helpers import rows, safe, scalar, secs

CASES = "tests.apps.cases"
CHURN = 3000


def _read(c: psycopg.Connection, index: str, sql: str, params: dict) -> tuple[list, int]:
    """Run ``sql`` in its own transaction; (rows, entries that ``index`` returned).

    The counter holds what the backend has not reported yet, which can include earlier
    transactions: the difference across the statement is what it read."""
    count = "select pg_stat_get_xact_tuples_returned(%s::regclass)"
    with c.transaction():
        before = c.execute(count, (f"pgqueue.{index}",)).fetchone()[0]
        out = c.execute(sql, params).fetchall()
        after = c.execute(count, (f"pgqueue.{index}",)).fetchone()[0]
    return out, after - before


@pytest.fixture
def pinned(dsn):
    """A REPEATABLE READ transaction that holds its snapshot (and the xmin horizon)."""
    holder = psycopg.connect(dsn)
    holder.execute("begin isolation level repeatable read")
    holder.execute("select count(*) from pg_class").fetchone()
    yield holder
    holder.rollback()
    holder.close()


@pytest.mark.faults
def test_b23_worker_statements_read_past_dead_entries_kept_by_an_old_snapshot(dsn, pinned):
    wid = uuid.uuid4()
    positions = ClaimPositions(refresh=3600)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select pgqueue.heartbeat(%s, 'positions', 'test', 0, null, array['noop'], 8)",
                  (wid,)).fetchall()
        c.execute("insert into pgqueue.jobs (task, queue, state, run_at) "
                  "select 'noop', 'pos', 'available', now() - interval '1 minute' "
                  "from generate_series(1, %s)", (CHURN,))

        def claim(batch: int, use_positions: bool = True) -> tuple[list, int]:
            params = positions.params() if use_positions else ClaimPositions().params()
            got, n = _read(c, "jobs_claim_idx", q("claim"),
                           {"worker_id": wid, "queues": ["pos"], "tasks": None,
                            "batch": batch, "task_max_attempts": None,
                            "task_timeouts": None, "task_concurrency": None, **params})
            if use_positions:
                positions.taken(got, batch)
            return got, n

        def complete(got: list) -> int:
            _, n = _read(c, "jobs_running_idx", q("complete"),
                         {"worker_id": wid, "ids": [r[0] for r in got],
                          "attempts": [r[5] for r in got], "results": ["null"] * len(got)})
            return n

        done = 0
        while True:
            got, _ = claim(100)
            if not got:
                break
            complete(got)
            done += len(got)
        assert done == CHURN
        assert scalar(dsn, "select count(*) from pgqueue.jobs where queue = 'pos' "
                           "and state = 'completed'") == CHURN
        c.execute("insert into pgqueue.jobs (task, queue, state) "
                  "select 'noop', 'pos', 'available' from generate_series(1, 20)")

        got, with_positions = claim(5)
        assert len(got) == 5
        completed_reads = complete(got)
        _, heartbeat_reads = _read(
            c, "jobs_cancel_requested_idx",
            "select pgqueue.heartbeat(%(w)s, 'positions', 'test', 0, null, array['noop'], 8)",
            {"w": wid})
        got2, from_start = claim(5, use_positions=False)
        assert len(got2) == 5 and not {r[0] for r in got} & {r[0] for r in got2}
        print(f"\nB23: {CHURN} dead claim-index entries; a claim at its positions read "
              f"{with_positions} entries, one from the start of the queue "
              f"{from_start}; completing 5 jobs read {completed_reads} entries of the "
              f"running index; a heartbeat {heartbeat_reads}")
    # the old snapshot keeps every dead entry, and a claim from the start reads them all
    assert from_start >= CHURN
    assert with_positions <= 200
    assert completed_reads <= 20
    assert heartbeat_reads <= 5


@pytest.mark.faults
def test_positions_never_skip_a_higher_priority_or_an_announced_earlier_job(dsn, pinned):
    """Positions are per level: a job at a level above is claimed first. A job placed
    behind a position (a past run_at) is announced on pgqueue_requeued, and once the
    claimer forgets that queue's positions it is claimed in strict claim order."""
    wid = uuid.uuid4()
    positions = ClaimPositions(refresh=3600)
    with psycopg.connect(dsn, autocommit=True) as c, \
            psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgqueue_requeued")
        c.execute("insert into pgqueue.jobs (task, queue, state, priority, run_at) "
                  "select 'noop', 'pos', 'available', 0, now() - interval '1 minute' "
                  "from generate_series(1, 50)")

        def claim(batch: int) -> list:
            got = c.execute(q("claim"), {"worker_id": wid, "queues": ["pos"], "tasks": None,
                                         "batch": batch, "task_max_attempts": None,
                                         "task_timeouts": None, "task_concurrency": None,
                                         **positions.params()}).fetchall()
            positions.taken(got, batch)
            return [r[0] for r in got]

        # a past run_at is announced (and a claimer without positions needs nothing)
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pgqueue_requeued", "pos")]
        assert len(claim(10)) == 10 and len(claim(10)) == 10
        high = c.execute("insert into pgqueue.jobs (task, queue, state, priority) values "
                         "('noop', 'pos', 'available', 5) returning id").fetchone()[0]
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []   # run_at now()
        assert claim(1) == [high]
        early, low = (r[0] for r in c.execute(
            "insert into pgqueue.jobs (task, queue, state, priority, run_at) values "
            "('noop', 'pos', 'available', 0, now() - interval '2 minutes'), "
            "('noop', 'pos', 'available', -3, now() - interval '3 minutes') "
            "returning id").fetchall())
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pgqueue_requeued", "pos")]
        positions.forget(notes[0].payload)       # what the worker's listener does
        assert early in claim(2)       # (claim returns its rows in no particular order)
        rest = claim(29)
        assert len(rest) == 29 and low not in rest
        assert claim(10) == [low]


# -- workers: nothing waits behind a position ----------------------------------------

@pytest.fixture
def capp(dsn):
    a = cases.make_app(dsn)
    yield a
    a.close()


class Stream:
    """Enqueues ``cases.tick`` every ``every`` s, so the worker keeps claiming (and
    keeps positions) at priority 0 of the default queue."""

    def __init__(self, app, every: float = 0.05, sleep: float = 0.0):
        self.tick = app.tasks["cases.tick"]
        self.every, self.sleep = every, sleep
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick.enqueue(sleep=self.sleep)

    def __enter__(self) -> Stream:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)


def _overtaken(dsn: str, after, job_id: int) -> int:
    """Stream jobs claimed after ``after`` and before ``job_id`` was."""
    return scalar(dsn, "select count(*) from pgqueue.jobs where task = 'cases.tick' "
                       "and started_at > %s and started_at < "
                       "(select started_at from pgqueue.jobs where id = %s)", (after, job_id))


def _wait_claiming(dsn: str, n: int = 30) -> None:
    wait_until(safe(lambda: scalar(dsn, "select count(*) from pgqueue.jobs "
                                        "where task = 'cases.tick' and state = 'completed'")
                    >= n), 20, 0.05, f"{n} stream jobs done")


@pytest.mark.slow
def test_a_job_enqueued_with_a_past_run_at_is_claimed_next(dsn, capp, spawn_worker, pinned):
    spawn_worker(CASES, "-c", "1")
    with Stream(capp):
        _wait_claiming(dsn)
        with psycopg.connect(dsn) as c:
            late = capp.tasks["cases.tick"].using(
                connection=c, run_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
            ).enqueue()
            committing = c.execute("select clock_timestamp()").fetchone()[0]
            c.commit()
        wait_until(lambda: scalar(dsn, "select state from pgqueue.jobs where id = %s",
                                  (late.id,)) == "completed", 10, 0.02)
        overtaken = _overtaken(dsn, committing, late.id)
    started = scalar(dsn, "select started_at from pgqueue.jobs where id = %s", (late.id,))
    print(f"\npast run_at: claimed {secs(started, committing):.3f} s after commit, "
          f"{overtaken} stream jobs claimed in between")
    assert overtaken <= 1


@pytest.mark.slow
def test_a_job_committed_long_after_its_run_at_is_claimed_within_a_second(
        dsn, capp, spawn_worker, pinned):
    """The transaction enqueues, then stays open 2.5 s: the job's run_at (its
    transaction's start) is behind every position by the time it commits."""
    spawn_worker(CASES, "-c", "2")
    with Stream(capp):
        _wait_claiming(dsn)
        with psycopg.connect(dsn) as c:
            late = capp.tasks["cases.tick"].using(connection=c).enqueue()
            time.sleep(2.5)
            committing = c.execute("select clock_timestamp()").fetchone()[0]
            c.commit()
        wait_until(lambda: scalar(dsn, "select state from pgqueue.jobs where id = %s",
                                  (late.id,)) == "completed", 10, 0.02)
    started = scalar(dsn, "select started_at from pgqueue.jobs where id = %s", (late.id,))
    waited = secs(started, committing)
    print(f"\nlate commit: claimed {waited:.3f} s after its commit")
    assert waited < 1.0 + 0.5


@pytest.mark.slow
def test_a_handed_back_job_keeps_its_place_ahead_of_newer_jobs(dsn, capp, spawn_worker):
    """SIGTERM hands a running job back with its old run_at; the other worker, which
    holds positions past it, claims it next."""
    first = capp.tasks["cases.first_long"].enqueue(long=60, short=0.1)
    w1 = spawn_worker(CASES, "-c", "1", "--shutdown-grace", "0.5")
    wait_until(lambda: rows(dsn, "select 1 from public.side where job_id = %s", (first.id,)),
               15, 0.05, "first job started on W1")
    spawn_worker(CASES, "-c", "1")
    with Stream(capp, every=0.05, sleep=0.02):
        _wait_claiming(dsn)
        w1.signal(signal.SIGTERM)
        wait_until(lambda: scalar(dsn, "select jsonb_array_length(errors) from pgqueue.jobs "
                                       "where id = %s", (first.id,)) >= 1,
                   15, 0.02, "first job handed back")
        handed = scalar(dsn, "select max(e->>'at') from pgqueue.jobs j, "
                             "jsonb_array_elements(j.errors) e where j.id = %s", (first.id,))
        wait_until(lambda: scalar(dsn, "select state from pgqueue.jobs where id = %s",
                                  (first.id,)) == "completed", 15, 0.02, "first completed")
        overtaken = _overtaken(dsn, handed, first.id)
    print(f"\nhand-back: {overtaken} newer stream jobs claimed before the handed-back job")
    assert overtaken <= 1


def test_slow_position_free_claims_are_spaced_out_to_a_share_of_the_time():
    """A soak with an old snapshot held: each worker's once-a-second claim from the start
    read every dead entry (about 100 ms at 100,000), and four workers doing that
    throttled the whole queue (500 jobs/s offered, 200/s done). The spacing now grows
    with the cost: at most 2 % of the time, at least one every 15 s."""
    from datetime import datetime, timezone
    p = ClaimPositions(refresh=1.0)
    row = (1, "q", "t", "[]", "{}", 1, 20, 0, datetime(2026, 12, 6, tzinfo=timezone.utc))

    def full_at(now: float) -> bool:
        return p.params(now=now)["position_queues"] is None

    assert full_at(0.0)                 # no position yet
    p.taken([row], 1, took=0.005)       # fast: the next one a second later
    assert not full_at(0.5) and full_at(1.0)
    p.taken([row], 1, took=0.1)         # 100 ms: 5 s later
    assert not full_at(5.9)
    p.taken([row], 1, took=2.0)         # a slow claim from positions changes nothing
    assert full_at(6.0)
    p.taken([row], 1, took=5.0)         # capped at 15 s
    assert not full_at(20.9) and full_at(21.0)
