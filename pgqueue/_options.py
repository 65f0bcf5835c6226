"""Checks of the options and arguments a job is enqueued with, shared by tasks,
workflows and the CLI (the enqueue layer: nothing here imports the app).

Each ``_validate_*`` returns the value as stored, or raises
:class:`~pgqueue.errors.EnqueueError` saying what was wrong.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from . import serialization
from .errors import EnqueueError
from .retry import MAX_DELAY

#: longest unique_key in UTF-8 bytes (a btree index entry must fit a third of a page)
MAX_UNIQUE_KEY_BYTES = 1000
#: run_at range (constraint jobs_run_at_in_range): a day inside years 1 to 9999 at each
#: end, so the time reads back as a datetime in every time zone
MIN_RUN_AT = dt.datetime(1, 1, 2, tzinfo=dt.timezone.utc)
MAX_RUN_AT = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)


def check_call_args(args: Any, kwargs: Any, example: str) -> None:
    """Refuse ``args``/``kwargs`` that would be taken apart or cannot be keywords: a str
    as args would become one argument per character, a dict one per key.

    :raises TypeError: saying what was wrong, with ``example`` of the right call.
    """
    if isinstance(args, (str, bytes, bytearray, dict, set, frozenset)) or \
            not isinstance(args, Iterable):
        raise TypeError(f"args must be a list or tuple of positional arguments, not "
                        f"{type(args).__name__}: wrap a single argument, {example}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict of keyword arguments, not "
                        f"{type(kwargs).__name__}")


def _validate_options(*, queue: Any = None, priority: Any = None,
                      max_attempts: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if queue is not None:
        if (not isinstance(queue, str) or not queue or len(queue) > 128 or "\x00" in queue
                or not serialization._utf8_ok(queue)):
            raise EnqueueError(f"queue must be a non-empty string of at most 128 characters, "
                               f"valid UTF-8 without NUL, got {queue!r}")
        out["queue"] = queue
    if priority is not None:
        if type(priority) is not int or not -32768 <= priority <= 32767:
            raise EnqueueError(f"priority must be an int in -32768..32767 (higher runs first), "
                               f"got {priority!r}")
        out["priority"] = priority
    if max_attempts is not None:
        if type(max_attempts) is not int or max_attempts < 1 or max_attempts > 2**31 - 1:
            raise EnqueueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        out["max_attempts"] = max_attempts
    return out


def _validate_unique_key(key: Any) -> str | None:
    if key is None:
        return None
    if (not isinstance(key, str) or not key or "\x00" in key or not serialization._utf8_ok(key)
            or len(key.encode("utf-8")) > MAX_UNIQUE_KEY_BYTES):
        raise EnqueueError(f"unique_key must be a non-empty string of valid UTF-8 without NUL, "
                           f"at most {MAX_UNIQUE_KEY_BYTES} bytes (hash a longer key), "
                           f"got {key[:80] if isinstance(key, str) else key!r}")
    return key


def _validate_task_name(name: Any) -> str:
    if (not isinstance(name, str) or not name or len(name) > 512 or "\x00" in name
            or not serialization._utf8_ok(name)):
        raise EnqueueError(f"a task name must be a non-empty string of at most 512 characters, "
                           f"valid UTF-8 without NUL, got {name[:80] if isinstance(name, str) else name!r}")
    return name


def _validate_when(delay: Any, run_at: Any) -> tuple[float | None, dt.datetime | None]:
    if delay is not None and run_at is not None:
        raise EnqueueError("give delay or run_at, not both")
    if delay is not None:
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay != delay:
            raise EnqueueError(f"delay must be seconds (a number) or a timedelta, got {delay!r}")
        if delay < 0:
            raise EnqueueError(f"delay must be >= 0 seconds, got {delay}; "
                               "use run_at for an absolute time")
        if delay > MAX_DELAY:
            raise EnqueueError(f"delay must be at most {MAX_DELAY:.0f} seconds (100 years), "
                               f"got {delay}; use run_at for an absolute time")
        # PostgreSQL counts time in whole microseconds: a positive delay under half of
        # one would round to none, and the job would be available at once.
        return (max(float(delay), 1e-6) if delay > 0 else 0.0), None
    if run_at is not None:
        if not isinstance(run_at, dt.datetime):
            raise EnqueueError(f"run_at must be an aware datetime, got {run_at!r}")
        if run_at.tzinfo is None or run_at.tzinfo.utcoffset(run_at) is None:
            raise EnqueueError(f"run_at {run_at.isoformat()} is a naive datetime; "
                               "attach a timezone, e.g. datetime.now(timezone.utc) + ...")
        try:
            utc = run_at.astimezone(dt.timezone.utc)
        except OverflowError:
            utc = None
        if utc is None or not (MIN_RUN_AT <= utc < MAX_RUN_AT):
            raise EnqueueError(f"run_at {run_at.isoformat()} is outside the range a job can be "
                               "scheduled in (0001-01-02 to "
                               "9999-12-31 UTC); for \"as soon as possible\" "
                               "give neither run_at nor delay")
        return None, run_at
    return None, None


def _validate_key(key: Any, what: str) -> str | None:
    if key is None:
        return None
    if (not isinstance(key, str) or not key or len(key) > 512 or "\x00" in key
            or not serialization._utf8_ok(key)):
        raise EnqueueError(f"{what} must be a non-empty string of at most 512 characters, "
                           f"valid UTF-8 without NUL, got "
                           f"{key[:80] if isinstance(key, str) else key!r}")
    return key


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
            or not 0 <= value <= MAX_DELAY):
        raise EnqueueError(f"{what} must be seconds (a number >= 0) or a timedelta, "
                           f"got {value!r}")
    return float(value)


def _validate_debounce(debounce: Any, key: Any, maximum: Any, opts: dict[str, Any],
                       task_name: str) -> dict[str, Any]:
    if debounce is None:
        if key is not None or maximum is not None:
            raise EnqueueError("debounce_key and debounce_max need debounce=SECONDS")
        return {"debounce": None, "debounce_key": None, "debounce_max": None}
    if opts["delay"] is not None or opts["run_at"] is not None or opts["unique_key"] is not None:
        raise EnqueueError("debounce sets the due time and the key itself: give no delay, "
                           "run_at or unique_key with it")
    return {"debounce": _seconds(debounce, "debounce"),
            "debounce_key": _validate_key(key if key is not None else task_name, "debounce_key"),
            "debounce_max": None if maximum is None else _seconds(maximum, "debounce_max")}
