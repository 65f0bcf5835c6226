"""Drain rate with hooks and tracing, interleaved: what the hook mechanism and the
OpenTelemetry instrumentation cost a worker.

Variants, run round-robin so that drift of the machine hits each alike:

- ``none``: no hook registered (the path every worker takes without hooks);
- ``hooks``: an around-attempt hook that only yields and an outcome hook that does
  nothing, registered on the app;
- ``otel``: ``PgQueueInstrumentor`` with the SDK and a batch processor feeding an
  exporter that drops the spans (jobs enqueued inside a request span, so each attempt
  continues a trace).

Usage: ``python benchmarks/trace_overhead.py DSN [--jobs 20000] [--rounds 3]``.
Prints the median jobs/s of each variant and its ratio to ``none``.
"""

from __future__ import annotations

import argparse
import statistics

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pgqueue import migrate
from pgqueue.bench import Bench
from pgqueue.contrib.opentelemetry import PgQueueInstrumentor


class Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def around(ctx):
    yield


def outcome(o):
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=10)
    a = ap.parse_args()
    import psycopg
    with psycopg.connect(a.dsn, autocommit=True) as c:
        migrate.apply(c)
    b = Bench(a.dsn, concurrency=a.concurrency)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracer = provider.get_tracer("bench")
    inst = PgQueueInstrumentor()
    rates: dict[str, list[int]] = {"none": [], "hooks": [], "otel": []}
    try:
        b.drain(min(a.jobs, 2000))    # warm up
        for _ in range(a.rounds):
            for variant in rates:
                if variant == "hooks":
                    b.app.around_attempt(around)
                    b.app.on_outcome(outcome)
                if variant == "otel":
                    inst.instrument(tracer_provider=provider)
                try:
                    if variant == "otel":
                        with tracer.start_as_current_span("request"):
                            r = b.drain(a.jobs)
                    else:
                        r = b.drain(a.jobs)
                finally:
                    b.app.hooks.remove(around)
                    b.app.hooks.remove(outcome)
                    inst.uninstrument()
                assert r["ok"], r
                rates[variant].append(r["jobs_per_s"])
                print(variant, r["jobs_per_s"], flush=True)
    finally:
        b.close()
        provider.shutdown()
    base = statistics.median(rates["none"])
    for v, xs in rates.items():
        m = statistics.median(xs)
        print(f"{v:<6} median {m:>8.0f} jobs/s  ratio {m / base:.3f}  runs {xs}")


if __name__ == "__main__":
    main()
