"""Listener health (DESIGN §5 and §8; case B06's neighbour): the LISTEN connection dies
or goes silent, and the worker notices, reconnects, LISTENs again and claims at once
what arrived meanwhile. Its claim, heartbeat and completion connections recover too,
and the process never exits because the database went away for a while.

Workers poll every 60 s here, so a job that starts sooner was found through the
listener (a notification, or the catch-up claim after it reconnected). The documented
bound for a silent (black-holed) listener is 15 s.
"""

from __future__ import annotations

import time

import pytest

from ..conftest import wait_until
from .helpers import (
    Fleet,
    backends,
    db_now,
    first_start_after,
    safe,
    scalar,
    secs,
    side,
    state_of,
    terminate,
    worker_id_of,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ARGS = ("-c", "2", "--poll-interval", "60", "--heartbeat-interval", "1", "--stale-after", "5")


@pytest.fixture(params=["thread", "process"])
def worker_args(request) -> tuple[str, ...]:
    """The workers' arguments, with each executor (listener faults are the same)."""
    return (*ARGS, "--executor", request.param)


#: documented: a dead or silent listener is replaced within 15 s
LISTENER_BOUND = 15.0


def _listening(dsn: str) -> set[int]:
    return {pid for pid, _, _ in backends(dsn, "listen")}


def _job_starts_after(dsn, fapp, since, bound, what):
    """Enqueue one job now; return seconds from ``since`` to its start."""
    j = fapp.tasks["faults.work"].enqueue(ms=1)
    wait_until(safe(lambda: state_of(dsn, j.id) == "completed"), bound + 5, 0.05,
               f"a new job to run after {what}")
    (start,) = [r[5] for r in side(dsn, j.id)]
    return secs(start, since), j


def test_terminated_listener_backend_is_replaced_and_catches_up(dsn, fapp, spawn_worker, worker_args):
    fleet = Fleet(spawn_worker, dsn, *worker_args)
    (w,) = fleet.start(1)
    worker_id_of(dsn, w.pid)
    old = wait_until(lambda: _listening(dsn), 15, 0.05, "LISTEN connection")
    assert terminate(dsn, "listen") == 1
    killed_at = db_now(dsn)
    delay, _ = _job_starts_after(dsn, fapp, killed_at, LISTENER_BOUND, "the kill")
    new = wait_until(lambda: _listening(dsn), 5, 0.05, "a new LISTEN connection")
    print(f"\nlistener terminated: new job started {delay:.3f} s later")
    assert new and not (new & old)
    assert delay <= LISTENER_BOUND
    fleet.assert_alive()


def test_every_worker_connection_terminated_mid_job_recovers(dsn, fapp, spawn_worker, worker_args):
    """claim, complete, heartbeat and listen backends all killed while a job runs: the
    job is recorded once, new jobs run, heartbeats resume."""
    fleet = Fleet(spawn_worker, dsn, *worker_args)
    (w,) = fleet.start(1)
    wid = worker_id_of(dsn, w.pid)
    _job_starts_after(dsn, fapp, db_now(dsn), 5, "start")   # opens the completer too
    wait_until(lambda: len(backends(dsn)) >= 4, 15, 0.05, "four worker connections")
    running = fapp.tasks["faults.work"].enqueue(ms=1500)
    wait_until(lambda: side(dsn, running.id), 10, 0.02, "the job started")
    n = terminate(dsn)
    killed_at = db_now(dsn)
    assert n >= 4
    wait_until(safe(lambda: state_of(dsn, running.id) == "completed"), 15, 0.05,
               "the running job completed")
    delay, _ = _job_starts_after(dsn, fapp, killed_at, LISTENER_BOUND, "the kill")
    wait_until(safe(lambda: scalar(dsn, "select heartbeat_at > %s from pgqueue.workers "
                                        "where id = %s", (killed_at, wid))), 5, 0.05,
               "a heartbeat after the kill")
    roles = {name for _, name, _ in backends(dsn)}
    print(f"\nall worker connections terminated: running job completed once, new job "
          f"started {delay:.3f} s later; connections back: {sorted(roles)}")
    assert len(side(dsn, running.id)) == 1
    assert scalar(dsn, "select attempt from pgqueue.jobs where id = %s", (running.id,)) == 1
    assert delay <= LISTENER_BOUND
    assert {"pgqueue-worker:listen", "pgqueue-worker:heartbeat"} <= roles
    fleet.assert_alive()


def test_database_restart_worker_survives_and_catches_up(dsn, fapp, spawn_worker, worker_args, embedded):
    fleet = Fleet(spawn_worker, dsn, *worker_args)
    (w,) = fleet.start(1)
    wid = worker_id_of(dsn, w.pid)
    wait_until(lambda: _listening(dsn), 15, 0.05, "LISTEN connection")
    running = fapp.tasks["faults.work"].enqueue(ms=3000)
    wait_until(lambda: side(dsn, running.id), 10, 0.02, "the job started")
    fapp.close()
    t0 = time.monotonic()
    embedded.stop("fast")
    time.sleep(2.0)           # the database is away for a while
    embedded.start()
    back = wait_until(safe(lambda: db_now(dsn)), 30, 0.05, "database back")
    outage = time.monotonic() - t0
    delay, _ = _job_starts_after(dsn, fapp, back, LISTENER_BOUND, "the restart")
    wait_until(safe(lambda: state_of(dsn, running.id) == "completed"), 20, 0.1,
               "the interrupted job completed")
    wait_until(safe(lambda: scalar(dsn, "select heartbeat_at > %s from pgqueue.workers "
                                        "where id = %s", (back, wid))), 5, 0.05,
               "a heartbeat after the restart")
    listening = wait_until(lambda: _listening(dsn), 5, 0.05, "LISTEN again")
    execs = side(dsn, running.id)
    print(f"\ndatabase restart ({outage:.1f} s away): new job started {delay:.3f} s after "
          f"the database was back; the job running during the restart ran "
          f"{len(execs)} time(s) and completed")
    assert listening
    assert delay <= LISTENER_BOUND
    assert len(execs) == 1
    fleet.assert_alive()


def test_blackholed_listener_is_detected_within_the_bound(dsn, fapp, spawn_worker, worker_args, proxy):
    """The proxy stops forwarding the listener's traffic without closing anything."""
    fleet = Fleet(spawn_worker, dsn, *worker_args, db=proxy.client_dsn())
    (w,) = fleet.start(1)
    wid = worker_id_of(dsn, w.pid)
    wait_until(lambda: proxy.matching("pgqueue-worker:listen"), 15, 0.05, "LISTEN via proxy")
    # a first job proves the path works before the fault
    delay0, _ = _job_starts_after(dsn, fapp, db_now(dsn), 2, "start")
    assert proxy.blackhole("pgqueue-worker:listen") == 1
    holed_at = db_now(dsn)
    delay, _ = _job_starts_after(dsn, fapp, holed_at, LISTENER_BOUND, "the black hole")
    print(f"\nblack-holed listener: new job started {delay:.3f} s later "
          f"(before the fault: {delay0:.3f} s)")
    assert delay <= LISTENER_BOUND + 1.0
    assert len(proxy.matching("pgqueue-worker:listen")) >= 1
    # the other connections were never disturbed and the worker kept heartbeating
    assert scalar(dsn, "select heartbeat_at > %s from pgqueue.workers where id = %s",
                  (holed_at, wid))
    assert first_start_after(dsn, holed_at) is not None
    fleet.assert_alive()
