"""The listener: ``LISTEN pgqueue_jobs``, ``pgqueue_requeued``, ``pgqueue_freed`` and
``pgqueue_cancel``.

Owns the *listen* connection (absent in poll-only mode). A notification of a new or
requeued job in one of the worker's queues wakes the claim loop (and moves its claim
positions); so does a job's end in one of its queues with a concurrency limit
(``pgqueue_freed``: a slot of the limit is free); a cancellation request is handed to
the heartbeat's ``cancel``. After any (re)connect it asks for a catch-up claim from the
start of every queue, since notifications sent meanwhile were lost. Every 5 s it checks
the connection with ``select 1``; it touches its
:class:`~pgqueue.worker.connections.Beat` after each round so the watchdog can replace a
connection that went silent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from .._positions import ClaimPositions
from .connections import Beat, _Conn
from .running import WakeUp
from .component import ThreadComponent

log = logging.getLogger("pgqueue.worker")

#: seconds between health checks of the LISTEN connection
HEALTH_EVERY = 5.0


class Listener(ThreadComponent):
    """Wakes the claim loop on notifications.

    :param conn: the dedicated *listen* connection.
    :param on_notify: called with each :class:`psycopg.Notify` (see :func:`notified`).
    :param positions: the claim positions (forgotten after a reconnect).
    :param wake: ``more()`` after each (re)connect.
    :param alive: touched whenever the connection proves alive.
    :param done: set when the worker's bookkeeping threads may exit.
    """

    thread_name = "pgqueue-listener"

    def __init__(self, conn: _Conn, on_notify: Callable[[psycopg.Notify], None], *,
                 positions: ClaimPositions, wake: WakeUp, alive: Beat, done: threading.Event):
        self.conn = conn
        self.on_notify = on_notify
        self.positions = positions
        self.wake = wake
        self.alive = alive
        self.done = done
        #: set once LISTEN is established
        self.listening = threading.Event()

    def _interrupt(self) -> None:
        self.conn.cut()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                conn = self.conn.run(lambda c: c)
                conn.execute("listen pgqueue_jobs")
                conn.execute("listen pgqueue_requeued")
                conn.execute("listen pgqueue_freed")
                conn.execute("listen pgqueue_cancel")
                # requeue notices may have been missed while away
                self.positions.forget()
                self.alive.touch()
                self.listening.set()
                self.wake.more()        # catch up on what arrived while we were away
                last_check = time.monotonic()
                while not self.done.is_set():
                    for n in conn.notifies(timeout=1.0):
                        self.on_notify(n)
                    self.alive.touch()
                    if time.monotonic() - last_check >= HEALTH_EVERY:
                        self.conn.run(lambda c: c.execute("select 1"))
                        self.alive.touch()
                        last_check = time.monotonic()
            except Exception as e:  # noqa: BLE001
                if self.done.is_set():
                    return
                self.conn.failed()
                if self.conn.should_log():
                    log.warning("listener connection lost (%s)%s; reconnecting",
                                str(e).strip(), self.conn.outage())
                self.done.wait(self.conn.backoff())


def notified(n: psycopg.Notify, *, queues: list[str] | None, positions: ClaimPositions,
             wake: WakeUp, cancel: Callable[[int], None], own_pid: int | None = None) -> None:
    """React to one notification: wake the claim loop for a job in one of ``queues``
    (``None``: all) or a slot freed in one of them (unless this worker's completer,
    session ``own_pid``, freed it: it woke the loop already), or ``cancel`` the job
    named by a cancellation request."""
    if n.channel == "pgqueue_jobs" or n.channel == "pgqueue_requeued":
        if queues is None or n.payload in queues:
            positions.heard(n.payload)
            if n.channel == "pgqueue_requeued":
                # a job went back in line behind where our claims start
                positions.forget(n.payload)
            wake.more()
    elif n.channel == "pgqueue_freed":
        if n.pid != own_pid and (queues is None or n.payload in queues):
            wake.more()
    elif n.channel == "pgqueue_cancel":
        try:
            cancel(int(n.payload))
        except ValueError:
            pass
