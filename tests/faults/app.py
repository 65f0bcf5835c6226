"""Tasks of the fault-injection suite (``pgqueue worker --app tests.faults.app``).

Every task writes a ``start`` row into ``public.side`` when its body begins and an
``end`` row when it ends (job id, attempt, worker instance, pid, database clock), so the
tests count executions and check that no two executions of a job overlap in time.
Task names are explicit (``faults.*``) so that a per-test :class:`pgqueue.App` made by
:func:`make_app` enqueues the very tasks the worker processes run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pgqueue


def record(ctx: pgqueue.JobContext, event: str = "start", note: str | None = None) -> None:
    with ctx.app.connection() as conn:
        conn.execute(
            "insert into public.side (job_id, attempt, worker, pid, event, note) "
            "values (%s, %s, %s, %s, %s, %s)",
            (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid(), event, note))


def register(app: pgqueue.App) -> pgqueue.App:
    @app.task(name="faults.work", pass_context=True, max_attempts=50)
    def work(ctx: pgqueue.JobContext, ms: float = 0.0) -> int:
        """Runs ``ms`` milliseconds between its start and end rows."""
        record(ctx)
        if ms:
            time.sleep(ms / 1000.0)
        record(ctx, "end")
        return ctx.attempt

    @app.task(name="faults.cancellable", pass_context=True, max_attempts=3)
    def cancellable(ctx: pgqueue.JobContext, seconds: float = 3.0, ignore: bool = False,
                    fail: bool = False) -> str:
        """Runs ``seconds``, checking the cancellation flag every 10 ms.

        ``ignore``: finish anyway and return success; ``fail``: once asked to cancel,
        raise an ordinary (retryable) error instead of :class:`pgqueue.Cancelled`.
        """
        record(ctx)
        deadline = time.monotonic() + seconds
        seen = False
        while time.monotonic() < deadline:
            if not seen and ctx.wait_cancelled(0.01):
                seen = True
                record(ctx, "cancel-seen")
                if fail:
                    raise RuntimeError("failing after a cancellation request")
                if not ignore:
                    ctx.raise_if_cancelled()
            elif seen:
                time.sleep(0.01)
        record(ctx, "end")
        return "finished"

    @app.task(name="faults.report", pass_context=True, max_attempts=3)
    def report(ctx: pgqueue.JobContext, n: int, seconds: float = 5.0) -> int:
        record(ctx, note=str(n))
        time.sleep(seconds)
        record(ctx, "end", note=str(n))
        return n

    return app


def make_app(dsn: str | None = None, **kwargs: Any) -> pgqueue.App:
    """A fresh App with every task of this module registered."""
    return register(pgqueue.App(dsn, **kwargs))


#: for ``pgqueue worker --app tests.faults.app`` (DSN from ``PGQUEUE_DSN``)
app = make_app(pool_max_size=int(os.environ.get("FAULTS_POOL_SIZE", "8")))
