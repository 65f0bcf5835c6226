"""The job handle returned by every enqueue, and the job states."""

from __future__ import annotations

import contextlib
import enum
import math
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from . import serialization
from ._sql import q
from .errors import (JobCancelled, JobFailed, JobNotFound, ResultTimeout, RetryRefused,
                     UniqueKeyHeld)

if TYPE_CHECKING:  # pragma: no cover
    from .app import App

__all__ = ["TERMINAL_STATES", "Job", "JobState"]


class JobState(str, enum.Enum):
    """The states of a job (the ``state`` column). See README "States" for the diagram."""

    PENDING = "pending"        # waits on workflow dependencies
    SCHEDULED = "scheduled"    # run_at in the future (claimable once due)
    AVAILABLE = "available"    # ready to be claimed
    RUNNING = "running"        # claimed by a worker; attempt token set
    RETRYABLE = "retryable"    # failed, waiting for its backoff (claimable once due)
    COMPLETED = "completed"    # finished successfully; result stored
    DISCARDED = "discarded"    # failed for good: attempts exhausted or not retryable
    CANCELLED = "cancelled"    # cancelled before or while running

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})


class Job:
    """A handle on one job row.

    Returned by ``task.enqueue()`` and friends; cheap to build from an id with
    ``app.job(id)``. Reading ``state`` the first time queries the database; later
    reads return the value of the last :meth:`refresh`.

    A job enqueued in a caller's transaction is invisible to other sessions until that
    transaction commits: :meth:`refresh` from the app's pool raises
    :class:`~pgqueue.JobNotFound` until then, and :meth:`result` waits.
    """

    __slots__ = ("_row", "app", "id")

    def __init__(self, app: App, id: int, row: dict[str, Any] | None = None):
        self.app = app
        self.id = int(id)
        self._row = row

    def __repr__(self) -> str:
        state = self._row["state"] if self._row else "?"
        return f"<Job {self.id} {state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def refresh(self) -> Job:
        """Re-read the row (one query on the app's pool). Raises :class:`JobNotFound`."""
        with self.app.connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(q("job_get"), {"id": self.id}).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {self.id} (not committed yet, or pruned)")
        self._row = row
        return self

    def _get(self, key: str) -> Any:
        if self._row is None:
            self.refresh()
        return self._row[key]  # type: ignore[index]

    @property
    def state(self) -> JobState:
        return JobState(self._get("state"))

    @property
    def task(self) -> str:
        return self._get("task")

    @property
    def queue(self) -> str:
        return self._get("queue")

    @property
    def attempt(self) -> int:
        return self._get("attempt")

    @property
    def args(self) -> list[Any]:
        return serialization.decode(self._get("args"))

    @property
    def kwargs(self) -> dict[str, Any]:
        return serialization.decode(self._get("kwargs"))

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Error history: one dict per failed or interrupted attempt, oldest first."""
        return self._get("errors")

    @property
    def row(self) -> dict[str, Any]:
        """Every column of the job as last read."""
        if self._row is None:
            self.refresh()
        return dict(self._row)  # type: ignore[arg-type]

    def cancel(self) -> JobState | None:
        """Cancel the job (see ``pgqueue.cancel`` in the README); commits at once.

        :returns: the state after the call: ``cancelled`` for a job that had not
            started, ``running`` for a running job asked to stop, the terminal state of a
            finished job (a no-op), ``None`` for an unknown id.
        """
        with self.app.connection() as conn:
            (state,) = conn.execute(q("cancel"), {"id": self.id}).fetchone()
        self._row = None
        return JobState(state) if state else None

    def retry(self) -> JobState | None:
        """Make a discarded/cancelled/retryable/scheduled job available now (one more
        attempt if it had none left); commits at once, on a connection of its own.

        A workflow step whose dependencies have not all completed (they were retried
        too, and run again) becomes ``pending`` instead, and runs once they have
        completed, with their results.

        :returns: the state after the call: ``available`` when retried, ``pending`` for
            such a step; the unchanged state of a pending, running or completed job (a
            no-op); ``None`` for an unknown id.
        :raises UniqueKeyHeld: another unfinished job holds this job's ``unique_key``;
            nothing changed.
        :raises RetryRefused: a workflow step that needs the result of a dependency
            that ended discarded or cancelled (retry that one first); nothing changed.

        >>> job.retry()
        <JobState.AVAILABLE: 'available'>
        """
        try:
            with self.app.connection() as conn:
                (state,) = conn.execute(q("retry"), {"id": self.id}).fetchone()
        except psycopg.errors.UniqueViolation as e:
            raise UniqueKeyHeld(self.id, refusal_message(e)) from None
        except psycopg.errors.ObjectNotInPrerequisiteState as e:
            raise RetryRefused(self.id, refusal_message(e)) from None
        self._row = None
        return JobState(state) if state else None

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Waits on ``LISTEN pgqueue_done`` (completions notify the ids they finish), so
        it does not poll; it re-reads the row when its id is announced, and every
        30 s as a safety net.

        :param timeout: seconds to wait at most; ``None`` waits indefinitely.
        :returns: the task's return value (tagged JSON decoded).
        :raises JobFailed: the job was discarded (``.errors`` holds the history).
        :raises JobCancelled: the job was cancelled.
        :raises ResultTimeout: ``timeout`` elapsed first.
        """
        deadline = result_deadline(timeout)
        while True:
            try:
                return self._wait_result(deadline, timeout)
            except psycopg.OperationalError:
                # The waiting connection was lost (server restart, idle timeout,
                # pg_terminate_backend): listen again on a new one, re-reading the row
                # first, so a notification missed meanwhile costs nothing.
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    async def aresult(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result, from async code.

        :meth:`result` for an event loop: waits on ``LISTEN pgqueue_done`` with a psycopg
        ``AsyncConnection`` of its own (autocommit; it never joins a caller's
        transaction), so it does not poll and does not block the loop; it re-reads the
        row when its id is announced, and every 30 s as a safety net. A lost connection
        is replaced, as in :meth:`result`. Cancelling the awaiting task closes the
        connection.

        :param timeout: seconds to wait at most; ``None`` waits indefinitely.
        :returns: the task's return value (tagged JSON decoded).
        :raises JobFailed: the job was discarded (``.errors`` holds the history).
        :raises JobCancelled: the job was cancelled.
        :raises ResultTimeout: ``timeout`` elapsed first.

        >>> value = await add.enqueue(2, 3).aresult(timeout=10)
        """
        import asyncio
        deadline = result_deadline(timeout)
        while True:
            try:
                return await self._await_result(deadline, timeout)
            except psycopg.OperationalError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    def _outcome(self, row: Any) -> tuple[bool, Any]:
        """``(True, result)`` for a completed job, ``(False, None)`` for an unfinished or
        invisible one; raises :class:`JobFailed`/:class:`JobCancelled`."""
        if row is not None:
            state, result, errors = row
            if state == "completed":
                self._row = None
                return True, serialization.decode(result)
            if state == "discarded":
                raise JobFailed(self.id, state, errors)
            if state == "cancelled":
                raise JobCancelled(self.id, state, errors)
        return False, None

    def _timeout(self, timeout: float | None, row: Any, workers: Any) -> ResultTimeout:
        return ResultTimeout(f"job {self.id} did not finish within {timeout} s "
                             f"(state {row[0] if row else 'not visible'})"
                             + _no_worker_hint(row, workers))

    def _wait_result(self, deadline: float | None, timeout: float | None) -> Any:
        with psycopg.connect(self.app.conninfo, autocommit=True) as conn:
            conn.execute("listen pgqueue_done")
            while True:
                row = conn.execute(q("job_state"), {"id": self.id}).fetchone()
                done, value = self._outcome(row)
                if done:
                    return value
                wait = _wait_for(deadline)
                if wait <= 0:
                    workers = None
                    if _may_lack_worker(row):
                        with contextlib.suppress(psycopg.Error):
                            workers = conn.execute(q("job_workers"), {"id": self.id}).fetchone()
                    raise self._timeout(timeout, row, workers)
                me = str(self.id)
                end = time.monotonic() + wait
                for n in conn.notifies(timeout=wait):
                    if me in n.payload.split(","):
                        break
                    if time.monotonic() >= end:
                        break

    async def _await_result(self, deadline: float | None, timeout: float | None) -> Any:
        conn = await psycopg.AsyncConnection.connect(self.app.conninfo, autocommit=True)
        async with conn:
            await conn.execute("listen pgqueue_done")
            while True:
                row = await (await conn.execute(q("job_state"), {"id": self.id})).fetchone()
                done, value = self._outcome(row)
                if done:
                    return value
                wait = _wait_for(deadline)
                if wait <= 0:
                    workers = None
                    if _may_lack_worker(row):
                        with contextlib.suppress(psycopg.Error):
                            cur = await conn.execute(q("job_workers"), {"id": self.id})
                            workers = await cur.fetchone()
                    raise self._timeout(timeout, row, workers)
                me = str(self.id)
                async with contextlib.aclosing(conn.notifies(timeout=wait)) as notes:
                    async for n in notes:
                        if me in n.payload.split(","):
                            break


def result_deadline(timeout: Any) -> float | None:
    """The monotonic deadline of a wait for a result of ``timeout`` seconds (``None``:
    none).

    :raises ValueError: ``timeout`` is not a number of seconds (NaN waited forever).
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or math.isnan(timeout):
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    return time.monotonic() + timeout


def _wait_for(deadline: float | None) -> float:
    """Seconds to wait for a notification: until ``deadline``, at most 30 (the safety
    net re-read); <= 0 once the deadline has passed."""
    return 30.0 if deadline is None else min(30.0, deadline - time.monotonic())


def refusal_message(e: psycopg.Error) -> str:
    """The server's message of a refused retry (a unique key held, a dependency that
    did not complete), with its hint."""
    d = e.diag
    return f"{d.message_primary}" + (f" ({d.message_hint})" if d.message_hint else "")


def _may_lack_worker(row: Any) -> bool:
    """Whether a timed-out job waits for a worker (worth asking ``job_workers``)."""
    return row is not None and row[0] in ("available", "scheduled", "retryable")


def _no_worker_hint(row: Any, found: Any) -> str:
    """A waiting job that no live worker can claim: say so, for the timeout message.

    :param row: the job's ``job_state`` row; ``found``: its ``job_workers`` row (task,
        queue, whether a live worker serves it), or ``None`` when not read.
    """
    if not _may_lack_worker(row) or found is None or found[2]:
        return ""
    task, queue, _ = found
    return (f"; no live worker runs task {task!r} from queue {queue!r}: start one whose "
            "app registers that task (pgqueue worker --app MODULE) and claims that queue")
