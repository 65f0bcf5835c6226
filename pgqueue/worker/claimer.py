"""The claimer: the claim loop, on the *claim* connection.

Owns claiming and dispatch. ``claim`` takes up to the free slots' worth of jobs
(``FOR UPDATE SKIP LOCKED``; each row becomes ``running`` with a new attempt token in
the same statement, so no transaction stays open while user code runs), starting at
the positions where earlier claims found jobs (:mod:`pgqueue._positions`). When a
claim finds less than it asked for, ``next_due`` gives the wait until the earliest due
``scheduled``/``retryable`` job (at most ``poll_interval``). After a claim whose reply
was lost, ``release_unknown`` hands back the jobs it may have taken (not counted as an
attempt). The loop also watches the timeouts of attempts whose executor does not
(thread executor): a timed-out attempt is flagged cancelled.

Never more than ``2 * concurrency`` jobs are owned (executing, or waiting for their
outcome's commit): a completer that falls behind slows claiming down.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import psycopg

from .._positions import ClaimPositions
from .._sql import array, q
from ..app import App
from ..context import JobContext
from ..hooks import EMPTY_META
from .connections import _Conn, _server_timeout, _transient
from .running import RunningJobs, WakeUp, _Running

log = logging.getLogger("pgqueue.worker")

#: seconds until the next look while this worker runs jobs of a limited queue (next_due's
#: answer for jobs held back by a concurrency limit)
HELD_BACK_WAIT = 0.1


class Claimer:
    """Claims jobs into free slots and hands each to ``dispatch``.

    :param conn: the dedicated *claim* connection.
    :param app: the app (task lookup; the job context's ``app``).
    :param worker_id: the worker's UUID (the claim's owner).
    :param queues: queue names, or ``None`` (all).
    :param tasks: the registered task names, and their declared ``max_attempts`` and
        ``timeouts`` (parallel lists; the claim writes them into rows that left them
        null, DESIGN §5.2).
    :param concurrency: slots.
    :param claim_batch: most jobs per claim.
    :param poll_interval: seconds between claims without news.
    :param running: the worker's running jobs.
    :param wake: the claim loop's wake-up.
    :param positions: where claims start.
    :param dispatch: ``dispatch(r)`` starts the attempt ``r`` on its executor; called
        after ``prepare(r)`` and after ``r`` is owned.
    :param prepare: ``prepare(r)`` before ``r`` is owned (executor-specific marks).
    :param stats: counter ``claimed``.
    :param observer: the :class:`~pgqueue.observe.Observer`, or ``None``.
    :param metrics: the :class:`~pgqueue.metrics.WorkerMetrics`, or ``None``.
    :param stopping: set when claiming must stop.
    :param prepare_statements: prepare statements (False in poll-only mode).
    """

    def __init__(self, conn: _Conn, app: App, *, worker_id: Any, queues: list[str] | None,
                 tasks: list[str], max_attempts: list[int], timeouts: list[float | None],
                 concurrency: int, claim_batch: int, poll_interval: float,
                 running: RunningJobs, wake: WakeUp, positions: ClaimPositions,
                 dispatch: Callable[[_Running], None], prepare: Callable[[_Running], None],
                 stats: dict[str, int], observer: Any, metrics: Any,
                 stopping: threading.Event, prepare_statements: bool,
                 task_concurrency: list[int | None] | None = None):
        self.conn = conn
        self.app = app
        self.worker_id = worker_id
        self.queues = queues
        self.tasks = tasks
        self.max_attempts = max_attempts
        self.timeouts = timeouts
        #: per-task concurrency limits parallel to ``tasks`` (None: no task declares one)
        self.task_concurrency = task_concurrency
        self.concurrency = concurrency
        self.max_owned = 2 * concurrency   # executing + waiting for their outcome's commit
        self.claim_batch = claim_batch
        self.poll_interval = poll_interval
        self.running = running
        self.wake = wake
        self.positions = positions
        self.dispatch = dispatch
        self.prepare = prepare
        self.stats = stats
        self.observer = observer
        self.metrics = metrics
        self.stopping = stopping
        self.prepare_statements = prepare_statements
        self.need_release = False
        # The claim's fixed arrays, written once (array literals: psycopg's list dumper
        # cost more than the rest of the claim's client side).
        self._fixed = {"worker_id": worker_id, "tasks": array(tasks),
                       "task_max_attempts": array(max_attempts),
                       "task_timeouts": array(timeouts),
                       "task_concurrency": array(task_concurrency)}

    def run(self) -> None:
        """The claim loop, until ``stopping`` is set (runs in the caller's thread)."""
        last_poll = time.monotonic()
        due_at = float("inf")     # monotonic time of the earliest known due job
        wake = self.wake
        while not self.stopping.is_set():
            wake.clear()
            self.check_timeouts()
            free = min(self.concurrency - self.running.busy,
                       self.max_owned - len(self.running))
            wait = self.poll_interval
            if free > 0 and wake.pending:
                n = min(free, self.claim_batch)
                # Cleared before the claim: a notification that arrives while it runs
                # (its job may be invisible to the claim's snapshot) asks for another.
                wake.pending = False
                try:
                    got = self.claim(n)
                except Exception as e:
                    wake.pending = True
                    if not _transient(e):
                        log.exception("claim failed")
                        self.stopping.wait(1.0)
                        continue
                    if not self.conn.failures or self.conn.should_log():
                        log.warning("claim failed (%s)%s; retrying", str(e).strip(),
                                    self.conn.outage())
                    # A lock timeout retries at once (the claim queues for the lock again
                    # and gets it the moment it goes); a lost connection backs off. Either
                    # wait ends early on a notification or stop().
                    wake.wait(0.05 if _server_timeout(e) else
                              self.conn.backoff() if self.conn.failures else 1.0)
                    continue
                last_poll = time.monotonic()
                if got == n:
                    wake.pending = True
                    continue          # there may be more; claim again while slots are free
                if wake.pending:
                    continue          # news during the claim (a limit's slot freed): claim
                # While jobs of a limited queue run, their ends wake the loop (and other
                # workers' ends notify it): look again within next_due's answer for jobs
                # held back by a limit, without asking it.
                wait = (HELD_BACK_WAIT if self.running.limited else self._next_wait())
                due_at = time.monotonic() + wait
            elif free > 0:
                # Woken without news (a slot freed up): keep the earliest due time, or a
                # scheduled job due before the next poll would wait for the poll.
                now = time.monotonic()
                wait = max(0.0, min(self.poll_interval - (now - last_poll), due_at - now))
            # While claims start at positions, a position-free claim at least every
            # second finds what landed behind one unannounced.
            wait = min(wait, self.running.next_deadline(time.monotonic()),
                       self.positions.next_refresh())
            if not wake.wait(wait):
                wake.pending = True  # poll interval or a due time elapsed

    def check_timeouts(self) -> None:
        for r in self.running.expired(time.monotonic()):
            # A thread cannot be killed: ask the task to stop and keep the job (and its
            # slot) until the thread returns, so no second attempt can run beside it.
            # The attempt is then recorded as a TimeoutError whatever it returned.
            r.ctx._cancel.set()
            log.warning("job %s %s timed out after %s s; waiting for its thread to return",
                        r.id, r.name, r.timeout)

    def _next_wait(self) -> float:
        try:
            due = self.conn.run(lambda c: c.execute(
                q("next_due"), {"queues": self.queues, "tasks": self.tasks,
                                "task_concurrency": self.task_concurrency},
                prepare=self.prepare_statements).fetchone()[0])
        except Exception:
            return 1.0
        if due is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.05, due))

    def claim(self, n: int) -> int:
        """Claim up to ``n`` jobs and dispatch them; return how many were claimed."""
        def work(conn: psycopg.Connection) -> list[tuple]:
            if self.need_release:
                known = [(r.id, r.attempt) for r in self.running.snapshot()]
                released = conn.execute(q("release_unknown"), {
                    "worker_id": self.worker_id, "known": [i for i, _ in known],
                    "known_attempts": [a for _, a in known]}).fetchall()
                if released:
                    log.warning("released %d jobs whose claim reply was lost", len(released))
                self.need_release = False
            positions = self.positions.params()
            queues = self.queues
            if queues is None and positions["position_queues"] is not None:
                queues = self.positions.queues()
            params = {k: array(v) for k, v in positions.items()}
            params.update(self._fixed, queues=array(queues), batch=n)
            return conn.execute(q("claim"), params,
                                prepare=self.prepare_statements).fetchall()
        t0 = time.perf_counter()
        try:
            rows = self.conn.run(work)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # The claim may have committed without our seeing the rows: release them
            # (not counted as an attempt) before claiming again. A statement the server
            # cancelled (lock or statement timeout) rolled back whole: nothing to release.
            if not _server_timeout(e):
                self.need_release = True
            raise
        except Exception:
            # The reply arrived but could not be read (a value this client cannot
            # represent): the claim committed, so hand its jobs back rather than leave
            # them running under a live worker that never started them.
            self.need_release = True
            raise
        took = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.claim_took(took)
        self.positions.taken(rows, n, took)
        for row in rows:
            self._start(row)
        self.stats["claimed"] += len(rows)
        if rows:
            # Let the executor threads just handed these jobs take the GIL now, rather
            # than when this loop next waits on the database (its next_due round trip).
            time.sleep(0)
        return len(rows)

    def _start(self, row: tuple) -> None:
        (job_id, queue, name, args, kwargs, attempt, max_attempts, _prio, _run_at, timeout,
         latency, cancel_requested, inputs, meta, workflow_id, waited, limited) = row
        task = self.app.tasks.get(name)
        ctx = JobContext(job_id=job_id, task=name, queue=queue, attempt=attempt,
                         max_attempts=max_attempts, worker_id=self.worker_id, app=self.app,
                         meta=EMPTY_META if meta is None else _meta(meta),
                         workflow_id=workflow_id, waited=waited)
        r = _Running(id=job_id, attempt=attempt, task=task, name=name, queue=queue, args=args,
                     kwargs=kwargs, ctx=ctx, inputs=inputs,
                     timeout=timeout if timeout is not None else (task.timeout if task else None),
                     limited=bool(limited) or (task is not None and task.concurrency is not None))
        if cancel_requested is not None:
            ctx._cancel.set()
        self.prepare(r)
        self.running.add(r)
        if self.observer is not None:
            self.observer.started(r, latency)
        self.dispatch(r)


def _meta(text: str) -> Any:
    """A job's meta, claimed as JSON text, as a read-only mapping (empty if unreadable)."""
    try:
        return MappingProxyType(json.loads(text))
    except Exception:  # noqa: BLE001 - never fail a job over its metadata
        log.warning("unreadable job meta %.80r; ignoring it", text)
        return EMPTY_META
