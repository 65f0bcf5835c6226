"""A worker frozen with SIGSTOP (a long GC pause, a throttled container, a suspended VM).

Its heartbeats stop, so its job is rescued and run again by another worker. When it is
thawed with SIGCONT, its stale attempt finishes too, but the attempt token fences its
outcome out: the job keeps the newer attempt's result (DESIGN §2, guarantee 3).
"""

from __future__ import annotations

import signal

import psycopg
import pytest

from ..conftest import wait_until
from .helpers import WORKER, Fleet, rows, side, state_of, worker_id_of

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_frozen_worker_is_rescued_and_its_late_outcome_is_fenced_out(dsn, fapp,
                                                                      spawn_worker):
    fleet = Fleet(spawn_worker, dsn, "-c", "1", "--heartbeat-interval", "1",
                  "--stale-after", "3", "--poll-interval", "30")
    (w1,) = fleet.start(1)
    w1_id = worker_id_of(dsn, w1.pid)
    j = fapp.tasks["faults.work"].enqueue(ms=5000)
    wait_until(lambda: side(dsn, j.id), 10, 0.02, "attempt 1 started on W1")
    (w2,) = fleet.start(1)
    w2_id = worker_id_of(dsn, w2.pid)
    fleet.stop(w1)
    try:
        wait_until(lambda: len(side(dsn, j.id)) == 2, 15, 0.05, "attempt 2 started on W2")
        wait_until(lambda: state_of(dsn, j.id) == "completed", 15, 0.05, "attempt 2 done")
    finally:
        fleet.cont(w1)
    # W1 wakes up, finishes its stale attempt and tries to record it
    wait_until(lambda: len(side(dsn, j.id, "end")) == 2, 15, 0.05, "W1's stale attempt ended")
    wait_until(lambda: rows(dsn, "select heartbeat_at > now() - interval '2 s' from "
                                 "pgqueue.workers where id = %s", (w1_id,)) == [(True,)],
               10, 0.1, "W1 heartbeating again")
    (state, attempt, owner, result), = rows(
        dsn, "select state, attempt, worker_id, result from pgqueue.jobs where id = %s",
        (j.id,))
    starts = [(a, wk) for _, a, wk, _, _, _ in side(dsn, j.id)]
    print(f"\nSIGSTOP: attempts {starts}; final state {state}, attempt {attempt}, "
          f"result {result} (W1's late outcome fenced out)")
    assert starts == [(1, str(w1_id)), (2, str(w2_id))]
    assert (state, attempt, owner) == ("completed", 2, w2_id)
    assert result == 2
    fleet.assert_alive()


def test_a_connection_lost_during_the_shutdown_grace_still_hands_jobs_back(dsn, fapp,
                                                                          spawn_worker):
    """The hand-back ran once on the claim connection: cut during the grace (a failover,
    a pooler restart), it failed, and the job waited for a rescue that counted its
    attempt (with max_attempts=1: discarded). It now reconnects and hands back."""
    fleet = Fleet(spawn_worker, dsn, "-c", "1", "--heartbeat-interval", "1",
                  "--stale-after", "30", "--shutdown-grace", "1.5")
    (w,) = fleet.start(1)
    worker_id_of(dsn, w.pid)
    j = fapp.tasks["faults.work"].using(max_attempts=1).enqueue(ms=20000)
    fapp.close()
    wait_until(lambda: side(dsn, j.id), 15, 0.02, "the job started")
    w.signal(signal.SIGTERM)
    wait_until(lambda: " stopping: 1 jobs running" in w.log(), 10, 0.02,
               "the worker began its shutdown grace")
    cut = rows(dsn, "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid() "
                    "and backend_type = 'client backend'")
    assert cut and all(ok for (ok,) in cut)
    assert w.wait(30) == 0, w.log()
    (state, attempt, errors), = rows(dsn, "select state, attempt, errors from pgqueue.jobs "
                                          "where id = %s", (j.id,))
    assert (state, attempt) == ("available", 0), w.log()
    assert [e["type"] for e in errors] == ["pgqueue.Interrupted"], errors
    assert "handed back 1 unfinished jobs" in w.log()


