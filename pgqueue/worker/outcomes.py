"""Turning what an attempt did into an outcome for the completer.

Owns the error entry's shape (``{"type", "message", "traceback"}``, storable by
PostgreSQL), the decision between retry and discard for each kind of exception, and
:class:`Outcomes`, which the executors call: it puts ``("complete", r, result_json)``
or ``("fail", r, (error, discard, retry_delay))`` on the completion queue. Runs no SQL.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue as queue_mod
import time
import traceback
from typing import Any

from .. import serialization
from ..retry import MAX_DELAY
from ..errors import Cancelled, Discard, RetryLater
from .running import RunningJobs, _Running

log = logging.getLogger("pgqueue.worker")

#: characters of an error message or traceback kept per attempt (head and tail)
ERROR_TEXT_LIMIT = 64 * 1024


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL characters and lone surrogates escaped,
    at most ``ERROR_TEXT_LIMIT`` characters (its start and end, the middle cut out)."""
    if len(text) > ERROR_TEXT_LIMIT:
        half = ERROR_TEXT_LIMIT // 2
        text = (f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n"
                f"{text[-half:]}")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _error_dict(exc: BaseException, tb: str | None = None) -> dict[str, Any]:
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException as e:  # noqa: BLE001 - a broken __str__ must not lose the job
        message = f"<{cls.__qualname__}: str() of the exception raised {type(e).__name__}>"
    if tb is None:
        tb = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    return {"type": _storable(f"{cls.__module__}.{cls.__qualname__}"),
            "message": _storable(message), "traceback": _storable(tb)}


def _retry_delay(delay: Any) -> float | None:
    """A RetryLater delay the database can add to now(): seconds clamped to
    0..MAX_DELAY; None (the task's backoff) for a value that is not a number."""
    if isinstance(delay, dt.timedelta):
        delay = delay.total_seconds()
    try:
        delay = float(delay)
    except (TypeError, ValueError):
        return None
    if delay != delay:
        return None
    return min(max(delay, 0.0), MAX_DELAY)


def _parse(text: str, what: str) -> Any:
    """Parse a job's JSON document (claimed as text) and decode its tags.

    :raises Discard: the document cannot be read by this worker (an integer of more
        digits than ``sys.get_int_max_str_digits()``, nesting deeper than the recursion
        limit, a malformed tag); retrying would fail the same way.
    """
    try:
        return serialization.loads(text)
    except RecursionError:
        raise Discard(f"the job's {what} are nested too deeply to be read here; "
                      "flatten them and enqueue the job again") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is permanent
        raise Discard(f"the job's {what} cannot be read: {type(e).__name__}: {e}") from None


def _timeout_error(r: _Running) -> dict[str, Any]:
    return {"type": "builtins.TimeoutError",
            "message": f"attempt exceeded its timeout of {r.timeout} s",
            "traceback": None}


class _Abandoned(Exception):
    """Internal: the attempt's outcome was decided elsewhere; roll back and forget it.

    ``owner``, when given (``fenced`` is then true), is ``(attempt, state, worker_id)``
    of the job after this worker's completion was fenced out (``None``: row gone)."""

    def __init__(self, **kw: Any):
        super().__init__()
        self.fenced = "owner" in kw
        self.owner = kw.get("owner")


class _Unstorable(Exception):
    """Internal: a transactional task's result cannot be stored; its writes roll back and
    the job is discarded (as for any task: the same result would fail every retry)."""

    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.exc = exc


def _result_payload(result: Any) -> str:
    """The stored form of a transactional task's result, or :class:`_Unstorable`."""
    try:
        return serialization.dumps(result, "result")
    except Exception as e:  # noqa: BLE001 - every refusal is permanent
        raise _Unstorable(e) from e


