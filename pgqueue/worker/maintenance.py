"""Maintenance: retention of finished jobs and the long-transaction warning.

Owns the *maintenance* connection. Every ``interval`` seconds (the first round after
``min(interval, 2 * heartbeat_interval)``):

- ``maintenance_prune`` (when ``prune_after`` is set): under a transaction-scoped
  advisory lock (``PRUNE_LOCK``; one worker at a time, safe behind poolers) deletes
  ``completed``/``discarded``/``cancelled`` jobs finished more than ``prune_after``
  seconds ago;
- ``oldest_transaction``: the oldest open transaction of the database; one older than
  ``xmin_warn_after`` holds back vacuum, so it is logged as a warning;
- ``autovacuum_covers_jobs``: autovacuum off for the server or for ``pgqueue.jobs``
  leaves every claimed and finished job's dead row in place until someone vacuums, so
  it is logged as a warning when first seen (and again when it changes).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from .._sql import q
from .connections import _Conn
from .component import ThreadComponent

log = logging.getLogger("pgqueue.worker")

#: transaction-scoped advisory lock taken by the one worker that prunes in a round
PRUNE_LOCK = 0x706771756576


class Maintenance(ThreadComponent):
    """Prunes and watches for long transactions.

    :param conn: the dedicated *maintenance* connection.
    :param interval: seconds between rounds.
    :param first_after: seconds before the first round.
    :param prune_after: retention in seconds, or ``None`` (no pruning).
    :param xmin_warn_after: seconds a transaction may be open before a warning.
    :param stats: counters ``pruned``, ``vacuum_warnings`` (long transactions) and
        ``autovacuum_warnings``.
    :param done: set when the worker's bookkeeping threads may exit.
    """

    thread_name = "pgqueue-maintenance"

    def __init__(self, conn: _Conn, *, interval: float, first_after: float,
                 prune_after: float | None, xmin_warn_after: float, stats: dict[str, int],
                 done: threading.Event):
        self.conn = conn
        self.interval = interval
        self.first_after = first_after
        self.prune_after = prune_after
        self.xmin_warn_after = xmin_warn_after
        self.stats = stats
        self.done = done
        #: the last finding: dict(age, pid, user, application, state, query), or None
        self.oldest_transaction: dict[str, Any] | None = None
        #: autovacuum does not vacuum pgqueue.jobs (None: not looked yet)
        self.autovacuum_off: bool | None = None

    def _run(self) -> None:
        next_at = time.monotonic() + self.first_after
        while not self.done.wait(max(0.0, next_at - time.monotonic())):
            next_at = time.monotonic() + self.interval
            try:
                self.once()
            except Exception as e:  # noqa: BLE001 - retried next round
                log.warning("maintenance failed: %s", str(e).strip())

    def once(self) -> None:
        def work(conn: psycopg.Connection) -> None:
            if self.prune_after is not None:
                (n,) = conn.execute(q("maintenance_prune"), {
                    "lock": PRUNE_LOCK, "older_than": self.prune_after},
                    prepare=False).fetchone()
                if n:
                    self.stats["pruned"] += n
                    log.info("pruned %d jobs finished more than %.0f s ago", n,
                             self.prune_after)
            row = conn.execute(q("oldest_transaction"), prepare=False).fetchone()
            self.oldest_transaction = None if row is None else dict(zip(
                ("age", "pid", "user", "application", "state", "query"), row, strict=True))
            if row is not None and row[0] > self.xmin_warn_after:
                self.stats["vacuum_warnings"] += 1
                log.warning("a transaction has been open for %.0f s (pid %s, user %s, "
                            "application %r, %s): it holds back vacuum, so dead rows of "
                            "finished jobs pile up and claiming slows down; query: %s",
                            *row[:5], (row[5] or "")[:200])
            (covered,) = conn.execute(q("autovacuum_covers_jobs"), prepare=False).fetchone()
            off = not covered
            if off and self.autovacuum_off is not True:
                self.stats["autovacuum_warnings"] += 1
                log.warning("autovacuum is off for pgqueue.jobs (server setting autovacuum "
                            "or track_counts, or the table's autovacuum_enabled): dead rows "
                            "of claimed and finished jobs stay until a manual VACUUM, so the "
                            "table and its indexes grow and claiming slows down; turn it on, "
                            "or VACUUM pgqueue.jobs on a schedule")
            self.autovacuum_off = off
        self.conn.run(work)