def test_a_thawed_worker_stops_the_attempt_a_peer_took_over(dsn, fapp, spawn_worker):
    """SIGSTOP until the job is rescued and running on W2, then SIGCONT: W1's attempt
    was never told, and ran on for its full length beside attempt 2 (its outcome fenced
    out). W1's first heartbeat after the gap now finds the job is no longer its own and
    cancels its attempt."""
    fleet = Fleet(spawn_worker, dsn, "-c", "1", "--heartbeat-interval", "1",
                  "--stale-after", "3", "--poll-interval", "30")
    (w1,) = fleet.start(1)
    worker_id_of(dsn, w1.pid)
    j = fapp.tasks["faults.cancellable"].enqueue(seconds=60)
    fapp.close()
    wait_until(lambda: side(dsn, j.id), 10, 0.02, "attempt 1 started on W1")
    (w2,) = fleet.start(1)
    worker_id_of(dsn, w2.pid)
    fleet.stop(w1)
    try:
        wait_until(lambda: len(side(dsn, j.id)) == 2, 15, 0.05, "attempt 2 started on W2")
    finally:
        fleet.cont(w1)
    wait_until(lambda: side(dsn, j.id, "cancel-seen"), 10, 0.05,
               "W1's stale attempt told to stop")
    seen = side(dsn, j.id, "cancel-seen")
    assert [(a, wk) for _, a, wk, _, _, _ in seen] == [(1, side(dsn, j.id)[0][2])]
    assert "was rescued while this worker was paused or cut off" in w1.log()
    (state, attempt), = rows(dsn, "select state, attempt from pgqueue.jobs where id = %s",
                             (j.id,))
    assert (state, attempt) == ("running", 2)      # attempt 2 runs on, untouched
    fleet.assert_alive()


def test_an_attempt_claimed_back_by_its_own_worker_is_stopped(dsn, fapp, spawn_worker):
    """W1's heartbeat is held (a lock on its row) past stale_after while its claims go
    on: W2 rescues W1's job, and W1, the only worker of that queue, claims it back as
    attempt 2. The record of attempt 2 replaced attempt 1's, so nothing ever told
    attempt 1: it ran on beside attempt 2 in the same worker, holding a slot."""
    common = ("--heartbeat-interval", "1", "--stale-after", "3", "--poll-interval", "1")
    w1 = spawn_worker(WORKER, "-q", "default", "-c", "4", *common)
    w1_id = worker_id_of(dsn, w1.pid)
    w2 = spawn_worker(WORKER, "-q", "other", "-c", "1", *common)
    worker_id_of(dsn, w2.pid)
    j = fapp.tasks["faults.cancellable"].enqueue(seconds=60)
    fapp.close()
    wait_until(lambda: side(dsn, j.id), 10, 0.02, "attempt 1 started on W1")
    with psycopg.connect(dsn) as hold:          # W1's heartbeats wait on this lock
        hold.execute("select 1 from pgqueue.workers where id = %s for update", (w1_id,))
        wait_until(lambda: len(side(dsn, j.id)) == 2, 20, 0.05,
                   "attempt 2 started (rescued by W2, claimed back by W1)")
        hold.rollback()
    starts = [(a, wk) for _, a, wk, _, _, _ in side(dsn, j.id)]
    assert starts == [(1, str(w1_id)), (2, str(w1_id))]
    wait_until(lambda: side(dsn, j.id, "cancel-seen"), 10, 0.05, "attempt 1 told to stop")
    assert [a for _, a, _, _, _, _ in side(dsn, j.id, "cancel-seen")] == [1]
    assert "was claimed again (attempt 2) while it still ran here" in w1.log()
    (state, attempt), = rows(dsn, "select state, attempt from pgqueue.jobs where id = %s",
                             (j.id,))
    assert (state, attempt) == ("running", 2)