def call_args(r: _Running) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of the attempt's function, decoded.

    :raises Discard: the job's documents cannot be read, or have the wrong shape.
    """
    args = _parse(r.args, "arguments (args)")
    kwargs = _parse(r.kwargs, "keyword arguments (kwargs)")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        # only a direct insert can store these (pgqueue.enqueue refuses them)
        raise Discard("the job's args must be a JSON array and its kwargs a JSON "
                      f"object, got {type(args).__name__} and {type(kwargs).__name__}")
    if r.inputs is not None:  # a workflow step: previous result(s) come first
        inputs = _parse(r.inputs, "workflow inputs")
        if isinstance(inputs, dict) and "pgqueue_inputs_error" in inputs:
            raise Discard("the workflow inputs of this step could not be read: "
                          f"{inputs['pgqueue_inputs_error']}")
        args = [*inputs, *args]
    if r.task is not None and r.task.pass_context:
        args = [r.ctx, *args]
    return args, kwargs


def classify(r: _Running, e: BaseException) -> tuple[dict[str, Any], bool, float | None]:
    """``(error entry, discard, retry delay)`` for the attempt ``r`` that raised ``e``."""
    if isinstance(e, _Unstorable):
        return _error_dict(e.exc), True, None
    err = _error_dict(e)
    if isinstance(e, RetryLater):
        return err, False, _retry_delay(e.delay)
    if isinstance(e, Discard):
        return err, True, None
    retry = r.task.retry.retry if r.task is not None else True
    if not isinstance(e, Exception) and not isinstance(e, Cancelled):
        log.error("job %s raised %s", r.id, type(e).__name__)
    return err, not retry, None


class Outcomes:
    """Where executors report how each attempt ended.

    :param running: the worker's :class:`RunningJobs`.
    :param completions: the completion queue the completer drains.
    :param stats: the worker's counters (``completed`` for transactional completions).
    :param observer: the :class:`~pgqueue.observe.Observer`, or ``None``.
    """

    def __init__(self, running: RunningJobs, completions: queue_mod.SimpleQueue,
                 stats: dict[str, int], observer: Any = None):
        self.running = running
        self.completions = completions
        self.stats = stats
        self.observer = observer

    def success(self, r: _Running, result: Any) -> None:
        """The function returned ``result`` (any value; stored as JSON)."""
        r.ended = time.monotonic()
        if r.timed_out:
            self.failure(r, _timeout_error(r))
            return
        if r.ctx._replacement is not None:   # ctx.replace: the return value is ignored
            result = None
        try:
            payload = serialization.dumps(result, "result")
        except Exception as e:  # noqa: BLE001 - an unstorable result fails the job for good
            self.failure(r, _error_dict(e), discard=True)
            return
        self.success_json(r, payload)

    def success_json(self, r: _Running, payload: str) -> None:
        """The function returned, and ``payload`` is its result as stored JSON."""
        if r.ended is None:
            r.ended = time.monotonic()
        if self.running.is_abandoned(r):
            return
        self.completions.put(("complete" if r.ctx._replacement is None else "replace", r,
                              payload))

    def committed(self, r: _Running) -> None:
        """A transactional task recorded its own completion in its transaction."""
        self.running.drop(r)
        self.stats["completed"] += 1
        if self.observer is not None:
            self.observer.completed([r])

    def exception(self, r: _Running, e: BaseException) -> None:
        """The function raised ``e`` (or the worker did on its behalf)."""
        if isinstance(e, _Abandoned):
            self.running.drop(r)
            if e.fenced and self.observer is not None:
                self.observer.fenced(r, "success", e.owner)
            return
        if self.running.is_abandoned(r):
            return
        if r.timed_out:
            self.failure(r, _timeout_error(r))
            return
        r.exc = e.exc if isinstance(e, _Unstorable) else e
        err, discard, delay = classify(r, e)
        self.failure(r, err, discard=discard, retry_delay=delay)

    def failure(self, r: _Running, err: dict[str, Any], *, discard: bool = False,
                retry_delay: float | None = None) -> None:
        """Record a failed attempt with the error entry ``err``."""
        # The outcome is logged once recorded, with the state it led to.
        if r.ended is None:
            r.ended = time.monotonic()
        self.completions.put(("fail", r, (err, discard, retry_delay)))

    def unknown_task(self, r: _Running) -> None:
        self.failure(r, {"type": "pgqueue.UnknownTask",
                         "message": f"task {r.name!r} is not registered in this worker",
                         "traceback": None}, discard=False)


def completion(worker_id: Any, r: _Running, payload: Any) -> tuple[str, dict[str, Any]]:
    """The query recording a success: ``complete_one``, or ``replace_step`` for a
    workflow step that called ``ctx.replace`` (its replacement and its completion in one
    transaction)."""
    if r.ctx._replacement is None:
        return "complete_one", {"worker_id": worker_id, "id": r.id, "attempt": r.attempt,
                                "result": payload}
    return "replace_step", {"worker_id": worker_id, "id": r.id, "attempt": r.attempt,
                            **r.ctx._replacement}
