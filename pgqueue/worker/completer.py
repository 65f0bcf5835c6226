"""The completer: records the outcomes of attempts, in batches, on its own connection.

Owns the *complete* connection and the completion queue's consuming end. Successes
alone are one autocommit statement (``complete``: one round trip, one commit for up to
``COMPLETE_BATCH`` jobs); failures (``fail``, which schedules the retry in SQL) join
them in one transaction. Every statement is fenced by the attempt token: a stale
worker's late outcome changes nothing (``job_owner`` tells the observer who owns the
job instead). A batch the database refuses is retried one outcome at a time; a result
it cannot store fails its job, a failure it cannot store is recorded as a plain
``pgqueue.UnrecordableError``.
"""

from __future__ import annotations

import contextlib
import logging
import queue as queue_mod
import threading
import time
from typing import Any

import psycopg

from .. import serialization
from .._sql import array, q
from .connections import _Conn, _transient
from .outcomes import _error_dict, _storable, completion
from .running import RunningJobs, WakeUp, _Running
from .component import ThreadComponent

log = logging.getLogger("pgqueue.worker")

COMPLETE_BATCH = 400


class Completer(ThreadComponent):
    """Drains ``completions`` into the database.

    :param conn: the dedicated *complete* connection.
    :param completions: queue of ``(kind, r, payload)``; ``None`` ends the thread.
    :param worker_id: the worker's UUID (the fence).
    :param running: recorded jobs are dropped from it.
    :param wake: set after each batch (room for the next claim); ``more()`` after
        failures (a retry may be due before the next poll).
    :param stats: counters ``completed`` and ``failed``.
    :param observer: the :class:`~pgqueue.observe.Observer`, or ``None``.
    :param prepare: prepare statements (False in poll-only mode).
    :param done: set when the worker's bookkeeping threads may exit.
    """

    thread_name = "pgqueue-completer"

    def __init__(self, conn: _Conn, completions: queue_mod.SimpleQueue, *, worker_id: Any,
                 running: RunningJobs, wake: WakeUp, stats: dict[str, int], observer: Any,
                 prepare: bool, done: threading.Event):
        self.conn = conn
        self.completions = completions
        self.worker_id = worker_id
        self.running = running
        self.wake = wake
        self.stats = stats
        self.observer = observer
        self.prepare = prepare
        self.done = done
        #: set while nothing is pending (shutdown waits for it before handing back)
        self.idle = threading.Event()

    def drained(self) -> bool:
        """Every outcome put so far is recorded (or being given up on)."""
        return self.completions.empty() and self.idle.is_set()

    def _interrupt(self) -> None:
        self.completions.put(None)

    def _run(self) -> None:
        pending: list[tuple[str, _Running, Any]] = []
        while True:
            if not pending:
                self.idle.set()
                try:
                    item = self.completions.get(timeout=0.5)
                except queue_mod.Empty:
                    if self.done.is_set():
                        return
                    continue
                self.idle.clear()
                if item is None:
                    return
                pending.append(item)
            while len(pending) < COMPLETE_BATCH:
                try:
                    item = self.completions.get_nowait()
                except queue_mod.Empty:
                    break
                if item is None:
                    self.completions.put(None)
                    break
                pending.append(item)
            try:
                self.conn.run(lambda c, p=pending: self._flush(c, p))
                pending = []
            except Exception as e:
                if _transient(e):
                    if not self.conn.failures or self.conn.should_log():
                        log.warning("recording %d outcomes failed (%s)%s; retrying",
                                    len(pending), str(e).strip(), self.conn.outage())
                    time.sleep(self.conn.backoff())
                else:
                    log.exception("recording outcomes failed; retrying one by one")
                    pending = self._flush_one_by_one(pending)

    def _flush(self, conn: psycopg.Connection, items: list[tuple[str, _Running, Any]]) -> None:
        done = [(r, p) for kind, r, p in items if kind == "complete"]
        fails = [(r, p) for kind, r, p in items if kind == "fail"]
        replacing = [r for kind, r, _ in items if kind == "replace"]
        completed = None
        obs = self.observer
        # Completions alone are one autocommit statement (one round trip, one commit);
        # failures and replacements join them in one transaction.
        # Jobs of queues (or tasks) with a concurrency limit free a slot that claims
        # held back by the limit wait for: every worker hears of it (pgqueue_jobs, sent
        # ``pgqueue_freed``, sent at commit), so none waits for its next look at the
        # limit. Unlimited queues send nothing.
        limited = sorted({r.queue for _, r, _ in items if r.limited})
        with conn.transaction() if fails or replacing else contextlib.nullcontext():
            if done:
                # array literals: psycopg's list dumper took ~5 us per element
                params = {"worker_id": self.worker_id, "ids": array([r.id for r, _ in done]),
                          "attempts": array([r.attempt for r, _ in done]),
                          "results": array([p for _, p in done])}
                if limited:
                    params["queues"] = limited
                    completed = conn.execute(q("complete_freed"), params, prepare=self.prepare)
                else:
                    completed = conn.execute(q("complete"), params, prepare=self.prepare)
            elif limited:
                conn.execute(q("notify_freed"), {"queues": limited}, prepare=self.prepare)
            states = []
            for r, (err, discard, delay) in fails:
                policy = r.task.retry if r.task is not None else None
                (state,) = conn.execute(q("fail"), {
                    "worker_id": self.worker_id, "id": r.id, "attempt": r.attempt,
                    "error": serialization.dumps(err, "error"), "retry_delay": delay,
                    "discard": discard,
                    "backoff_base": policy.base if policy else 1.0,
                    "backoff_cap": policy.cap if policy else 3600.0},
                    prepare=self.prepare).fetchone()
                states.append(state)
            # ctx.replace: the replacement joins the workflow with the step's completion
            replaced = [r for r in replacing
                        if conn.execute(q("replace_step"), completion(self.worker_id, r, None)[1],
                                        prepare=self.prepare).fetchone()[0] == "completed"]
            retry_at = (obs.retry_times(conn, [r for r, _ in fails], states)
                        if obs is not None and fails else None)
        self.running.drop_all([r for r, _ in done] + [r for r, _ in fails] + replacing)
        self.stats["completed"] += len(done) + len(replaced)
        if obs is not None and replaced:
            obs.completed(replaced)
        self.stats["failed"] += len(fails)
        if obs is not None:
            self._observe(conn, done, completed, fails, states, retry_at)
        if fails or limited:
            # a retry may be due before the next poll, or a limit's slot is free: claim
            self.wake.more()
        else:
            self.wake.set()   # recorded outcomes free room for the next claim

    def _observe(self, conn: psycopg.Connection, done: list, completed: Any,
                 fails: list, states: list, retry_at: Any) -> None:
        obs = self.observer
        try:
            fenced = []
            if completed is not None:
                owned = {i for (i,) in completed.fetchall()}
                obs.completed([r for r, _ in done if r.id in owned])
                fenced += [(r, "success") for r, _ in done if r.id not in owned]
            if fails:
                obs.failed([(r, p[0], st) for (r, p), st in zip(fails, states, strict=True)],
                           retry_at)
                fenced += [(r, "failure") for (r, _), st in zip(fails, states, strict=True)
                           if st is None]
            for r, outcome in fenced:   # rare: the job was rescued from under this worker
                owner = conn.execute(q("job_owner"), {"id": r.id}).fetchone()
                obs.fenced(r, outcome, owner)
        except Exception:  # noqa: BLE001 - the outcomes are committed; never redo them
            log.exception("observing %d outcomes failed", len(done) + len(fails))

    def _flush_one_by_one(self, items: list[tuple[str, _Running, Any]]) -> list:
        left = []
        for item in items:
            try:
                self.conn.run(lambda c, it=item: self._flush(c, [it]))
            except Exception as e:  # noqa: BLE001
                if _transient(e):
                    left.append(item)
                    continue
                kind, r, _ = item
                if kind == "complete":   # e.g. a result the database refuses: fail the job
                    left.append(("fail", r, (_error_dict(e), True, None)))
                elif kind == "replace":  # nothing was added: a failed attempt, retried as usual
                    left.append(("fail", r, (_error_dict(e), False, None)))
                elif item[2][0].get("type") != "pgqueue.UnrecordableError":
                    # Record a plain failure instead, or the job would stay `running`
                    # while this worker heartbeats, and never reach a terminal state.
                    log.error("cannot record failure of job %s (%s); recording a plain one",
                              r.id, e)
                    err, discard, _ = item[2]
                    left.append(("fail", r, ({
                        "type": "pgqueue.UnrecordableError",
                        "message": _storable(f"the attempt failed ({err.get('type')}) but its "
                                             f"error could not be recorded: {e}"),
                        "traceback": None}, discard, None)))
                else:
                    log.error("cannot record failure of job %s: %s", r.id, e)
                    self.running.drop(r)
        return left
