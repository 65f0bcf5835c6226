"""Tasks for the observability tests (run by real ``pgqueue worker`` processes).

- ``obs.ok``: succeeds;
- ``obs.flaky``: fails its first attempt, succeeds on the second (one retry);
- ``obs.bad``: always fails; two attempts, then discarded.

Retries are due after 0.05 s so a test sees every outcome within a second or two.
"""

from __future__ import annotations

import pgqueue

app = pgqueue.App(pool_max_size=2)

FAST = pgqueue.RetryPolicy(base=0.05, cap=0.05)


@app.task(name="obs.ok", queue="fast")
def ok(n: int) -> int:
    return n * 2


@app.task(name="obs.flaky", queue="fast", pass_context=True, max_attempts=3, retry=FAST)
def flaky(ctx: pgqueue.JobContext, n: int) -> int:
    if ctx.attempt == 1:
        raise ConnectionError(f"flaky {n}: first attempt fails")
    return n


@app.task(name="obs.bad", queue="slow", max_attempts=2, retry=FAST)
def bad(n: int) -> None:
    raise ValueError(f"bad input {n}")


@app.task(name="obs.wait", queue="fast", pass_context=True, max_attempts=1)
def wait(ctx: pgqueue.JobContext) -> None:
    """Runs until cancelled (at most 30 s)."""
    ctx.wait_cancelled(30)
    ctx.raise_if_cancelled()
