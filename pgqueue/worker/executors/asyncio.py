"""The asyncio executor: ``async def`` tasks on one event loop thread.

Owns the loop and its thread. A timeout is ``asyncio.wait_for`` (the coroutine is
cancelled); cancellation of a running job cancels its future.

SQL: for a transactional task, ``complete_one`` (and ``job_owner`` when fenced) in the
task's own transaction, on a fresh async connection.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from typing import Any

import psycopg

from ..._sql import q
from ...app import App
from ...errors import Cancelled
from ..outcomes import Outcomes, _Abandoned, _result_payload, call_args, completion
from ..running import RunningJobs, WakeUp, _Running

_DONE = object()


class AsyncioExecutor:
    """Runs async attempts on one event loop (parameters as
    :class:`~pgqueue.worker.executors.threads.ThreadExecutor`, without ``threads``)."""

    def __init__(self, app: App, worker_id: Any, running: RunningJobs, outcomes: Outcomes,
                 wake: WakeUp):
        self.app = app
        self.worker_id = worker_id
        self.running = running
        self.outcomes = outcomes
        self.wake = wake
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pgqueue-asyncio",
                                        daemon=True)
        self._thread.start()

    def prepare(self, r: _Running) -> None:
        """Mark ``r`` as this executor's before it is owned: it keeps its own timeout."""
        r.own_timeout = True

    def submit(self, r: _Running) -> None:
        assert self.loop is not None  # noqa: S101 - narrows a type; start() made the loop
        loop = self.loop
        r.future = fut = asyncio.run_coroutine_threadsafe(self._run(r), loop)
        r.interrupt = lambda: loop.call_soon_threadsafe(fut.cancel)

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def _run(self, r: _Running) -> None:
        task = r.task
        assert task is not None  # noqa: S101 - narrows a type; only registered tasks reach this executor
        out = self.outcomes
        try:
            try:
                args, kwargs = call_args(r)
                if task.transactional:
                    result = await self._run_transactional(r, args, kwargs)
                    if result is _DONE:
                        return
                else:
                    result = await self.app.hooks.acall(r.ctx, task.fn, args, kwargs, r.timeout)
            except asyncio.TimeoutError as e:
                out.failure(r, {"type": "builtins.TimeoutError",
                                "message": f"attempt exceeded its timeout of {r.timeout} s",
                                "traceback": "".join(traceback.format_exception(e))})
                return
            except asyncio.CancelledError as e:
                out.exception(r, Cancelled(str(e) or "cancelled"))
                return
            except BaseException as e:  # noqa: BLE001
                out.exception(r, e)
                return
            out.success(r, result)
        finally:
            self.running.release_slot()
            self.wake.set()

    async def _run_transactional(self, r: _Running, args: list[Any],
                                 kwargs: dict[str, Any]) -> Any:
        conn = await psycopg.AsyncConnection.connect(self.app.conninfo, autocommit=True)
        async with conn, conn.transaction():
            r.ctx.connection = conn
            result = await self.app.hooks.acall(r.ctx, r.task.fn, args, kwargs,  # type: ignore[union-attr]
                                                r.timeout)
            payload = _result_payload(result)
            name, params = completion(self.worker_id, r, payload)
            cur = await conn.execute(q(name), params)
            row = await cur.fetchone()
            if row is None or row[0] is None:
                cur = await conn.execute(q("job_owner"), {"id": r.id})
                raise _Abandoned(owner=await cur.fetchone())
        r.ctx.connection = None
        self.outcomes.committed(r)
        return _DONE
