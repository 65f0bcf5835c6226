"""The kill loop (DESIGN §2 guarantees 2 and 3 under SIGKILL; cases B01 and B03).

5,000 jobs of 0-50 ms on 3 ``pgqueue worker`` processes; every second one of them, at
random but for the first, is SIGKILLed and a new one started, until every job is
finished or about 60 s have passed. Then, from the rows alone (the jobs table and the side table the task
writes at the start and the end of every execution):

- every job reached exactly one terminal state, ``completed`` (nothing lost);
- a job ran more than once only if the worker of each earlier execution was killed;
- no two executions of a job overlap in time (an execution of a killed worker ends at
  the latest at its kill);
- no job stayed ``running`` under a dead owner for longer than the rescue interval.

The figures are printed (``-s``): jobs, kills, lost, duplicates-at-once, worst time
from a worker's death to its job running again.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest

from .helpers import Fleet, db_now, rows, safe, scalar, secs, states, worker_id_of
from ..conftest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

JOBS = 5000
WORKERS = 3
STALE = 3.0
HEARTBEAT = 1.0
#: A dead worker's job is running again within stale_after + heartbeat_interval (+ the
#: claim) once a live worker has beaten twice: a worker rescues from its second beat on,
#: so that one cut off itself does not take its peers for dead. One worker therefore
#: lives through the run, as in any fleet where not every worker is minutes old; with all
#: three killed at random, one a second, the fleet could hold only workers still
#: spawning their children and waiting for their second beat (a loaded CI run measured
#: 6.4 s, another 11.3 s).
RESCUE_BOUND = STALE + HEARTBEAT + 2.0


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_kill_loop_loses_nothing_and_never_runs_a_job_twice_at_once(dsn, fapp, spawn_worker,
                                                                    executor):
    """With the process executor, a killed worker's children die with it."""
    rng = random.Random(20261129)
    fleet = Fleet(spawn_worker, dsn, "-c", "4", "--heartbeat-interval", str(HEARTBEAT),
                  "--stale-after", str(STALE), "--poll-interval", "1",
                  "--shutdown-grace", "5", "--executor", executor)
    (veteran,) = fleet.start(1)        # never killed: there is always a worker to rescue
    fleet.start(WORKERS - 1)
    wait_until(safe(lambda: scalar(dsn, "select count(*) from pgqueue.workers") >= WORKERS),
               30, 0.05, "workers registered")
    work = fapp.tasks["faults.work"]
    assert work.enqueue_many([{"ms": rng.uniform(0, 50)} for _ in range(JOBS)]) == JOBS
    fapp.close()

    worker_pid: dict[str, int] = {}          # worker instance id -> pid
    orphan_seen: list[tuple] = []
    t0 = time.monotonic()
    kills = 0
    while time.monotonic() - t0 < 60:
        if wait_until_done(dsn, timeout=1.0):
            break
        fleet.kill(rng.choice([p for p in fleet.live if p is not veteran]))
        kills += 1
        fleet.start(1)
        for wid, pid in rows(dsn, "select id::text, pid from pgqueue.workers"):
            worker_pid[wid] = pid
        # nothing stays running under an owner that died longer than the rescue bound ago
        now = db_now(dsn)
        for job_id, wid in rows(dsn, "select id, worker_id::text from pgqueue.jobs "
                                     "where state = 'running'"):
            pid = worker_pid.get(wid)
            died = fleet.killed.get(pid) if pid else None
            if died is not None and secs(now, died) > RESCUE_BOUND:
                orphan_seen.append((job_id, pid, secs(now, died)))
        fleet.assert_alive()
    loop_time = time.monotonic() - t0
    wait_until(lambda: wait_until_done(dsn, 0.0), 30, 0.2, "every job finished")
    total = time.monotonic() - t0
    fleet.assert_alive()

    by_state = states(dsn)
    # executions: (job, attempt, worker) -> start, end
    execs: dict[tuple, dict] = {}
    for job_id, attempt, worker, pid, event, at in rows(
            dsn, "select job_id, attempt, worker, pid, event, at from public.side order by id"):
        # the worker process of the execution (with the process executor `pid` is that
        # of its child, which dies with the worker)
        e = execs.setdefault((job_id, attempt, worker), {"pid": worker_pid.get(worker, pid)})
        e[event] = at
    per_job: dict[int, list[dict]] = defaultdict(list)
    for (job_id, _attempt, _worker), e in execs.items():
        if "start" in e:
            per_job[job_id].append(e)

    lost = JOBS - by_state.get("completed", 0)
    lost += sum(1 for job_id, ex in per_job.items() if not any("end" in e for e in ex))
    lost += JOBS - len(per_job)
    unexplained, overlaps, rerun_times = [], [], []
    for job_id, ex in per_job.items():
        ex.sort(key=lambda e: e["start"])
        for e in ex[:-1]:
            if e["pid"] not in fleet.killed:
                unexplained.append((job_id, [(x["pid"], x["start"]) for x in ex]))
        for a, b in zip(ex, ex[1:], strict=False):
            end = a.get("end") or fleet.killed.get(a["pid"])
            if end is None or b["start"] < end:
                overlaps.append((job_id, a, b))
            if a["pid"] in fleet.killed:
                rerun_times.append(secs(b["start"], fleet.killed[a["pid"]]))
    reruns = sum(len(ex) - 1 for ex in per_job.values())
    worst = max(rerun_times, default=0.0)
    print(f"\nkill loop: {JOBS} jobs, {kills} kills in {loop_time:.1f} s (all finished after "
          f"{total:.1f} s), states {by_state}; lost {lost}; re-executions {reruns} (all after "
          f"a kill: {not unexplained}); duplicates-at-once {len(overlaps)}; worst death to "
          f"rerun {worst:.2f} s (bound {RESCUE_BOUND:.1f} s); orphans past the rescue bound "
          f"{len(orphan_seen)}")
    assert kills >= 5
    assert lost == 0, by_state
    assert by_state == {"completed": JOBS}
    assert not overlaps, overlaps[:5]
    assert not unexplained, unexplained[:5]
    assert not orphan_seen, orphan_seen[:5]
    assert worst <= RESCUE_BOUND
    assert scalar(dsn, "select count(*) from pgqueue.jobs where state = 'running'") == 0
    for p in fleet.live:        # SIGTERM is graceful once a worker has started
        worker_id_of(dsn, p.pid)
    codes = fleet.term_all(30)
    assert codes == [0] * len(codes)


def wait_until_done(dsn: str, timeout: float) -> bool:
    """True once no job is unfinished; waits up to ``timeout`` s (polling 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        left = scalar(dsn, "select count(*) from pgqueue.jobs where finished_at is null")
        if left == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
