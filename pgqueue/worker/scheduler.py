"""The scheduler: the worker component that fires periodic jobs.

It owns one autocommit connection, on which it listens for ``pgqueue_schedules``
(a schedule was declared, paused, resumed or added) and runs:

- at start, :func:`upsert_declarations`: the app's :meth:`~pgqueue.App.periodic`
  declarations into ``pgqueue.schedules`` (queries ``schedule_get_for_update``,
  ``schedule_insert``, ``schedule_update``, ``schedules_undeclare``);
- in its loop, ``schedules_due``, then ``pgqueue.fire_schedule(...)`` for each due
  schedule, then ``schedules_wait`` to sleep until the earliest next slot.

Nothing is decided by this process's clock: due-ness and "now" come from the
database, and ``fire_schedule`` is a compare-and-set on the slot read, so when several
workers see the same due slot exactly one enqueues it. A worker that dies between two
statements loses nothing: the slot stays due and the next scheduler fires it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from .. import serialization
from .._sql import q
from ..app import parameters
from ..schedule import PeriodicTask, Schedule, ScheduleError, due_slots
from .component import ThreadComponent

log = logging.getLogger("pgqueue.scheduler")

#: reconnect quickly at first, then back off to this
RECONNECT_MAX = 5.0


def _definition(p: PeriodicTask, declared_by: str, now: dt.datetime) -> dict[str, Any]:
    every = p.schedule.every.total_seconds() if p.schedule.every is not None else None
    args = serialization.encode(list(p.args), "args")
    kwargs = serialization.encode(dict(p.kwargs), "kwargs")
    return {
        "name": p.name, "task": p.task_name,
        # JSON text whose floats read back as floats; the values, to compare with a row
        "args": serialization.json_text(args), "args_value": args,
        "kwargs": serialization.json_text(kwargs), "kwargs_value": kwargs,
        "cron": p.schedule.cron, "every": every, "tz": p.schedule.tz,
        "queue": p.queue, "priority": p.priority, "catch_up": p.catch_up,
        "catch_up_limit": p.catch_up_limit, "pass_slot": _takes_slot(p),
        "declared_by": declared_by, "next_slot": p.schedule.next_after(now),
    }


def _takes_slot(p: PeriodicTask) -> bool:
    fn = getattr(p.signature, "fn", None) if p.signature is not None else None
    return "schedule_slot" in parameters(fn)


def upsert_declarations(conn: psycopg.Connection, declared: Iterable[PeriodicTask],
                        tasks: Iterable[str], worker_name: str) -> list[str]:
    """Write the app's schedule declarations into ``pgqueue.schedules`` in one
    transaction; returns the names of schedules this app stopped declaring.

    A new schedule starts at its first slot after now. A changed expression or time
    zone restarts the slot series after now (no catch-up across a change); other
    changes (arguments, queue, catch-up policy) keep the next slot. When the stored
    declaration differs, the newest start wins and a warning names both.
    """
    declared = list(declared)
    by = f"app:{worker_name}"
    with conn.transaction():
        # Workers starting together take turns: the first inserts a new schedule, the
        # others see its row (no unique violation at start).
        conn.execute("select pg_advisory_xact_lock(hashtext('pgqueue.schedules'))")
        for p in declared:
            row = conn.execute(q("schedule_get_for_update"), {"name": p.name}).fetchone()
            now = conn.execute("select now()").fetchone()[0] if row is None else row[-1]
            d = _definition(p, by, now)
            if row is None:
                conn.execute(q("schedule_insert"), d)
                continue
            (_, task, args, kwargs, cron, every, tz, queue, priority, catch_up, limit,
             pass_slot, was_declared, declared_by, next_slot, _) = row
            stored = (task, args, kwargs, cron, every, tz, queue, priority, catch_up, limit,
                      pass_slot)
            mine = (d["task"], d["args_value"], d["kwargs_value"], d["cron"], d["every"], d["tz"],
                    d["queue"], d["priority"], d["catch_up"], d["catch_up_limit"],
                    d["pass_slot"])
            reslot = (cron, every, tz) != (d["cron"], d["every"], d["tz"]) or next_slot is None
            if stored != mine:
                log.warning("schedule %r: this worker's declaration replaces the stored one "
                            "(written by %s): %s -> %s", p.name, declared_by,
                            _describe(cron, every, tz, task), p.schedule.expression
                            + f" tz={p.schedule.tz} task={p.task_name}")
            if stored != mine or not was_declared or declared_by != by:
                conn.execute(q("schedule_update"), {**d, "reslot": reslot})
        names = [p.name for p in declared]
        gone = [r[0] for r in conn.execute(q("schedules_undeclare"),
                                           {"tasks": list(tasks), "names": names})]
    for name in gone:
        log.warning("schedule %r is no longer declared by this app: kept in "
                    "pgqueue.schedules but not fired until resumed "
                    "(pgqueue schedules resume %s)", name, name)
    return gone


def _describe(cron: Any, every: Any, tz: Any, task: Any) -> str:
    expr = cron if cron is not None else f"every {every:g}s"
    return f"{expr} tz={tz} task={task}"


class Scheduler(ThreadComponent):
    """Fires due slots of ``pgqueue.schedules``; one per worker, all workers alike.

    :param connect: returns a new autocommit connection (called again after a loss).
    :param poll_interval: longest sleep between two looks at the table (seconds), in
        case a notification is lost.
    :param listen: wake on ``pgqueue_schedules`` notifications (default True); False
        in poll-only mode (transaction poolers), where changes are seen within
        ``poll_interval``. Slots are fired on time either way.
    """

    thread_name = "pgqueue-scheduler"

    def __init__(self, connect: Callable[[], psycopg.Connection], *,
                 poll_interval: float = 5.0, listen: bool = True):
        self._connect = connect
        self._poll = poll_interval
        self._listen = listen
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._bad: dict[str, str] = {}   # schedule name -> definition that failed
        self.fired = 0

    def _interrupt(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken connection
                pass

    def _run(self) -> None:
        failures = 0
        lost_since: float | None = None
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                    if self._listen:
                        self._conn.execute("listen pgqueue_schedules")
                    if lost_since is not None:
                        log.info("scheduler: connection re-established after %.1f s",
                                 time.monotonic() - lost_since)
                    lost_since = None
                wait = self.tick(self._conn)
                failures = 0
            except psycopg.Error as e:
                failures += 1
                if lost_since is None:
                    lost_since = time.monotonic()
                    log.warning("scheduler: %s: %s; reconnecting", type(e).__name__,
                                str(e).strip())
                self._close()
                # every 0.5 s for the first 30 s of an outage, then up to RECONNECT_MAX
                wait = 0.5 if time.monotonic() - lost_since < 30 else min(RECONNECT_MAX,
                                                                          0.5 * failures)
                self._stop.wait(wait)
                continue
            except Exception:  # noqa: BLE001 - the scheduler must outlive a bad row
                log.exception("scheduler: unexpected error; retrying in 1 s")
                self._stop.wait(1.0)
                continue
            self._sleep(wait)

    def _sleep(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for a ``pgqueue_schedules`` notification, waking
        every 0.25 s to notice a stop."""
        deadline = time.monotonic() + max(0.0, wait)
        conn = self._conn
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or conn is None:
                return
            if not self._listen:
                self._stop.wait(min(0.25, left))
                continue
            try:
                if any(True for _ in conn.notifies(timeout=min(0.25, left), stop_after=1)):
                    return
            except psycopg.Error:
                self._close()
                return

    def tick(self, conn: psycopg.Connection) -> float:
        """Fire every due schedule once; returns seconds until the next look."""
        rows = conn.execute(q("schedules_due")).fetchall()
        for name, cron, every, tz, catch_up, limit, next_slot, now in rows:
            self._fire(conn, name, cron, every, tz, catch_up, limit, next_slot, now)
        if len(rows) == 100:
            return 0.0
        wait = conn.execute(q("schedules_wait")).fetchone()[0]
        if wait is None:
            return self._poll
        return max(0.001, min(self._poll, wait))

    def _fire(self, conn: psycopg.Connection, name: str, cron: str | None, every: float | None,
              tz: str, catch_up: str, limit: int, next_slot: dt.datetime | None,
              now: dt.datetime) -> None:
        key = f"{cron}|{every}|{tz}"
        try:
            sched = Schedule(cron=cron, every=every, tz=tz)
            if next_slot is None:
                slots, following = [], sched.next_after(now)
            else:
                slots, following = due_slots(sched, next_slot, now, catch_up=catch_up,
                                             limit=limit)
        except (ScheduleError, ArithmeticError, ValueError) as e:
            # a row written from SQL (every => '100000 years': no slot fits a datetime)
            # skips only itself, never the schedules after it
            if self._bad.get(name) != key:
                self._bad[name] = key
                log.error("schedule %r cannot be evaluated and is not fired: %s", name, e)
            return
        self._bad.pop(name, None)
        ids = conn.execute(q("schedule_fire"), {"name": name, "expected": next_slot,
                                                 "slots": slots, "next_slot": following}
                           ).fetchone()[0]
        if ids:
            self.fired += len(ids)
            log.debug("schedule %r fired slot(s) %s as job(s) %s", name,
                      ", ".join(s.isoformat() for s in slots), ids)
