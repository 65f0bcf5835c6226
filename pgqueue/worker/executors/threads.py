"""The thread executor: ``def`` tasks on ``concurrency`` threads.

Owns the executor threads and their queue. A thread cannot be killed: a timed-out
attempt is flagged (``ctx.cancelled``) and keeps its job and slot until the function
returns; the claim loop's timeout check marks it, and it is then recorded as a
``TimeoutError`` whatever it returned.

SQL: for a transactional task, ``complete_one`` (and ``job_owner`` when fenced) in the
task's own transaction, on a connection of the app's pool.
"""

from __future__ import annotations

import queue as queue_mod
import threading
from typing import Any

from ..._sql import q
from ...app import App
from ..outcomes import Outcomes, _Abandoned, _result_payload, call_args, completion
from ..running import RunningJobs, WakeUp, _Running


class ThreadExecutor:
    """Runs sync attempts on ``threads`` threads.

    :param app: the app (its pool gives transactional tasks their connection).
    :param worker_id: the worker's UUID (fences a transactional completion).
    :param threads: number of threads (the worker's concurrency).
    :param running: the worker's running jobs (frees a slot when a function returns).
    :param outcomes: where outcomes go.
    :param wake: set when a slot frees up.
    """

    def __init__(self, app: App, worker_id: Any, threads: int, running: RunningJobs,
                 outcomes: Outcomes, wake: WakeUp):
        self.app = app
        self.worker_id = worker_id
        self.threads = threads
        self.running = running
        self.outcomes = outcomes
        self.wake = wake
        self._q: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"pgqueue-exec-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, r: _Running) -> None:
        self._q.put(r)

    def stop(self) -> None:
        """Let idle threads exit (busy ones end when their function returns)."""
        for _ in self._threads:
            self._q.put(None)

    def _run(self) -> None:
        while True:
            r = self._q.get()
            if r is None:
                return
            try:
                self.run_one(r)
            finally:
                self.running.release_slot()
                self.wake.set()

    def run_one(self, r: _Running) -> None:
        task = r.task
        if task is None:   # not registered here (claimed only by name filter races)
            self.outcomes.unknown_task(r)
            return
        try:
            args, kwargs = call_args(r)
            if task.transactional:
                self._run_transactional(r, args, kwargs)
                return
            result = self.app.hooks.call(r.ctx, task.fn, args, kwargs)
            self.outcomes.success(r, result)
        except BaseException as e:  # noqa: BLE001 - every failure is recorded
            self.outcomes.exception(r, e)

    def _run_transactional(self, r: _Running, args: list[Any], kwargs: dict[str, Any]) -> None:
        with self.app.connection() as conn, conn.transaction():
            r.ctx.connection = conn
            result = self.app.hooks.call(r.ctx, r.task.fn, args, kwargs)  # type: ignore[union-attr]
            payload = _result_payload(result)
            if self.running.is_abandoned(r):
                raise _Abandoned()
            if r.timed_out:   # roll the writes back; recorded as a TimeoutError
                raise TimeoutError(f"attempt exceeded its timeout of {r.timeout} s")
            name, params = completion(self.worker_id, r, payload)
            row = conn.execute(q(name), params).fetchone()
            if row is None or row[0] is None:
                # fenced out: roll the task's writes back, say who owns the job now
                raise _Abandoned(owner=conn.execute(q("job_owner"), {"id": r.id}).fetchone())
        r.ctx.connection = None
        self.outcomes.committed(r)
