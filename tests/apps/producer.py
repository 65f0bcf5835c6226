"""An app for ``pgqueue enqueue --app``: tasks with declared queue and priority.

Only imported, never run by a worker; nothing connects at import.
"""

from __future__ import annotations

import pgqueue

app = pgqueue.App()


@app.task(name="producer.send", queue="emails", priority=5)
def send(to: str, subject: str = "") -> None:
    """Declares a queue and a priority; takes one required argument."""


@app.task(name="producer.plain")
def plain(n: int) -> int:
    """Declares neither queue nor priority."""
    return n


@app.task(name="producer.with_context", pass_context=True)
def with_context(ctx: pgqueue.JobContext, n: int) -> int:
    """Receives the JobContext first, from the worker."""
    return n
