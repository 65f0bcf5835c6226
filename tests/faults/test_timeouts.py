"""Timeouts (case B30): held locks, lost claim replies, timeouts set on the worker's role.

Every statement a worker runs for itself is bounded on the server (``lock_timeout``,
``statement_timeout``; in poll-only mode those of the role) and on the client (the
watchdog cuts a connection whose round trip takes longer than ``IO_TIMEOUT``). A claim
either commits fully or not at all, and a claim whose reply never arrived is handed
back (``release_unknown``) before the worker claims again.
"""

from __future__ import annotations

import threading
import time

import pytest

from pgqueue import worker as worker_mod

from ..conftest import wait_until
from .app import make_app
from .helpers import (
    Fleet,
    db_now,
    role_with_timeouts,
    rows,
    safe,
    scalar,
    secs,
    side,
    state_of,
    table_lock,
    worker_id_of,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

HB = ("--heartbeat-interval", "1", "--stale-after", "3")
CLAIM_COLUMNS = 13      # the columns of a row returned by the worker's claim statement


def test_lock_longer_than_the_stale_threshold_never_runs_a_job_twice(dsn, fapp,
                                                                      spawn_worker):
    """An ACCESS EXCLUSIVE lock on the jobs table held for 6 s (twice the stale
    threshold) while a job runs: the workers stall and log, nobody's job is rescued
    from under it, and work resumes as soon as the lock goes."""
    fleet = Fleet(spawn_worker, dsn, "-c", "2", "--poll-interval", "30", *HB)
    procs = fleet.start(2)
    for p in procs:
        worker_id_of(dsn, p.pid)
    work = fapp.tasks["faults.work"]
    j = work.enqueue(ms=9000)
    wait_until(lambda: side(dsn, j.id), 10, 0.02, "the long job started")
    queued: list = []
    with table_lock(dsn) as locker:
        locked_at = locker.execute("select clock_timestamp()").fetchone()[0]
        # a producer blocked by the lock: its job commits once the lock is gone
        t = threading.Thread(target=lambda: queued.append(work.enqueue(ms=1)), daemon=True)
        t.start()
        time.sleep(6.0)
    released = db_now(dsn)
    t.join(10)
    (k,) = queued
    wait_until(lambda: state_of(dsn, k.id) == "completed", 10, 0.02, "the job enqueued "
               "during the lock ran")
    lag = secs(side(dsn, k.id)[0][5], released)
    wait_until(lambda: state_of(dsn, j.id) == "completed", 15, 0.05, "the long job done")
    runs = side(dsn, j.id)
    logs = "".join(p.log() for p in procs)
    stalls = sum(1 for line in logs.splitlines() if "WARNING" in line and
                 ("timeout" in line or "failed" in line))
    print(f"\nlock held {secs(released, locked_at):.1f} s over a running job: it ran "
          f"{len(runs)} time(s); {stalls} warnings logged; a job enqueued during the lock "
          f"started {lag:.3f} s after the release")
    assert len(runs) == 1
    assert scalar(dsn, "select attempt from pgqueue.jobs where id = %s", (j.id,)) == 1
    assert stalls >= 1
    assert lag <= 2.0
    fleet.assert_alive()


def test_claim_whose_reply_is_lost_leaves_nothing_claimed_and_unworked(
        dsn, proxy, start_worker, monkeypatch):
    """The proxy swallows the server's replies on the claim connection from the first
    claimed row on: the claim commits on the server but the worker never sees the rows.
    The watchdog cuts the connection after IO_TIMEOUT (2 s here), and the worker hands
    the jobs back before claiming again: each runs once, attempt 1."""
    monkeypatch.setattr(worker_mod, "IO_TIMEOUT", 2.0)
    wapp = make_app(proxy.client_dsn())
    w = start_worker(wapp, concurrency=4, poll_interval=30, heartbeat_interval=1,
                     stale_after=3)
    wait_until(lambda: proxy.matching("pgqueue-worker:claim"), 10, 0.05, "claim connection")
    # armed on rows of the claim's shape (13 columns): an empty claim or a due-time
    # query that runs first still gets its reply, so the lost reply is one with the jobs
    assert proxy.mute_at_rows("pgqueue-worker:claim", CLAIM_COLUMNS) == 1
    papp = make_app(dsn)
    with papp.pool.connection() as conn, conn.transaction():
        ids = [papp.tasks["faults.work"].using(connection=conn).enqueue(ms=1).id
               for _ in range(3)]
    papp.close()
    # the claim committed on the server: owned by the worker, which never got them
    wait_until(lambda: scalar(dsn, "select count(*) from pgqueue.jobs where state = "
                                   "'running'") > 0, 5, 0.02, "the swallowed claim")
    stuck_since = db_now(dsn)
    wait_until(lambda: all(state_of(dsn, i) == "completed" for i in ids), 15, 0.05,
               "the jobs ran after all")
    fixed = max(side(dsn, i)[0][5] for i in ids)
    per_job = rows(dsn, "select j.id, j.attempt, count(s.*) from pgqueue.jobs j left join "
                        "public.side s on s.job_id = j.id and s.event = 'start' "
                        "group by j.id, j.attempt order by j.id")
    print(f"\nclaim reply lost: jobs released and run {secs(fixed, stuck_since):.2f} s "
          f"later; (id, attempt, executions) = {per_job}")
    assert per_job == [(i, 1, 1) for i in ids]
    assert w.worker.stats["claimed"] >= 3
    wapp.close()


def test_poll_only_worker_is_bounded_by_its_role_settings(dsn, fapp, spawn_worker,
                                                          pg_server):
    """Poll-only mode sets no session settings (they would leak through a transaction
    pooler): the role's ``statement_timeout = 1s`` and
    ``idle_in_transaction_session_timeout = 2s`` bound it. A 4 s ACCESS EXCLUSIVE lock
    cancels its claims; it logs, keeps its sessions and claims right after."""
    with role_with_timeouts(pg_server.admin_dsn, dsn, statement_timeout="1s",
                            idle_in_transaction_session_timeout="2s",
                            lock_timeout="0") as role_dsn:
        fleet = Fleet(spawn_worker, dsn, "-c", "2", "--no-listen", "--poll-interval", "0.5",
                      *HB, db=role_dsn)
        (w,) = fleet.start(1)
        wid = worker_id_of(dsn, w.pid)
        first = fapp.tasks["faults.work"].enqueue(ms=1)
        wait_until(lambda: state_of(dsn, first.id) == "completed", 10, 0.05)
        with table_lock(dsn):
            time.sleep(4.0)
        released = db_now(dsn)
        j = fapp.tasks["faults.work"].enqueue(ms=1)
        wait_until(lambda: state_of(dsn, j.id) == "completed", 10, 0.05,
                   "a job after the lock")
        lag = secs(side(dsn, j.id)[0][5], released)
        wait_until(safe(lambda: scalar(dsn, "select heartbeat_at > %s from pgqueue.workers "
                                            "where id = %s", (released, wid))), 5, 0.05)
        log = w.log()
        cancels = log.count("statement timeout")
        print(f"\npoll-only worker under role timeouts: {cancels} statement-timeout "
              f"warnings during a 4 s lock; next job started {lag:.2f} s after the release")
        assert cancels >= 1, log[-3000:]
        assert lag <= 2.0
        assert scalar(dsn, "select count(*) from pgqueue.jobs where state = 'running'") == 0
        fleet.assert_alive()
        assert fleet.term(w) == 0
