"""Workflow tasks for tests, in-process and in real ``pgqueue worker`` processes.

``register(app)`` defines the tasks on any App under fixed names (``flows.*``), so a test
can enqueue with its own App while worker processes load ``tests.apps.flows:app``.
Tasks that matter to a test write rows into ``public.side``.
"""

from __future__ import annotations

import json
import os
import random
import time
from types import SimpleNamespace
from typing import Any

import pgqueue
from pgqueue import RetryPolicy

ONE_SECOND = RetryPolicy(base=1.0, cap=1.0)


def record(ctx: pgqueue.JobContext, event: str, note: Any = None) -> None:
    with ctx.app.connection() as conn:
        conn.execute(
            "insert into public.side (job_id, attempt, worker, pid, event, note) "
            "values (%s, %s, %s, %s, %s, %s)",
            (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid(), event,
             None if note is None else json.dumps(note)))


def register(app: pgqueue.App) -> SimpleNamespace:
    @app.task(name="flows.member", pass_context=True)
    def member(ctx: pgqueue.JobContext, i: int, release_at: float | None = None,
               jitter_ms: float = 0.0, log: bool = False) -> int:
        """Return ``i``; first wait for the wall-clock barrier ``release_at`` (at most
        10 s), then a random 0..jitter_ms, so many members finish at the same instant."""
        if log:
            record(ctx, "member")
        if release_at is not None:
            time.sleep(max(0.0, min(10.0, release_at - time.time())))
        if jitter_ms:
            time.sleep(random.random() * jitter_ms / 1000.0)
        return i

    @app.task(name="flows.collect", pass_context=True)
    def collect(ctx: pgqueue.JobContext, results: Any, tag: Any = None) -> int:
        record(ctx, "callback", {"results": results, "tag": tag})
        return len(results)

    @app.task(name="flows.outcomes", pass_context=True)
    def outcomes(ctx: pgqueue.JobContext, outs: list[dict[str, Any]], tag: Any = None) -> list[str]:
        record(ctx, "outcomes", {"outcomes": outs, "tag": tag})
        return [o["state"] for o in outs]

    @app.task(name="flows.flaky", pass_context=True, retry=ONE_SECOND)
    def flaky(ctx: pgqueue.JobContext, value: Any, fail_attempts: int = 0) -> Any:
        """Fail attempts 1..fail_attempts (backoff 1 s), then return ``value``."""
        record(ctx, "flaky")
        if ctx.attempt <= fail_attempts:
            raise RuntimeError(f"planned failure of attempt {ctx.attempt}")
        return value

    @app.task(name="flows.step", pass_context=True, retry=ONE_SECOND)
    def step(ctx: pgqueue.JobContext, prev: list[str], label: str, fail_attempts: int = 0) -> list[str]:
        """A chain link: record what it received, then return ``prev + [label]``."""
        record(ctx, "step", {"label": label, "received": prev})
        if ctx.attempt <= fail_attempts:
            raise RuntimeError(f"step {label} fails attempt {ctx.attempt}")
        return [*prev, label]

    @app.task(name="flows.on_error", pass_context=True)
    def on_error(ctx: pgqueue.JobContext, failed_job_id: int, failure: dict[str, Any],
                 tag: Any = None) -> int:
        record(ctx, "on_error", {"failed_job_id": failed_job_id, "failure": failure, "tag": tag})
        return failed_job_id

    @app.task(name="flows.victim", pass_context=True, max_attempts=5)
    def victim(ctx: pgqueue.JobContext, i: int, hold: float = 0.0) -> int:
        """Write its row, then (first attempt only) stay busy for ``hold`` seconds, so
        a SIGKILL lands after the work but before the completion is recorded."""
        record(ctx, "victim")
        if ctx.attempt == 1 and hold:
            time.sleep(hold)
        return i

    @app.task(name="flows.add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="flows.total")
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="flows.ident")
    def ident(value: Any = None) -> Any:
        return value

    @app.task(name="flows.split", pass_context=True, retry=RetryPolicy(base=0.1, cap=0.1))
    def split(ctx: pgqueue.JobContext, n: int, nest: int = 0) -> None:
        """Replace itself with a group of ``n`` members returning 0..n-1; with ``nest``,
        member 0 is itself a split of 2 (nested ``nest`` levels)."""
        record(ctx, "split", {"n": n, "nest": nest})
        members = [add.s(i) for i in range(n)]
        if nest and n:
            members[0] = split.s(2, nest - 1)
        return ctx.replace(pgqueue.group(members))

    @app.task(name="flows.replace_outside", pass_context=True, max_attempts=1)
    def replace_outside(ctx: pgqueue.JobContext) -> None:
        return ctx.replace(add.s(1))

    return SimpleNamespace(member=member, collect=collect, outcomes=outcomes, flaky=flaky,
                           step=step, on_error=on_error, victim=victim, add=add, total=total,
                           ident=ident, split=split, replace_outside=replace_outside)


app = pgqueue.App(pool_max_size=8)
tasks = register(app)
