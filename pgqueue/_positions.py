"""Claim positions: where a claimer last found jobs, so its next claim starts there.

Every claimed job leaves a dead entry in the claim index, and vacuum cannot remove
those while any old snapshot stays open (a long report, a session idle in
transaction). A claim that reads its queue from the start then steps over all of them
(case B23). :class:`ClaimPositions` remembers, per queue and priority level, the
``(run_at, id)`` of the first job the last claim took at that level; ``pgqueue.claim``
reads each known level from there (at most one second further back) and every other
level from its start, in strict claim order (sql/migrations/0004_claim_positions.sql).

Jobs can land behind a position. The server announces the ones it can see on the
``pgqueue_requeued`` channel (hand-back, rescue, inserts with a past ``run_at``), and
:meth:`ClaimPositions.forget` drops the queue's positions. The rest (a transaction
that inserts, then stays open for over a second before it commits; rows another
session held locked while a claim passed them) is caught by the position-free claim
that :meth:`ClaimPositions.params` asks for every ``refresh`` seconds, or further apart
when one takes long (at most 2 % of the claimer's time, and at least every 15 s).

Thread-safe: the claim loop calls :meth:`params` and :meth:`update`, the listener
thread :meth:`forget`.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterable

#: Most priority levels remembered per queue; more levels are read from their start.
MAX_LEVELS = 16

#: Position of a level that a claim found empty: the next claim reads it from one
#: second back (the server bounds every position by ``now() - 1 s``).
CAUGHT_UP = (datetime.max.replace(tzinfo=timezone.utc), 0)

_NONE: dict[str, Any] = {"position_queues": None, "position_priorities": None,
                         "position_run_ats": None, "position_ids": None}


class ClaimPositions:
    """Positions of one claimer (a worker's claim connection, a benchmark probe).

    :param refresh: seconds (float, default 1.0) between position-free claims, so
        nothing stays behind a position for longer.
    :param enabled: ``False`` makes every claim position-free (poll-only workers,
        which hear no ``pgqueue_requeued`` notifications).
    """

    #: A position-free claim may take at most this share of the claimer's time: while
    #: dead index entries pile up behind an old snapshot each one reads more of them
    #: (about 100 ms at 100,000 entries), so they are spaced out to ``took / share``
    #: seconds apart, never more than :attr:`max_refresh`.
    share = 0.02
    #: Longest spacing of position-free claims (seconds).
    max_refresh = 15.0

    def __init__(self, refresh: float = 1.0, enabled: bool = True):
        self.refresh = refresh
        self.enabled = enabled
        self._issued_full = False        # the last params() asked for a position-free claim
        self._issued_at = 0.0
        self._lock = threading.Lock()
        self._by_queue: dict[str, dict[int, tuple[datetime, int]]] = {}
        #: priority levels this claimer has taken jobs from, per queue (kept by forget)
        self._levels: dict[str, set[int]] = {}
        self._heard: set[str] = set()    # queues notified since the last full claim
        self._epoch = 0                  # bumped by forget()
        self._issued_epoch = 0           # _epoch at the last params()
        self._full_at = 0.0              # monotonic time of the next position-free claim
        self._since_full = False         # a claim with positions ran since the last one

    def params(self, now: float | None = None) -> dict[str, Any]:
        """Query parameters for ``pgqueue.claim`` (the four ``position_*`` arrays).

        All ``None`` (a claim that reads every level from its start) when there is no
        position yet, or every ``refresh`` seconds.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            self._issued_epoch = self._epoch
            self._issued_at = now
            if not self.enabled or not self._by_queue or now >= self._full_at:
                self._heard.clear()
                self._full_at = now + self.refresh
                self._since_full = False
                self._issued_full = True
                return dict(_NONE)
            self._issued_full = False
            self._since_full = True
            queues, prios, run_ats, ids = [], [], [], []
            for queue, levels in self._by_queue.items():
                for prio, (run_at, job_id) in levels.items():
                    queues.append(queue)
                    prios.append(prio)
                    run_ats.append(run_at)
                    ids.append(job_id)
            return {"position_queues": queues, "position_priorities": prios,
                    "position_run_ats": run_ats, "position_ids": ids}

    def update(self, rows: Iterable[tuple[str, int, datetime, int]],
               exhausted: bool = False) -> None:
        """Record the jobs taken by the claim issued with the last :meth:`params`:
        ``(queue, priority, run_at, id)`` each.

        Per queue and level, the earliest ``(run_at, id)`` taken becomes the position;
        levels the claim took nothing from keep theirs, unless ``exhausted`` (the claim
        took fewer jobs than it asked for, so it read every level of its queues to the
        end): then every level this claimer knows is :data:`CAUGHT_UP`. Ignored when
        :meth:`forget` ran since that :meth:`params` (the claim may have passed what
        the notice was about).
        """
        if not self.enabled:
            return
        first: dict[tuple[str, int], tuple[datetime, int]] = {}
        for queue, prio, run_at, job_id in rows:
            key = (queue, prio)
            if key not in first or (run_at, job_id) < first[key]:
                first[key] = (run_at, job_id)
        with self._lock:
            if self._issued_epoch != self._epoch:
                return
            for queue, prio in first:
                levels = self._levels.setdefault(queue, set())
                levels.add(prio)
                if len(levels) > MAX_LEVELS:
                    levels.discard(min(levels))  # the lowest is read from its start
            if exhausted:
                for queue, levels in self._levels.items():
                    for prio in levels:
                        first.setdefault((queue, prio), CAUGHT_UP)
            for (queue, prio), pos in first.items():
                if prio in self._levels.get(queue, ()):
                    self._by_queue.setdefault(queue, {})[prio] = pos

    def taken(self, rows: list[tuple], batch: int, took: float | None = None) -> None:
        """:meth:`update` from the rows of the ``claim`` query of ``sql/queries.sql``
        (``id, queue, task, args, kwargs, attempt, max_attempts, priority, run_at``...)
        that asked for ``batch`` jobs; ``took``: the claim's duration in seconds."""
        if took is not None:
            self.claim_took(took)
        self.update(((r[1], r[7], r[8], r[0]) for r in rows), exhausted=len(rows) < batch)

    def claim_took(self, seconds: float) -> None:
        """The claim issued with the last :meth:`params` took ``seconds``: when it was
        position-free, the next one comes ``max(refresh, seconds / share)`` seconds after
        it (at most :attr:`max_refresh`), so position-free claims never cost more than
        ``share`` of the time, however many dead entries they read."""
        with self._lock:
            if self._issued_full:
                spacing = min(self.max_refresh, max(self.refresh, seconds / self.share))
                self._full_at = max(self._full_at, self._issued_at + spacing)

    def heard(self, queue: str) -> None:
        """A notification named ``queue``: :meth:`queues` includes it until the next
        position-free claim."""
        with self._lock:
            self._heard.add(queue)

    def queues(self) -> list[str]:
        """The queues to claim from, for a claimer of every queue, while it claims with
        positions: those it has taken jobs from, or heard of since its last
        position-free claim. Finding every queue that has claimable jobs reads the
        start of the claim index, past every dead entry, so only position-free claims
        do that."""
        with self._lock:
            return sorted(self._heard.union(self._levels))

    def forget(self, queue: str | None = None) -> None:
        """Drop the positions of ``queue`` (all queues if ``None``): its next claim
        reads it from the start."""
        with self._lock:
            self._epoch += 1
            if queue is None:
                self._by_queue.clear()
            else:
                self._by_queue.pop(queue, None)

    def next_refresh(self, now: float | None = None) -> float:
        """Seconds until the next position-free claim is due: ``inf`` when no claim
        used positions since the last one (nothing can have been passed)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._since_full:
                return float("inf")
            return max(0.0, self._full_at - now)
