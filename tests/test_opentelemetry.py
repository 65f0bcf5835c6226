"""OpenTelemetry tracing across processes (pgqueue.contrib.opentelemetry).

The producer is this test process (SDK, in-memory exporter); the worker is a real
``pgqueue worker`` process (tests/apps/traced.py) that writes its spans to a file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from pgqueue.contrib.opentelemetry import ATTEMPT_KEY, PgQueueInstrumentor  # noqa: E402
from pgqueue.workflow import chord  # noqa: E402
from tests.apps.spans import span_record  # noqa: E402
from tests.conftest import ROOT, wait_until  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def producer():
    """This process traced into an in-memory exporter; yields (tracer, exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inst = PgQueueInstrumentor()
    inst.instrument(tracer_provider=provider)
    try:
        yield provider.get_tracer("tests"), exporter
    finally:
        inst.uninstrument()


@pytest.fixture
def traced_worker(spawn_worker, tmp_path, conn):
    """A traced worker process; yields a function returning its spans so far."""
    path = tmp_path / "spans.jsonl"
    path.touch()
    spawn_worker("tests.apps.traced", "-c", "2", env={"PGQUEUE_TEST_SPANS": str(path)})

    def spans():
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    return spans


@pytest.fixture
def tasks(app):
    """The worker's tasks, registered in the producer's app under the same names."""
    @app.task(name="tr.ok", queue="tr")
    def ok(n):
        return n

    @app.task(name="tr.flaky", queue="tr", max_attempts=3, pass_context=True)
    def flaky(ctx, n):
        return n

    @app.task(name="tr.total", queue="tr")
    def total(values):
        return sum(values)
    return ok, flaky, total


def _produced(exporter, name):
    return [span_record(s) for s in exporter.get_finished_spans() if s.name == name]


def _processed(spans, job_id):
    return sorted((s for s in spans() if s["name"].startswith("process ")
                   and s["attributes"].get("messaging.message.id") == str(job_id)),
                  key=lambda s: s["attributes"]["pgqueue.attempt"])


def test_a_job_continues_the_enqueuers_trace(producer, traced_worker, tasks, conn):
    tracer, exporter = producer
    ok, _, _ = tasks
    with tracer.start_as_current_span("GET /signup") as request:
        job = ok.using(meta={"tenant": "acme"}).enqueue(5)
    assert job.result(timeout=20) == 5
    (send,) = _produced(exporter, "send tr.ok")
    assert send["kind"] == "PRODUCER"
    assert send["parent_id"] == format(request.get_span_context().span_id, "016x")
    assert send["attributes"]["messaging.message.id"] == str(job.id)
    assert send["attributes"]["messaging.destination.name"] == "tr"
    # the trace context travels in the row, beside the caller's own metadata
    (meta,) = conn.execute("select meta from pgqueue.jobs where id = %s", (job.id,)).fetchone()
    assert meta["tenant"] == "acme"
    assert meta["traceparent"].startswith(f"00-{send['trace_id']}-{send['span_id']}-")

    (proc,) = wait_until(lambda: _processed(traced_worker, job.id), 10,
                         message="the worker's process span")
    assert proc["name"] == "process tr.ok" and proc["kind"] == "CONSUMER"
    assert proc["trace_id"] == send["trace_id"]
    assert proc["parent_id"] == send["span_id"]
    assert proc["status"] == "UNSET" and proc["links"] == []
    a = proc["attributes"]
    assert a["messaging.system"] == "pgqueue"
    assert a["messaging.operation.type"] == "process"
    assert a["messaging.destination.name"] == "tr"
    assert a["messaging.message.id"] == str(job.id)
    assert (a["pgqueue.task"], a["pgqueue.attempt"],
            a["pgqueue.max_attempts"]) == ("tr.ok", 1, 20)
    assert "pgqueue.workflow.id" not in a
    # no attribute repeats another (the job id and the queue are messaging attributes)
    assert "pgqueue.job.id" not in a and "pgqueue.queue" not in a
    assert "pgqueue.job.id" not in send["attributes"] and "pgqueue.queue" not in send["attributes"]


def test_retries_are_sibling_spans_of_one_trace(producer, traced_worker, tasks):
    tracer, exporter = producer
    _, flaky, _ = tasks
    with tracer.start_as_current_span("request"):
        job = flaky.enqueue(3)
    assert job.result(timeout=20) == 3
    (send,) = _produced(exporter, "send tr.flaky")
    first, second = wait_until(lambda: (lambda p: p if len(p) == 2 else None)(
        _processed(traced_worker, job.id)), 10, message="two attempt spans")
    for p in (first, second):
        assert (p["trace_id"], p["parent_id"]) == (send["trace_id"], send["span_id"])
    assert first["span_id"] != second["span_id"]
    assert first["status"] == "ERROR" and "exception" in first["events"]
    assert second["status"] == "UNSET"
    assert [p["attributes"]["pgqueue.attempt"] for p in (first, second)] == [1, 2]
    assert first["attributes"]["pgqueue.max_attempts"] == 3


def test_a_chord_callback_links_to_its_members_spans(producer, traced_worker, tasks, conn):
    tracer, exporter = producer
    ok, _, total = tasks
    with tracer.start_as_current_span("request"):
        wf = chord([ok.s(1), ok.s(2)], total.s()).enqueue(meta={"tenant": "t1"})
    assert wf.result(timeout=30) == 3
    (send,) = _produced(exporter, "send tr.ok")
    assert send["attributes"]["pgqueue.workflow.id"] == wf.id
    m1, m2, cb = wf.job_ids
    members = [wait_until(lambda i=i: _processed(traced_worker, i), 10,
                          message=f"member {i}'s span")[0] for i in (m1, m2)]
    (callback,) = wait_until(lambda: _processed(traced_worker, cb), 10,
                             message="the callback's span")
    for p in (*members, callback):
        assert (p["trace_id"], p["parent_id"]) == (send["trace_id"], send["span_id"])
        assert p["attributes"]["pgqueue.workflow.id"] == wf.id
    linked = {(link["trace_id"], link["span_id"]) for link in callback["links"]}
    assert linked == {(m["trace_id"], m["span_id"]) for m in members}
    # each step inherited the workflow's meta; members recorded their attempt's span
    rows = dict(conn.execute("select id, meta from pgqueue.jobs where id = any(%s)",
                             ([m1, m2, cb],)).fetchall())
    assert all(rows[i]["tenant"] == "t1" for i in (m1, m2, cb))
    assert rows[m1][ATTEMPT_KEY].startswith(f"00-{members[0]['trace_id']}-{members[0]['span_id']}-")


def test_a_job_enqueued_from_sql_joins_its_handwritten_trace(traced_worker, conn):
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    (job_id,) = conn.execute(
        "select pgqueue.enqueue('tr.ok', '[7]', queue => 'tr', meta => %s::jsonb)",
        (json.dumps({"traceparent": f"00-{trace_id}-{parent}-01"}),)).fetchone()
    conn.commit()
    (proc,) = wait_until(lambda: _processed(traced_worker, job_id), 20,
                         message="the worker's process span")
    assert (proc["trace_id"], proc["parent_id"]) == (trace_id, parent)


def test_a_job_that_waited_too_long_links_instead_of_parenting(traced_worker, conn):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    (job_id,) = conn.execute(
        "insert into pgqueue.jobs (task, args, queue, meta, created_at) "
        "values ('tr.ok', '[1]', 'tr', %s::jsonb, now() - interval '2 hours') returning id",
        (json.dumps({"traceparent": f"00-{trace_id}-{parent}-01"}),)).fetchone()
    conn.commit()
    (proc,) = wait_until(lambda: _processed(traced_worker, job_id), 20,
                         message="the worker's process span")
    assert proc["trace_id"] != trace_id and proc["parent_id"] is None
    assert [(link["trace_id"], link["span_id"]) for link in proc["links"]] == [(trace_id, parent)]


def test_without_opentelemetry_pgqueue_works_and_the_contrib_names_the_extra(dsn):
    code = f"""
import sys
for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
    del sys.modules[name]
sys.modules["opentelemetry"] = None          # as if not installed
import pgqueue
app = pgqueue.App({dsn!r})

@app.task(name="no.otel")
def add(a, b):
    return a + b

w = pgqueue.Worker(app, concurrency=1)
import threading
t = threading.Thread(target=w.run, kwargs={{"install_signal_handlers": False}}, daemon=True)
t.start()
assert add.enqueue(2, 3).result(timeout=20) == 5
w.stop(); t.join(30)
assert not any(m.startswith("opentelemetry.") for m in sys.modules)
try:
    import pgqueue.contrib.opentelemetry
except ImportError as e:
    print("IMPORT-ERROR:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "IMPORT-ERROR:" in out.stdout and "pgqueue-jobs[otel]" in out.stdout


def test_instrument_twice_and_uninstrument(producer, tasks, conn):
    tracer, exporter = producer
    ok, _, _ = tasks
    PgQueueInstrumentor().instrument()          # already instrumented: no second hook
    job = ok.enqueue(1)
    assert len(_produced(exporter, "send tr.ok")) == 1
    PgQueueInstrumentor._active.uninstrument()
    exporter.clear()
    job2 = ok.enqueue(2)
    assert _produced(exporter, "send tr.ok") == []
    metas = dict(conn.execute("select id, meta from pgqueue.jobs").fetchall())
    assert "traceparent" in metas[job.id] and metas[job2.id] == {}
    assert trace.get_current_span() is not None
