"""The objects the worker's components share: the running-job records and the wake-up.

Owns no connection and runs no SQL. :class:`RunningJobs` is the set of jobs this
worker claimed and whose outcome is not recorded yet, with the count of functions
executing now (the busy slots); :class:`WakeUp` is the claim loop's alarm clock, set by
whoever learns that a claim may find work (a notification, a freed slot, a recorded
retry, a rescue, a reconnect).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..app import Task
from ..context import JobContext

log = logging.getLogger("pgqueue.worker")


@dataclasses.dataclass(eq=False)
class _Running:
    """One claimed attempt, from its claim until its outcome is recorded."""

    id: int
    attempt: int
    task: Task | None
    name: str
    queue: str
    args: Any
    kwargs: Any
    ctx: JobContext
    timeout: float | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    abandoned: bool = False          # outcome decided elsewhere (shutdown hand-back)
    timed_out: bool = False          # a sync attempt ran past its timeout
    future: Any = None               # concurrent.futures.Future of an async task
    inputs: Any = None               # workflow inputs (JSON array) passed before args
    ended: float | None = None       # monotonic time the outcome was known (for metrics)
    exc: BaseException | None = None  # the exception of a failed attempt (for error hooks)
    #: how the executor running the attempt interrupts it on cancellation (after
    #: ``ctx`` was flagged), e.g. cancel an async task's future; None: the flag only
    interrupt: Callable[[], None] | None = None
    #: the executor enforces the timeout itself (asyncio, processes): the claim loop's
    #: timeout check leaves the attempt alone
    own_timeout: bool = False
    #: its queue or task has a concurrency limit: recording its outcome frees a slot
    #: that claims held back by the limit wait for (claim again at once)
    limited: bool = False
    #: the claim loop watches its timeout (set when it is owned)
    watched: bool = False


class WakeUp:
    """The claim loop's wake-up: an event, and whether a claim may find work.

    :meth:`set` wakes the loop for a look at free slots and due times;
    :meth:`more` also tells it to claim (a job was announced or may be due).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.pending = True            # a claim may find work

    def set(self) -> None:
        self.event.set()

    def more(self) -> None:
        self.pending = True
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    def wait(self, timeout: float | None) -> bool:
        return self.event.wait(timeout)


class RunningJobs:
    """The jobs this worker owns and has not recorded yet (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[int, _Running] = {}
        self.busy = 0                   # functions executing now
        self.limited = 0                # owned jobs of a queue or task with a limit
        self.watched = 0                # owned jobs whose timeout the claim loop watches

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, r: _Running) -> None:
        """Own ``r`` and count its slot as busy.

        A record of an earlier attempt of the same job is replaced: the job was claimed
        again, so that attempt lost it (rescued while this worker was cut off, then
        claimed back here). If its function still runs, it is cancelled: its outcome
        would be fenced out, and it would run on beside the attempt that replaced it.
        """
        r.watched = bool(r.timeout) and not r.own_timeout
        with self.lock:
            old = self.jobs.get(r.id)
            if old is not None:
                self.limited -= old.limited
                self.watched -= old.watched
            self.jobs[r.id] = r
            self.busy += 1
            self.limited += r.limited
            self.watched += r.watched
        if old is not None and old.attempt != r.attempt and old.ended is None \
                and not old.ctx.cancelled:
            log.warning("job %s attempt %s was claimed again (attempt %s) while it still "
                        "ran here: it lost the job, stopping it", r.id, old.attempt,
                        r.attempt)
            self.cancel(old)

    def release_slot(self) -> None:
        """The function of an attempt returned: its slot is free (the job stays owned
        until its outcome is recorded)."""
        with self.lock:
            self.busy -= 1

    def get(self, job_id: int) -> _Running | None:
        with self.lock:
            return self.jobs.get(job_id)

    def snapshot(self) -> list[_Running]:
        with self.lock:
            return list(self.jobs.values())

    def drop(self, r: _Running) -> None:
        """Remove ``r``, unless the job was claimed again since (a retry due at once can
        be re-claimed before this attempt's record lands)."""
        with self.lock:
            self._drop(r)

    def _drop(self, r: _Running) -> None:
        if self.jobs.get(r.id) is r:
            del self.jobs[r.id]
            self.limited -= r.limited
            self.watched -= r.watched

    def drop_all(self, rs: list[_Running]) -> None:
        with self.lock:
            for r in rs:
                self._drop(r)

    def is_abandoned(self, r: _Running) -> bool:
        with self.lock:
            return r.abandoned

    def abandon_all(self) -> list[_Running]:
        """Mark every owned attempt not yet abandoned as abandoned; return them."""
        with self.lock:
            left = [r for r in self.jobs.values() if not r.abandoned]
            for r in left:
                r.abandoned = True
        return left

    def cancel(self, r: _Running) -> None:
        """Ask the attempt to stop: flag its context, then let its executor interrupt it."""
        r.ctx._cancel.set()
        if r.interrupt is not None:
            r.interrupt()

    def expired(self, now: float) -> list[_Running]:
        """Attempts watched by the claim loop that ran past their timeout (each returned
        once: it is marked ``timed_out``)."""
        out: list[_Running] = []
        if not self.watched:     # read without the lock: a job added meanwhile is next
            return out
        with self.lock:
            for r in self.jobs.values():
                if (r.watched and not r.abandoned and not r.timed_out
                        and now - r.started >= r.timeout):
                    r.timed_out = True
                    out.append(r)
        return out

    def next_deadline(self, now: float) -> float:
        """Seconds until the earliest timeout the claim loop watches (at most 3600)."""
        soonest = 3600.0
        if not self.watched:
            return soonest
        with self.lock:
            for r in self.jobs.values():
                if r.watched and not r.abandoned and not r.timed_out:
                    soonest = min(soonest, r.started + r.timeout - now)
        return max(0.0, soonest)

    def __iter__(self) -> Iterator[_Running]:
        return iter(self.snapshot())
