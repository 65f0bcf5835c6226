"""The heartbeat and the rescuer, on the *heartbeat* connection.

Every ``interval`` seconds, ``heartbeat`` refreshes this worker's row in
``pgqueue.workers`` (name, host, pid, queues, tasks, concurrency, ``stale_after``) and
returns the running jobs of this worker whose cancellation was requested; each is
handed to the running-job records (the executor interrupts it). Then ``rescue``
requeues or discards the running jobs of workers silent for ``stale_after`` seconds,
but only while this worker's own heartbeats are regular: after a gap longer than
``stale_after / 2`` (a lock on ``pgqueue.jobs``, a lost connection, a paused process)
live peers were likely cut off too, and get one more heartbeat cycle to show they are
alive. After such a gap the worker also looks for its own attempts that peers rescued
meanwhile, and cancels them (``lost_attempts``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import psycopg

from .._sql import q
from .connections import _Conn
from .running import RunningJobs, WakeUp
from .component import ThreadComponent

log = logging.getLogger("pgqueue.worker")


class Heartbeat(ThreadComponent):
    """Heartbeats, cancellation requests and rescues.

    :param conn: the dedicated *heartbeat* connection.
    :param info: the worker row's fields: ``worker_id``, ``name``, ``queues``,
        ``tasks``, ``concurrency``, ``stale_after``.
    :param interval: seconds between heartbeats.
    :param running: the worker's running jobs (cancellation requests go there).
    :param wake: ``more()`` after a rescue (requeued jobs may be claimed at once).
    :param stats: counter ``rescued``.
    :param observer: the :class:`~pgqueue.observe.Observer`, or ``None``.
    :param prepare: prepare statements (False in poll-only mode).
    :param done: set when the worker's bookkeeping threads may exit.
    """

    thread_name = "pgqueue-heartbeat"

    def __init__(self, conn: _Conn, info: dict[str, Any], *, interval: float,
                 running: RunningJobs, wake: WakeUp, stats: dict[str, int], observer: Any,
                 prepare: bool, done: threading.Event):
        self.conn = conn
        self.info = info
        self.interval = interval
        self.stale_after = info["stale_after"]
        self.running = running
        self.wake = wake
        self.stats = stats
        self.observer = observer
        self.prepare = prepare
        self.done = done
        #: monotonic time of the last successful heartbeat (None: none yet)
        self.last: float | None = None
        self._halt = threading.Event()

    def _interrupt(self) -> None:
        # Stopped before the worker's row is deleted: a beat after the delete would
        # register the stopped worker again (the heartbeat is an upsert).
        self._halt.set()

    def beat(self) -> None:
        """One heartbeat (and rescue round). Raises on a database error."""
        def work(conn: psycopg.Connection) -> None:
            prev = self.last
            rows = conn.execute(q("heartbeat"), {
                **self.info, "hostname": socket.gethostname(), "pid": os.getpid()},
                prepare=self.prepare).fetchall()
            self.last = now = time.monotonic()
            for (job_id,) in rows:
                self.cancel(job_id)
            if prev is None:
                return
            if now - prev > self.stale_after / 2:
                self.stop_lost(conn)
                return
            rescued = conn.execute(q("rescue"), {"stale_after": self.stale_after},
                                   prepare=self.prepare).fetchall()
            if rescued:
                self.stats["rescued"] += len(rescued)
                log.warning("rescued %d jobs of dead workers: %s", len(rescued),
                            ", ".join(f"{i}->{s}" for i, s in rescued[:20]))
                if self.observer is not None:
                    self.observer.rescued(conn, rescued)
                self.wake.more()
        self.conn.run(work)

    def stop_lost(self, conn: psycopg.Connection) -> None:
        """After a gap in this worker's heartbeats (paused, cut off): cancel the attempts
        it runs whose job a peer rescued meanwhile. Their outcome would be fenced out
        anyway; stopped, they no longer run beside the attempt that replaced them."""
        mine = [r for r in self.running.snapshot() if not r.ctx.cancelled]
        if not mine:
            return
        lost = {job_id for (job_id,) in conn.execute(q("lost_attempts"), {
            "worker_id": self.info["worker_id"], "ids": [r.id for r in mine],
            "attempts": [r.attempt for r in mine]}, prepare=self.prepare)}
        for r in mine:
            if r.id in lost:
                log.warning("job %s attempt %s was rescued while this worker was paused or "
                            "cut off; stopping it here (another attempt runs it)",
                            r.id, r.attempt)
                self.running.cancel(r)

    def cancel(self, job_id: int) -> None:
        """Cancellation of ``job_id`` was requested: interrupt it if it runs here."""
        r = self.running.get(job_id)
        if r is None or r.ctx._cancel.is_set():
            return
        log.info("job %s asked to cancel", job_id)
        self.running.cancel(r)

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval
        while (not self._halt.wait(max(0.0, next_at - time.monotonic()))
               and not self.done.is_set()):
            next_at = time.monotonic() + self.interval
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001
                if not self.conn.failures or self.conn.should_log():
                    log.warning("heartbeat failed: %s%s", str(e).strip(), self.conn.outage())
                next_at = time.monotonic() + min(self.interval, self.conn.backoff())
