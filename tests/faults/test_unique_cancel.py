"""Unique jobs (case B26) and cancellation races (case B28) with real worker processes.

Policy under test (README): enqueueing a ``unique_key`` that an unfinished job holds
returns that job's id and changes nothing, not even a running row; a running job that is
asked to cancel ends ``cancelled`` if its task stops (or fails) and ``completed`` if it
returns normally anyway; the outcome is one conditional update, never an error.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from ..conftest import wait_until
from .helpers import TERMINAL, Fleet, rows, scalar, secs, side, state_of, worker_id_of

pytestmark = [pytest.mark.faults, pytest.mark.slow]

HB = ("--heartbeat-interval", "1", "--stale-after", "3", "--poll-interval", "30")


def _cancel(conn: psycopg.Connection, job_id: int):
    """Cancel through the SQL API; returns (state, database time just before commit)."""
    return conn.execute("select pgqueue.cancel(%s), clock_timestamp()", (job_id,)).fetchone()


def _row_version(dsn: str, job_id: int) -> tuple:
    return rows(dsn, "select xmin::text, ctid::text, state, attempt, worker_id, started_at "
                     "from pgqueue.jobs where id = %s", (job_id,))[0]


def _worker_errors(procs) -> list[str]:
    return [line for p in procs for line in p.log().splitlines()
            if " ERROR " in line or "Traceback" in line or "CRITICAL" in line]


def test_b26_reenqueueing_a_running_unique_key_never_touches_it(dsn, fapp, spawn_worker):
    fleet = Fleet(spawn_worker, dsn, "-c", "2", *HB)
    procs = fleet.start(3)
    for p in procs:
        worker_id_of(dsn, p.pid)
    report = fapp.tasks["faults.report"].using(unique_key="report:7")
    first = report.enqueue(7, seconds=5)
    wait_until(lambda: side(dsn, first.id), 10, 0.02, "report:7 running")
    version = _row_version(dsn, first.id)
    again = []
    for _ in range(3):
        time.sleep(1.0)
        again.append(report.enqueue(7, seconds=5).id)
        assert _row_version(dsn, first.id) == version      # not even a no-op update
    wait_until(lambda: state_of(dsn, first.id) == "completed", 15, 0.05, "report:7 done")
    # once finished, the key is free again: a follow-up is a new job
    follow = fapp.tasks["faults.report"].using(unique_key="report:7").enqueue(8, seconds=0.1)
    wait_until(lambda: state_of(dsn, follow.id) == "completed", 10, 0.05, "follow-up done")
    execs = rows(dsn, """
        select s.job_id, s.at, e.at from public.side s
          join public.side e on e.job_id = s.job_id and e.attempt = s.attempt
                            and e.worker = s.worker and e.event = 'end'
         where s.event = 'start' order by s.at""")
    concurrent = max(sum(1 for _, a, b in execs if a <= t < b) for _, t, _ in execs)
    errors = scalar(dsn, "select coalesce(sum(jsonb_array_length(errors)), 0) from "
                         "pgqueue.jobs where unique_key = 'report:7'")
    print(f"\nB26: re-enqueues returned {again} for running job {first.id} (state "
          f"{version[2]}, attempt {version[3]}, row unchanged); executions of report:7 "
          f"while unfinished: {sum(1 for j, _, _ in execs if j == first.id)}, max "
          f"concurrent {concurrent}, errors {errors}; follow-up after it finished: job "
          f"{follow.id}")
    assert version[2] == "running" and version[3] == 1
    assert again == [first.id] * 3
    assert [j for j, _, _ in execs] == [first.id, follow.id]
    assert concurrent == 1
    assert errors == 0
    assert follow.id != first.id
    assert not _worker_errors(procs)
    fleet.assert_alive()


def test_b28_cancellation_races_with_real_workers(dsn, fapp, spawn_worker):
    fleet = Fleet(spawn_worker, dsn, "-c", "10", *HB)
    procs = fleet.start(1)
    worker_id_of(dsn, procs[0].pid)
    task = fapp.tasks["faults.cancellable"]
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        # A: cancel at 1 s, the body stops; B: the body ignores the flag; D: the body
        # fails after the request (a retryable error): all three run side by side
        a = task.enqueue(seconds=3)
        b = task.enqueue(seconds=3, ignore=True)
        d = task.enqueue(seconds=3, fail=True)
        for j in (a, b, d):
            wait_until(lambda j=j: side(dsn, j.id), 10, 0.01, "job started")
        time.sleep(1.0)
        asked = {j.id: _cancel(conn, j.id) for j in (a, b, d)}
        for j in (a, b, d):
            wait_until(lambda j=j: state_of(dsn, j.id) in TERMINAL, 10, 0.02, "terminal")
        seen_a = side(dsn, a.id, "cancel-seen")[0][5]
        stop_ms = secs(seen_a, asked[a.id][1]) * 1000

        # C: cancel around the moment the body returns, racing its completion: 100 runs
        # in two waves of 50 (a connection each), the cancel landing from 10 ms before
        # to 9 ms after the body's end, so that both sides of the race are taken
        runs: list = []
        cancelled_at: dict[int, object] = {}

        def race(job_id: int, offset: float) -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                deadline = time.monotonic() + 20
                while not side(dsn, job_id) and time.monotonic() < deadline:
                    time.sleep(0.002)
                started = c.execute("select min(at) from public.side where job_id = %s",
                                    (job_id,)).fetchone()[0]
                now = c.execute("select clock_timestamp()").fetchone()[0]
                time.sleep(max(0.0, offset - secs(now, started)))
                cancelled_at[job_id] = _cancel(c, job_id)
        for _wave in range(2):
            wave = [task.enqueue(seconds=0.3) for _ in range(50)]
            runs += wave
            threads = [threading.Thread(target=race, args=(j.id, 0.290 + (i % 20) / 1000),
                                        daemon=True) for i, j in enumerate(wave)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            wait_until(lambda wave=wave: all(state_of(dsn, j.id) in TERMINAL for j in wave),
                       15, 0.05, "race jobs terminal")
        race_states = dict(rows(dsn, "select state, count(*) from pgqueue.jobs "
                                     "where id = any(%s) group by state",
                                ([j.id for j in runs],)))
        race_starts = rows(dsn, "select job_id, count(*) from public.side where event = "
                                "'start' and job_id = any(%s) group by job_id",
                           ([j.id for j in runs],))

        # E: a queued job is cancelled before it starts; a finished job's cancel is a no-op
        e = task.using(delay=1.0).enqueue(seconds=0.1)
        e_state = _cancel(conn, e.id)[0]
        before = _row_version(dsn, b.id)
        b_again = _cancel(conn, b.id)[0]
        time.sleep(1.5)
    finally:
        conn.close()
    final = {j.id: rows(dsn, "select state, attempt, jsonb_array_length(errors) "
                             "from pgqueue.jobs where id = %s", (j.id,))[0]
             for j in (a, b, d, e)}
    errors = _worker_errors(procs)
    print(f"\nB28: A {final[a.id]} stopped {stop_ms:.0f} ms after the cancel; B {final[b.id]}; "
          f"C {len(runs)} races -> {race_states}, executions {sorted({n for _, n in race_starts})}; "
          f"D {final[d.id]}; E queued -> {e_state}, cancel of a completed job -> {b_again}; "
          f"worker errors {len(errors)}")
    assert final[a.id][:2] == ("cancelled", 1) and not side(dsn, a.id, "end")
    assert stop_ms <= 200
    assert final[b.id][:2] == ("completed", 1) and side(dsn, b.id, "end")
    assert sum(race_states.values()) == 100 and set(race_states) <= {"completed", "cancelled"}
    assert len(race_starts) == 100 and {n for _, n in race_starts} == {1}
    assert final[d.id][:2] == ("cancelled", 1) and len(side(dsn, d.id)) == 1
    assert e_state == "cancelled" and final[e.id][0] == "cancelled" and not side(dsn, e.id)
    assert b_again == "completed" and _row_version(dsn, b.id) == before
    assert not errors, errors[:5]
    fleet.assert_alive()


def test_cancel_request_survives_a_graceful_shutdown(dsn, fapp, spawn_worker):
    """A running job asked to cancel whose worker shuts down before the job ends is
    ``cancelled``, not handed back to run again (as rescue and fail already do)."""
    fleet = Fleet(spawn_worker, dsn, "-c", "1", "--shutdown-grace", "1", *HB)
    (w1,) = fleet.start(1)
    worker_id_of(dsn, w1.pid)
    # the task never looks at its cancellation flag, so it outlives the grace period
    j = fapp.tasks["faults.work"].enqueue(ms=8000)
    plain = fapp.tasks["faults.work"].enqueue(ms=8000)
    wait_until(lambda: side(dsn, j.id), 10, 0.02, "the job running on W1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _cancel(conn, j.id)[0] == "running"       # asked; still running
    assert fleet.term(w1, timeout=20) == 0
    (state, finished, attempt, owner, last_error), = rows(
        dsn, "select state, finished_at is not null, attempt, worker_id, errors -> -1 ->> 'type' "
             "from pgqueue.jobs where id = %s", (j.id,))
    assert (state, finished, attempt, owner) == ("cancelled", True, 1, None)
    assert last_error == "pgqueue.Cancelled"
    # a second worker gets the job that was not asked to cancel, never the cancelled one
    (w2,) = fleet.start(1)
    wait_until(lambda: side(dsn, plain.id), 15, 0.02, "W2 took the queue's other job")
    marker = fapp.tasks["faults.work"].enqueue()
    wait_until(lambda: state_of(dsn, marker.id) == "completed", 15, 0.05, "W2 claimed again")
    assert state_of(dsn, j.id) == "cancelled"
    assert len(side(dsn, j.id)) == 1
    print(f"\ncancel + SIGTERM: job {j.id} ended {state} after 1 execution; W2 ran the "
          f"plain job and never the cancelled one")
    fleet.term_all()


def test_release_of_a_lost_claim_keeps_a_cancel_request(dsn, fapp):
    """``release_unknown`` (a claim whose reply was lost) puts back what the worker never
    received, uncounted; a job asked to cancel meanwhile becomes ``cancelled``."""
    a = fapp.tasks["faults.work"].enqueue()
    b = fapp.tasks["faults.work"].enqueue()
    with psycopg.connect(dsn, autocommit=True) as conn:
        wid = conn.execute("select gen_random_uuid()").fetchone()[0]
        # as a claim does: a running row has its max_attempts resolved
        conn.execute("update pgqueue.jobs set state = 'running', attempt = 1, worker_id = %s, "
                     "started_at = now(), max_attempts = 50 where id = any(%s)",
                     (wid, [a.id, b.id]))
        conn.execute("update pgqueue.jobs set cancel_requested_at = now() where id = %s",
                     (a.id,))
        released = {r[0] for r in conn.execute("select pgqueue.release_unknown(%s, %s)",
                                               (wid, [])).fetchall()}
    assert released == {a.id, b.id}
    got = dict((r[0], r[1:]) for r in rows(
        dsn, "select id, state, attempt, finished_at is not null from pgqueue.jobs "
             "where id = any(%s)", ([a.id, b.id],)))
    assert got == {a.id: ("cancelled", 0, True), b.id: ("available", 0, False)}
