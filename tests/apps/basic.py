"""Tasks for tests that run real ``pgqueue worker`` processes.

Every task writes one row per execution into ``public.side`` (job id, attempt,
worker pid), so tests count executions exactly.
"""

from __future__ import annotations

import os
import time

import pgqueue

app = pgqueue.App(pool_max_size=4)


def record(ctx: pgqueue.JobContext, event: str = "start", note: str | None = None) -> None:
    with ctx.app.connection() as conn:
        conn.execute(
            "insert into public.side (job_id, attempt, worker, pid, event, note) "
            "values (%s, %s, %s, %s, %s, %s)",
            (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid(), event, note))


@app.task(pass_context=True, max_attempts=3)
def sleeper(ctx: pgqueue.JobContext, seconds: float) -> str:
    record(ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.wait_cancelled(0.05):
            record(ctx, "cancel-seen")
            ctx.raise_if_cancelled()
    record(ctx, "end")
    return "slept"


@app.task(pass_context=True)
def quick(ctx: pgqueue.JobContext, n: int = 0) -> int:
    record(ctx)
    return n


@app.task(pass_context=True, name="tests.noop")
def noop(ctx: pgqueue.JobContext) -> None:
    return None
