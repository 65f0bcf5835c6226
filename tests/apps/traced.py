"""Tasks for the tracing tests, run by real ``pgqueue worker`` processes.

The worker process traces with the OpenTelemetry SDK and writes every finished span as
one JSON line to the file named by ``PGQUEUE_TEST_SPANS`` (flushed at once), so a test
reads what a worker on another host would export.

- ``tr.ok``: returns its argument;
- ``tr.flaky``: fails its first attempt, succeeds on the second (retry due at once);
- ``tr.total``: sums a list (a chord callback).
"""

from __future__ import annotations

import os

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import pgqueue
from pgqueue.contrib.opentelemetry import PgQueueInstrumentor
from tests.apps.spans import FileExporter


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["PGQUEUE_TEST_SPANS"])))
PgQueueInstrumentor().instrument(tracer_provider=provider)

app = pgqueue.App(pool_max_size=2)
FAST = pgqueue.RetryPolicy(base=0.05, cap=0.05)


@app.task(name="tr.ok", queue="tr")
def ok(n):
    return n


@app.task(name="tr.flaky", queue="tr", pass_context=True, max_attempts=3, retry=FAST)
def flaky(ctx, n):
    if ctx.attempt == 1:
        raise ConnectionError(f"flaky {n}: first attempt fails")
    return n


@app.task(name="tr.total", queue="tr")
def total(values):
    return sum(values)
