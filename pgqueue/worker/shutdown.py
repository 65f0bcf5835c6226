"""Shutdown: the signal watcher, and handing unfinished jobs back.

:class:`SignalWatcher` turns SIGTERM/SIGINT into calls of ``stop()`` (a second signal
skips the rest of the grace period). :func:`drain` lets running attempts finish for
the grace period; :func:`hand_back` then returns the attempts still unfinished to
their queues in one transaction (``hand_back``: the interrupted attempt does not
count) and removes the worker's row (``worker_delete``), on the *claim* connection.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .._sql import q
from .connections import _Conn
from .running import RunningJobs, WakeUp, _Running

log = logging.getLogger("pgqueue.worker")


class SignalWatcher:
    """SIGTERM/SIGINT call ``stop`` (once per signal), from a thread.

    The Python-level handler does nothing: it runs in the main thread between two
    bytecodes, possibly while that thread holds a lock ``stop()`` needs (an Event's),
    which would deadlock. The C-level handler writes each signal to a wakeup pipe
    instead, and a thread reading it calls ``stop()`` once per signal, so two quick
    SIGTERMs are never merged into one. Install from the main thread only.
    """

    def __init__(self, stop: Callable[[], None]):
        self.stop_fn = stop
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup_fd = -1
        self._old_handlers: dict[int, Any] = {}

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._old_wakeup_fd = signal.set_wakeup_fd(write_fd)
        self._old_handlers = {sig: signal.signal(sig, lambda *_: None)
                              for sig in (signal.SIGTERM, signal.SIGINT)}

        def watch() -> None:
            while True:
                try:
                    data = os.read(read_fd, 64)
                except OSError:
                    data = b""
                if not data:
                    os.close(read_fd)
                    return
                for signum in data:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        self.stop_fn()

        threading.Thread(target=watch, name="pgqueue-signals", daemon=True).start()

    def stop(self) -> None:
        """Restore the previous handlers; the watcher thread ends."""
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        os.close(pipe[1])      # the watcher reads EOF and ends


def drain(running: RunningJobs, wake: WakeUp, *, grace: float, hurry: threading.Event,
          check_timeouts: Callable[[], None]) -> list[_Running]:
    """Wait up to ``grace`` s (or until ``hurry``) for running functions to return, then
    abandon and cancel the attempts left; return them."""
    deadline = time.monotonic() + grace
    while running.busy > 0 and time.monotonic() < deadline and not hurry.is_set():
        check_timeouts()
        wake.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        wake.clear()
    leftovers = running.abandon_all()
    for r in leftovers:
        running.cancel(r)
    return leftovers


def hand_back(conn: _Conn, running: RunningJobs, leftovers: list[_Running], *,
              worker_id: Any, stale_after: float, drained: Callable[[], bool],
              before_delete: Callable[[], None] | None = None) -> None:
    """Once every known outcome is recorded (``drained()``, at most 10 s), hand back the
    ``leftovers`` still owned in one transaction, then delete the worker's row (after
    ``before_delete()``: the heartbeat stops there, or it would register the row again)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not drained():
        time.sleep(0.01)
    owned = set(map(id, running.snapshot()))
    back = [r for r in leftovers if id(r) in owned]
    # A lost connection is retried (reconnecting) for up to stale_after: past that the
    # jobs are rescued anyway, their attempt counted. The statement is conditional on
    # each attempt token, so a retry after a commit whose answer was lost hands back
    # nothing twice.
    retry_until = time.monotonic() + stale_after
    if back:
        try:
            handed = _retrying(conn, lambda c: c.execute(q("hand_back"), {
                "worker_id": worker_id, "ids": [r.id for r in back],
                "attempts": [r.attempt for r in back]}).fetchall(), retry_until)
            log.info("handed back %d unfinished jobs", len(handed))
        except Exception as e:  # noqa: BLE001
            log.error("could not hand back %d jobs (%s); they will be rescued after "
                      "%.0f s", len(back), e, stale_after)
    if before_delete is not None:
        before_delete()
    try:
        _retrying(conn, lambda c: c.execute(q("worker_delete"), {"worker_id": worker_id}),
                  min(retry_until, time.monotonic() + 2.0))
    except Exception:  # noqa: BLE001, S110 - the row goes with the next rescue or prune
        pass


def _retrying(conn: _Conn, fn: Callable[[Any], Any], until: float) -> Any:
    """``conn.run(fn)``, again after a lost connection (``conn.backoff()`` apart) until
    the monotonic time ``until``; other errors, and the last one, are raised."""
    while True:
        try:
            return conn.run(fn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            pause = conn.backoff()
            if time.monotonic() + pause >= until:
                raise
            log.warning("shutdown: %s; retrying", str(e).strip())
            time.sleep(pause)
