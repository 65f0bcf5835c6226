"""What a worker tells the outside world about its jobs: logs, outcome hooks, metrics.

A :class:`~pgqueue.Worker` creates one :class:`Observer` at start when anything is
listening (Prometheus metrics, an outcome or error hook, or the ``pgqueue.worker`` logger
enabled at WARNING or below) and calls it once per outcome; with nothing listening the
worker keeps ``None`` and pays one ``is not None`` check per outcome.

Every committed outcome becomes one :class:`pgqueue.hooks.Outcome`, handed to the
subscribers of the hook mechanism (:mod:`pgqueue.hooks`): the worker's Prometheus
metrics at once, on the completer thread (cheap counters); then, on a dedicated thread so
that a slow or failing hook never delays recording other outcomes, the error hooks and
the ``on_outcome`` hooks (global ones first, then the app's, in registration order).

Error hooks (``@app.on_error`` and ``@app.task(on_error=...)``) are one such subscriber:
for failed outcomes they receive an :class:`ErrorContext`, the task's own hook before the
app's. An exception raised by any hook is logged (``pgqueue.worker``, ERROR) and
otherwise ignored.

Log lines carry structured ``extra`` fields: ``job_id``, ``task``, ``queue``,
``attempt``, ``worker_id`` and ``state`` (plus ``duration`` in seconds, ``error_type``
and ``retry_at`` where they apply), one line per state change made by this worker, at a
level that says whether anyone needs to look:

========================  =======  ===================================================
outcome                   level    line
========================  =======  ===================================================
running, completed        DEBUG    one per job (a busy worker's log is not flooded)
cancelled, rescued        INFO     the job and the attempt
retryable                 WARNING  the exception's type and message, the next attempt
discarded                 ERROR    the exception's type and message, full traceback
fenced out                WARNING  a late outcome of this worker was rejected: the job,
                                   the attempt it held, the attempt that owns it now
========================  =======  ===================================================
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import queue as queue_mod
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import serialization
from .hooks import Outcome

if TYPE_CHECKING:  # pragma: no cover
    import psycopg

    from .worker import Worker
    from .worker.running import _Running

__all__ = ["ErrorContext", "ErrorHook", "Observer"]

log = logging.getLogger("pgqueue.worker")

#: seconds ``close()`` waits for queued error hooks to finish at worker shutdown
HOOK_DRAIN_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class ErrorContext:
    """A failed attempt, as an error hook receives it (after its state was committed).

    :ivar job_id: the job's id (int).
    :ivar task: task name (str).
    :ivar queue: queue name (str).
    :ivar args: positional arguments, decoded (list); the stored tagged JSON if decoding
        failed.
    :ivar kwargs: keyword arguments, decoded (dict).
    :ivar attempt: number of the failed attempt, 1-based (int).
    :ivar max_attempts: attempts allowed (int).
    :ivar worker_id: the worker process instance that ran the attempt (UUID).
    :ivar exception: the exception the task raised. For failures without a Python
        exception object (a sync task's timeout detected by the worker, a task this worker
        does not know) a stand-in: ``TimeoutError`` or ``RuntimeError`` with the message.
    :ivar traceback: the formatted traceback (str), as stored in the job's ``errors``;
        empty when there is none.
    :ivar error: the entry as stored in ``pgqueue.jobs.errors`` without the database's
        additions: ``{"type", "message", "traceback"}``.
    :ivar state: the job's state after this failure: ``"retryable"`` (another attempt is
        scheduled), ``"discarded"`` (no more attempts) or ``"cancelled"``.
    :ivar retry_at: when the next attempt becomes due (aware ``datetime``, database
        clock), or ``None`` when no retry is scheduled.
    """

    job_id: int
    task: str
    queue: str
    args: Any
    kwargs: Any
    attempt: int
    max_attempts: int
    worker_id: uuid.UUID
    exception: BaseException
    traceback: str
    error: dict[str, Any]
    state: str
    retry_at: dt.datetime | None

    @property
    def will_retry(self) -> bool:
        """``True`` when another attempt is scheduled (``state == "retryable"``)."""
        return self.state == "retryable"

    @property
    def log_extra(self) -> dict[str, Any]:
        """The structured fields pgqueue puts on its own log records for this job."""
        return {"job_id": self.job_id, "task": self.task, "queue": self.queue,
                "attempt": self.attempt, "worker_id": str(self.worker_id), "state": self.state}


#: an error hook: called with one :class:`ErrorContext`; its return value is ignored
ErrorHook = Callable[[ErrorContext], Any]


def _extra(w: Worker, r: _Running, state: str, **more: Any) -> dict[str, Any]:
    d = {"job_id": r.id, "task": r.name, "queue": r.queue, "attempt": r.attempt,
         "worker_id": str(w.id), "state": state}
    d.update(more)
    return d


def _stand_in(err: dict[str, Any]) -> BaseException:
    msg = str(err.get("message") or err.get("type") or "failed")
    return TimeoutError(msg) if err.get("type") == "builtins.TimeoutError" else RuntimeError(msg)


class Observer:
    """Fans one worker's outcomes out to logs, metrics and error hooks.

    Every method is called by the worker after the corresponding change was committed
    (except :meth:`started`, called right after the claim committed); none raises.

    :param worker: the worker observed.
    :param metrics: a :class:`pgqueue.metrics.WorkerMetrics` or ``None``.
    """

    def __init__(self, worker: Worker, metrics: Any = None):
        self.worker = worker
        self.metrics = metrics
        self.app_hooks: list[ErrorHook] = list(getattr(worker.app, "error_hooks", ()))
        self.has_error_hooks = bool(self.app_hooks) or any(
            getattr(t, "on_error", None) is not None for t in worker.app.tasks.values())
        #: subscribers called at once, on the completer thread (the worker's metrics)
        self.inline: list[Callable[[Outcome], Any]] = (
            [metrics.on_outcome] if metrics is not None else [])
        #: subscribers called on the hook thread: error hooks, then on_outcome hooks
        self.deferred: list[Callable[[Outcome], Any]] = (
            ([self._error_hooks] if self.has_error_hooks else [])
            + worker.app.hooks.outcome_hooks())
        self.has_hooks = bool(self.deferred)
        self._hook_q: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._hook_thread: threading.Thread | None = None
        self._hook_lock = threading.Lock()
        self._running: _Running | None = None

    @classmethod
    def wanted(cls, worker: Worker) -> bool:
        """Whether anything listens: metrics configured, a hook registered, WARNING logs
        on (failures are logged at WARNING and ERROR)."""
        return (worker.metrics_port is not None or worker.metrics_registry is not None
                or bool(getattr(worker.app, "error_hooks", ()))
                or worker.app.hooks.has_outcome
                or any(getattr(t, "on_error", None) is not None
                       for t in worker.app.tasks.values())
                or log.isEnabledFor(logging.WARNING))

    # -- outcomes ------------------------------------------------------------------

    def started(self, r: _Running, latency: float | None) -> None:
        """A job was claimed; ``latency`` is seconds from ``run_at`` to the claim (DB clock)."""
        if self.metrics is not None:
            self.metrics.started(r.queue, r.name, latency)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job %s %s attempt %s/%s running", r.id, r.name, r.attempt,
                      r.ctx.max_attempts, extra=_extra(self.worker, r, "running"))

    def completed(self, rs: list[_Running]) -> None:
        """Jobs recorded as completed (only those still owned: fenced-out ones excluded)."""
        now = time.monotonic()
        debug = log.isEnabledFor(logging.DEBUG)
        inline, deferred = self.inline, self.deferred
        for r in rs:
            took = (r.ended or now) - r.started
            if inline or deferred:
                out = Outcome(r.ctx, "completed", duration=took)
                self._tell(inline, out, r)
                if deferred:
                    self._queue(out, r)
            if debug:
                log.debug("job %s %s attempt %s completed in %.3f s", r.id, r.name,
                          r.attempt, took,
                          extra=_extra(self.worker, r, "completed", duration=took))

    def failed(self, items: list[tuple[_Running, dict[str, Any], str | None]],
               retry_at: dict[int, dt.datetime] | None) -> None:
        """Failed attempts with the state ``pgqueue.fail`` returned (``None``: fenced out)."""
        now = time.monotonic()
        for r, err, state in items:
            if state is None:
                continue
            took = (r.ended or now) - r.started
            when = retry_at.get(r.id) if retry_at else None
            out = None
            if self.inline or self.deferred:
                out = Outcome(r.ctx, state, exception=r.exc if r.exc is not None
                              else _stand_in(err), error=err, duration=took, retry_at=when)
                self._tell(self.inline, out, r)
            self._log_failure(r, err, state, took, when)
            if self.deferred:
                self._queue(out, r)

    def _log_failure(self, r: _Running, err: dict[str, Any], state: str, took: float,
                     when: dt.datetime | None) -> None:
        """retryable: WARNING with the exception's type and message; discarded: ERROR
        with the full traceback; cancelled: INFO."""
        level = {"retryable": logging.WARNING, "discarded": logging.ERROR}.get(state,
                                                                              logging.INFO)
        if not log.isEnabledFor(level):
            return
        extra = _extra(self.worker, r, state, duration=took, error_type=err.get("type"),
                       retry_at=when)
        what = {"retryable": "will be retried", "discarded": "discarded",
                "cancelled": "cancelled"}.get(state, state)
        head = (f"job {r.id} {r.name} attempt {r.attempt}/{r.ctx.max_attempts} failed, "
                f"{what}{f' at {when.isoformat()}' if when else ''}: "
                f"{err.get('type')}: {err.get('message')}")
        if state != "discarded":
            log.log(level, "%s", head, extra=extra)
            return
        exc = r.exc
        if exc is not None and exc.__traceback__ is not None:
            log.error("%s", head, exc_info=(type(exc), exc, exc.__traceback__), extra=extra)
        else:   # no exception object here (a timeout, an unreadable document): as stored
            tb = err.get("traceback")
            log.error("%s%s", head, f"\n{tb.rstrip()}" if tb else " (no traceback)",
                      extra=extra)

    def fenced(self, r: _Running, outcome: str, owner: tuple[Any, ...] | None) -> None:
        """A late outcome of this worker was rejected by the attempt token: the job was
        rescued (its worker looked dead) and is now another attempt's, or gone.

        :param outcome: ``"success"`` or ``"failure"``.
        :param owner: ``(attempt, state, worker_id)`` of the job now, or ``None`` when the
            row is gone.
        """
        if not log.isEnabledFor(logging.WARNING):
            return
        if owner is None:
            now = "the job no longer exists"
        else:
            attempt, state, worker_id = owner
            who = "this worker" if worker_id == self.worker.id else f"worker {worker_id}"
            now = (f"attempt {attempt} now owns the job ({state}, {who})"
                   if attempt != r.attempt else
                   f"the job was taken from this attempt ({state}, no new attempt yet)")
        log.warning("job %s %s: the %s of attempt %s was rejected, the job was rescued "
                    "from this worker meanwhile: %s", r.id, r.name, outcome, r.attempt, now,
                    extra=_extra(self.worker, r, "fenced", owner_attempt=(
                        owner[0] if owner is not None else None)))

    def rescued(self, conn: psycopg.Connection, rows: list[tuple[int, str]]) -> None:
        """Running jobs of dead workers that this worker's heartbeat rescued."""
        if self.metrics is None and not log.isEnabledFor(logging.INFO):
            return
        try:
            found = conn.execute("select id, queue, task, attempt from pgqueue.jobs "
                                 "where id = any(%s)", ([i for i, _ in rows],)).fetchall()
        except Exception:  # noqa: BLE001 - counting is best effort, never fail a heartbeat
            log.debug("cannot look up rescued jobs", exc_info=True)
            return
        states = dict(rows)
        for job_id, queue, task, attempt in found:
            if self.metrics is not None:
                self.metrics.rescued(queue, task)
            log.info("job %s %s attempt %s rescued from a dead worker (%s)", job_id, task,
                     attempt, states.get(job_id),
                     extra={"job_id": job_id, "task": task, "queue": queue, "attempt": attempt,
                            "worker_id": str(self.worker.id), "state": states.get(job_id)})

    def retry_times(self, conn: psycopg.Connection, rs: list[_Running],
                    states: list[str | None]) -> dict[int, dt.datetime] | None:
        """``run_at`` (database clock) of jobs just made retryable, read in the caller's
        transaction; ``None`` without error hooks (nothing to read, no round trip)."""
        if not self.has_hooks:
            return None
        ids = [r.id for r, state in zip(rs, states, strict=True) if state == "retryable"]
        if not ids:
            return None
        return dict(conn.execute("select id, run_at from pgqueue.jobs where id = any(%s)",
                                 (ids,)).fetchall())

    # -- outcome hooks -------------------------------------------------------------

    def _tell(self, subscribers: list[Callable[[Outcome], Any]], out: Outcome,
              r: _Running) -> None:
        for fn in subscribers:
            try:
                fn(out)
            except Exception:  # noqa: BLE001 - a subscriber never stops the worker
                log.exception("outcome hook %s raised for job %s",
                              getattr(fn, "__qualname__", repr(fn)), r.id,
                              extra=_extra(self.worker, r, out.state))

    def _queue(self, out: Outcome | None, r: _Running) -> None:
        self._hook_q.put((out, r))
        if self._hook_thread is None:
            with self._hook_lock:
                if self._hook_thread is None:
                    self._hook_thread = threading.Thread(
                        target=self._hook_loop, name="pgqueue-error-hooks", daemon=True)
                    self._hook_thread.start()

    def _hook_loop(self) -> None:
        while True:
            item = self._hook_q.get()
            if item is None:
                return
            out, r = item
            self._running = r    # for the error-hook subscriber (this thread only)
            self._tell(self.deferred, out, r)
            self._running = None

    def _error_hooks(self, out: Outcome) -> None:
        """The error hooks, as one outcome subscriber: for each failed attempt, the
        task's own hook, then the app's, with one :class:`ErrorContext`."""
        if not out.failed:
            return
        r = self._running
        task_hook = getattr(r.task, "on_error", None) if r.task is not None else None
        hooks = ([task_hook] if task_hook is not None else []) + self.app_hooks
        if not hooks:
            return
        try:
            ctx = self._context(r, out.error or {}, out.state, out.retry_at,
                                out.exception)
        except Exception:  # noqa: BLE001
            log.exception("cannot build the error context of job %s", r.id)
            return
        for hook in hooks:
            try:
                hook(ctx)
            except Exception:  # noqa: BLE001 - a hook never stops the worker
                log.exception("error hook %s raised for job %s",
                              getattr(hook, "__qualname__", repr(hook)), r.id,
                              extra=ctx.log_extra)

    def _context(self, r: _Running, err: dict[str, Any], state: str,
                 when: dt.datetime | None, exc: BaseException) -> ErrorContext:
        try:
            args = serialization.loads(r.args)
            kwargs = serialization.loads(r.kwargs)
        except Exception:  # noqa: BLE001 - undecodable arguments: hand over the raw JSON
            args, kwargs = r.args, r.kwargs
        return ErrorContext(
            job_id=r.id, task=r.name, queue=r.queue, args=args, kwargs=kwargs,
            attempt=r.attempt, max_attempts=r.ctx.max_attempts, worker_id=self.worker.id,
            exception=exc, traceback=err.get("traceback") or "",
            error={k: err.get(k) for k in ("type", "message", "traceback")},
            state=state, retry_at=when)

    # -- lifecycle -----------------------------------------------------------------

    def close(self, timeout: float = HOOK_DRAIN_SECONDS) -> None:
        """Run the error hooks still queued (for at most ``timeout`` s), stop metrics."""
        t = self._hook_thread
        if t is not None:
            self._hook_q.put(None)
            t.join(timeout)
            if t.is_alive():
                log.warning("error hooks still running after %.0f s; not waiting", timeout)
        if self.metrics is not None:
            self.metrics.close()
