"""Periodic jobs: when slots fall (:class:`Schedule`) and what a schedule enqueues
(:class:`PeriodicTask`).

A *slot* is the UTC instant a periodic job is due. Cron expressions are evaluated in
an IANA time zone with the ``cronsim`` library, whose daylight-saving rules are those
of the classic cron daemons:

- a wall-clock time that occurs twice (clocks go back) fires once, at its first
  occurrence;
- a wall-clock time that does not exist (clocks go forward) fires once, at the first
  instant after the gap;
- an expression with a step or a wildcard in the hour field (``*/15 * * * *``,
  ``0 * * * *``) follows real elapsed time through both transitions.

An interval schedule (``every=``) has slots aligned to the Unix epoch, whatever the
time zone: ``every=3600`` fires on the hour, UTC, and every worker computes the same
slots without talking to the others.

The worker's scheduler uses this same code, so ``Schedule(...).between(a, b)`` shows
exactly the slots a worker will fire.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import PgQueueError

__all__ = ["Schedule", "PeriodicTask", "ScheduleError", "CATCH_UP_POLICIES"]

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
CATCH_UP_POLICIES = ("latest", "all", "none")

#: the usual ``@`` shorthands, spelled as the five fields they stand for
ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class ScheduleError(PgQueueError, ValueError):
    """A schedule that cannot be built: a bad cron expression, interval, time zone,
    catch-up policy or name."""


def _aware(instant: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(instant, dt.datetime) or instant.tzinfo is None \
            or instant.utcoffset() is None:
        raise ScheduleError(f"{what} must be an aware datetime (with tzinfo), got {instant!r}")
    return instant


class Schedule:
    """When a periodic job is due: a cron expression in a time zone, or a fixed interval.

    :param cron: five fields (minute hour day-of-month month day-of-week; month and
        weekday names allowed, e.g. ``"0 9 * * MON-FRI"``) or an alias (``@hourly``,
        ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``, ``@annually``).
    :param every: seconds (int or float, at least 1) or a :class:`datetime.timedelta`.
    :param tz: IANA time zone name for ``cron`` (default ``"UTC"``); intervals ignore it.
    :raises ScheduleError: neither or both of ``cron``/``every``, a bad expression, an
        interval under 1 s, an unknown time zone.

    >>> s = Schedule(cron="30 2 * * *", tz="Europe/Berlin")
    >>> s.next_after(datetime(2026, 3, 29, tzinfo=timezone.utc))   # 02:30 does not exist
    datetime.datetime(2026, 3, 29, 1, 0, tzinfo=datetime.timezone.utc)
    """

    __slots__ = ("cron", "every", "tz", "_zone", "_fields")

    def __init__(self, *, cron: str | None = None, every: float | dt.timedelta | None = None,
                 tz: str = "UTC"):
        if (cron is None) == (every is None):
            raise ScheduleError("give exactly one of cron= (a cron expression) or every= "
                                "(seconds or a timedelta)")
        if not isinstance(tz, str) or not tz or "\x00" in tz:
            raise ScheduleError(f"tz must be an IANA time zone name such as 'Europe/Paris', "
                                f"got {tz!r}")
        try:
            self._zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"unknown time zone {tz!r}: use an IANA name such as "
                                "'UTC' or 'Europe/Paris'") from None
        self.tz = tz
        self.cron: str | None = None
        self.every: dt.timedelta | None = None
        self._fields: str | None = None
        if cron is not None:
            if not isinstance(cron, str):
                raise ScheduleError(f"cron must be a string, got {cron!r}")
            fields = ALIASES.get(cron.strip().lower(), cron.strip())
            if len(fields.split()) != 5:
                # the library also reads a sixth field (seconds), which the slot logic,
                # the catch-up bounds and the README do not cover
                raise ScheduleError(
                    f"bad cron expression {cron!r}: {len(fields.split())} fields, expected "
                    "five (minute hour day-of-month month day-of-week), or @hourly, "
                    "@daily, ...; for a period under a minute use every=SECONDS")
            from cronsim import CronSim, CronSimError
            try:
                CronSim(fields, dt.datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as e:
                raise ScheduleError(f"bad cron expression {cron!r}: {e} (five fields: minute "
                                    "hour day-of-month month day-of-week, or @hourly, "
                                    "@daily, ...)") from None
            self.cron = cron.strip()
            self._fields = fields
        else:
            if isinstance(every, bool) or not isinstance(every, (int, float, dt.timedelta)):
                raise ScheduleError(f"every must be seconds (a number) or a timedelta, "
                                    f"got {every!r}")
            td = every if isinstance(every, dt.timedelta) else dt.timedelta(seconds=every)
            if not td >= dt.timedelta(seconds=1):
                raise ScheduleError(f"every must be at least 1 second, got {every!r}")
            self.every = td

    def __repr__(self) -> str:
        if self.cron is not None:
            return f"Schedule(cron={self.cron!r}, tz={self.tz!r})"
        return f"Schedule(every={self.every.total_seconds():g})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Schedule) and self.cron == other.cron
                and self.every == other.every and self.tz == other.tz)

    def __hash__(self) -> int:
        return hash((self.cron, self.every, self.tz))

    @property
    def expression(self) -> str:
        """A short text for listings: the cron expression, or ``every 30s``."""
        if self.cron is not None:
            return self.cron
        return f"every {self.every.total_seconds():g}s"

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``instant`` (an aware datetime), in UTC."""
        _aware(instant, "instant")
        if self.every is not None:
            step = _micros(self.every)
            since = _micros(instant - EPOCH)
            return EPOCH + dt.timedelta(microseconds=(since // step + 1) * step)
        from cronsim import CronSim
        local = instant.astimezone(self._zone)
        return next(CronSim(self._fields, local)).astimezone(UTC)

    def _nth_before(self, instant: dt.datetime, n: int,
                    after: dt.datetime | None = None) -> dt.datetime | None:
        """About the ``n``-th slot at or before ``instant`` (walking back), or ``None``
        when there are fewer, or fewer after ``after`` (the walk stops there: a rare
        expression with a large ``n`` would otherwise walk back past year 1). Only a
        starting point: slots are always taken walking forward with :meth:`next_after`."""
        from cronsim import CronSim
        it = CronSim(self._fields, (instant + dt.timedelta(microseconds=1))
                     .astimezone(self._zone), reverse=True)
        slot = None
        try:
            for _ in range(n):
                slot = next(it)
                if after is not None and slot.astimezone(UTC) <= after:
                    return None
        except (StopIteration, OverflowError):   # the calendar's start
            return None
        return slot.astimezone(UTC) if slot is not None else None

    def iter_after(self, instant: dt.datetime) -> Iterator[dt.datetime]:
        """Slots strictly after ``instant``, in order, in UTC (an endless iterator)."""
        slot = self.next_after(instant)
        while True:
            yield slot
            slot = self.next_after(slot)

    def between(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        """Slots in ``(start, end]`` in UTC, at most 100,000 of them.

        >>> Schedule(every=60).between(t, t + timedelta(minutes=3))   # three slots
        """
        _aware(end, "end")
        out: list[dt.datetime] = []
        for slot in self.iter_after(start):
            if slot > end or len(out) >= 100_000:
                break
            out.append(slot)
        return out


def _micros(td: dt.timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def due_slots(schedule: Schedule, next_slot: dt.datetime, now: dt.datetime, *,
              catch_up: str, limit: int) -> tuple[list[dt.datetime], dt.datetime]:
    """The slots to enqueue when a schedule whose next slot is ``next_slot`` fires at
    ``now`` (database clock), and its next slot after that.

    Slots in ``[next_slot, now]`` are due. When one is due it is enqueued. When more
    are, the ones before the most recent were missed (no worker alive, a pause) and
    ``catch_up`` decides: ``latest`` enqueues the most recent only, ``all`` the most
    recent ``limit``, ``none`` none of the missed ones.
    """
    due: list[dt.datetime] = []
    slot = next_slot
    count = 0
    keep = max(limit, 1)
    if schedule.cron is not None and slot <= now:
        # a long pause of a frequent expression (every minute for a year is 525,600
        # slots): find the oldest slot that can be kept by walking back from now, and
        # walk forward from there with the same code as always
        anchor = schedule._nth_before(now, keep + 1, after=slot)
        if anchor is not None and anchor > slot:
            slot = schedule.next_after(anchor - dt.timedelta(microseconds=1))
            count = 1   # the slots before the anchor were missed
    while slot <= now:
        count += 1
        due.append(slot)
        if len(due) > keep:
            del due[0]
        slot = schedule.next_after(slot)
        if schedule.every is not None:
            # aligned slots one period apart: jump over those the list would drop
            # anyway (every=1 paused for a year is 31 million slots)
            ahead = (now - slot) // schedule.every - keep
            if ahead > 0:
                slot += schedule.every * ahead
                count += ahead
                due.clear()
    if count <= 1:
        return due, slot
    if catch_up == "all":
        return due[-limit:], slot
    if catch_up == "latest":
        return due[-1:], slot
    return [], slot   # none


class PeriodicTask:
    """A declared schedule: what :meth:`App.periodic` records. The worker upserts it
    into ``pgqueue.schedules`` when it starts."""

    __slots__ = ("name", "task_name", "args", "kwargs", "schedule", "queue", "priority",
                 "catch_up", "catch_up_limit", "signature")

    def __init__(self, *, name: str, task_name: str, args: tuple, kwargs: dict[str, Any],
                 schedule: Schedule, queue: str | None, priority: int | None,
                 catch_up: str, catch_up_limit: int, signature: Any = None):
        self.name = name
        self.task_name = task_name
        self.args = args
        self.kwargs = kwargs
        self.schedule = schedule
        self.queue = queue
        self.priority = priority
        self.catch_up = catch_up
        self.catch_up_limit = catch_up_limit
        self.signature = signature

    def __repr__(self) -> str:
        return f"PeriodicTask({self.name!r}, {self.task_name}, {self.schedule!r})"


def check_catch_up(catch_up: Any, limit: Any) -> tuple[str, int]:
    if catch_up not in CATCH_UP_POLICIES:
        raise ScheduleError(f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, "
                            f"got {catch_up!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ScheduleError(f"catch_up_limit must be an int from 1 to 10000, got {limit!r}")
    return catch_up, limit
