"""Tasks for the flow-control tests (tests/test_flow_control.py), run by real
``pgqueue worker`` processes. Every execution writes a ``start`` and an ``end`` row
into ``public.side`` (note: the job's partition key or label), so tests measure how
many jobs ran at once from the database clock.
"""

from __future__ import annotations

import time

import pgqueue

from .basic import record

app = pgqueue.App(pool_max_size=12)

#: declared limits, written to pgqueue.queues when a worker of this app starts
app.queue("declared", concurrency=2, rate_limit=(50, 1.0))


@app.task(pass_context=True, queue="limited")
def work(ctx: pgqueue.JobContext, seconds: float, note: str | None = None,
         retry_seconds: float | None = None) -> None:
    """Sleep ``seconds`` (``retry_seconds`` from the second attempt on)."""
    record(ctx, "start", note)
    time.sleep(retry_seconds if retry_seconds is not None and ctx.attempt > 1 else seconds)
    record(ctx, "end", note)


@app.task(pass_context=True, queue="reports", concurrency=1)
def report(ctx: pgqueue.JobContext, seconds: float) -> None:
    """At most one running at once across all workers."""
    record(ctx, "start")
    time.sleep(seconds)
    record(ctx, "end")
