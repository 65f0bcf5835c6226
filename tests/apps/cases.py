"""Tasks for tests/test_cases_core.py (the failure cases of /work/shared/cases).

Every task writes one ``public.side`` row per execution (event ``start``), so tests
count executions exactly. Task names are explicit (``cases.*``) so that the same
tasks can be registered on a per-test :class:`pgqueue.App` (``make_app(dsn)``, used by
tests to enqueue and by in-process workers) and on the module-level apps that the
``pgqueue worker --app tests.apps.cases[:pool_app]`` processes load.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

import pgqueue


def record(ctx: pgqueue.JobContext, event: str = "start", note: str | None = None,
           conn: Any = None) -> int:
    """Insert one side row; returns how many ``start`` rows this job has now."""
    sql = ("with ins as (insert into public.side (job_id, attempt, worker, pid, event, note) "
           "values (%s, %s, %s, %s, %s, %s) returning 1) "
           "select count(*) + (select count(*) from ins where %s = 'start') from public.side "
           "where job_id = %s and event = 'start'")
    params = (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid(), event, note, event,
              ctx.job_id)
    if conn is not None:
        return conn.execute(sql, params).fetchone()[0]
    with ctx.app.connection() as c:
        return c.execute(sql, params).fetchone()[0]


def register(app: pgqueue.App) -> pgqueue.App:
    @app.task(name="cases.first_long", pass_context=True, max_attempts=3)
    def first_long(ctx: pgqueue.JobContext, long: float = 60.0, short: float = 0.2) -> str:
        """Runs ``long`` seconds the first time it executes, ``short`` on any re-run."""
        starts = record(ctx)
        seconds = long if starts == 1 else short
        ctx.wait_cancelled(seconds)
        record(ctx, "end")
        return "done"

    @app.task(name="cases.tick", pass_context=True)
    def tick(ctx: pgqueue.JobContext, sleep: float = 0.0) -> None:
        record(ctx)
        if sleep:
            time.sleep(sleep)

    @app.task(name="cases.welcome", pass_context=True)
    def welcome(ctx: pgqueue.JobContext, user_id: int) -> str:
        with ctx.app.connection() as conn:
            row = conn.execute("select name from public.users where id = %s",
                               (user_id,)).fetchone()
            if row is None:
                raise LookupError(f"user {user_id} not found")
            record(ctx, note=row[0], conn=conn)
        return row[0]

    @app.task(name="cases.types", pass_context=True)
    def types(ctx: pgqueue.JobContext, *values: Any) -> None:
        out = []
        for v in values:
            cls = type(v)
            item = {"type": f"{cls.__module__}.{cls.__qualname__}", "str": str(v)}
            if hasattr(v, "utcoffset") and hasattr(v, "hour"):
                item["aware"] = v.utcoffset() is not None
                if item["aware"]:
                    item["utc"] = v.astimezone(dt.timezone.utc).isoformat()
            out.append(item)
        record(ctx, note=json.dumps(out))

    @app.task(name="cases.pool_hold", pass_context=True, max_attempts=10,
              retry=pgqueue.RetryPolicy(base=0.2, cap=1.0))
    def pool_hold(ctx: pgqueue.JobContext, hold: float = 1.0,
                  pool_timeout: float | None = None) -> None:
        """Borrow one pool connection for ``hold`` s (first attempt: ``pool_timeout``)."""
        timeout = pool_timeout if ctx.attempt == 1 else None
        with ctx.app.connection(timeout=timeout) as conn:
            record(ctx, conn=conn)
            conn.execute("select pg_sleep(%s)", (hold,))

    @app.task(name="cases.slow_query", pass_context=True, max_attempts=2,
              retry=pgqueue.RetryPolicy(base=0.2, cap=0.5))
    def slow_query(ctx: pgqueue.JobContext, seconds: float = 3.0) -> None:
        record(ctx)
        with ctx.app.connection() as conn:
            conn.execute("select pg_sleep(%s)", (seconds,))
        record(ctx, "end")

    return app


def make_app(dsn: str | None = None, **kwargs: Any) -> pgqueue.App:
    """A fresh App with every task of this module registered."""
    return register(pgqueue.App(dsn, **kwargs))


#: for ``pgqueue worker --app tests.apps.cases`` (DSN from ``PGQUEUE_DSN``)
app = make_app(pool_max_size=4)
#: B24: a pool smaller than the worker's concurrency
pool_app = make_app(pool_max_size=3)
