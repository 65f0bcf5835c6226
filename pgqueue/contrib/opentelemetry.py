"""OpenTelemetry tracing of enqueues and attempts (extra ``otel``: ``opentelemetry-api``).

Follows the conventions of ``opentelemetry-instrumentation-celery`` and the OpenTelemetry
semantic conventions for messaging; it is a user of :mod:`pgqueue.hooks` (one on-enqueue
and one around-attempt hook, registered process-wide in ``pgqueue.hooks.GLOBAL``)::

    from pgqueue.contrib.opentelemetry import PgQueueInstrumentor

    PgQueueInstrumentor().instrument()          # in the producer and in the worker

Spans:

- at enqueue, inside the caller's current span, a PRODUCER span ``send {task}``; its
  W3C trace context goes into the job's ``meta`` (keys ``traceparent`` and, when there
  is one, ``tracestate``). A workflow gets one ``send`` span (named after its first
  step's task); every step inherits its trace context;
- for each attempt, a CONSUMER span ``process {task}`` whose parent is the context in
  ``meta``: retries are siblings in the enqueuer's trace, on any host, after any delay.
  A job that waited longer than ``link_after`` seconds between its enqueue and this
  attempt starts a new trace with a *link* to the enqueuer's span instead (the
  messaging conventions' advice for a consumer far removed from its producer). The
  exception of a failed attempt is recorded and the span's status set to ERROR;
- a workflow step links to the attempt spans of the steps it waited for (chain steps,
  chord callbacks): each attempt of a workflow step stores its own span context in its
  ``meta`` under ``pgqueue.attempt.traceparent`` (one update of the row, only for
  workflow steps), and a dependent step reads those of its dependencies when it starts.

Attributes (``messaging.*`` of the conventions, ``pgqueue.*`` for the rest):
``messaging.system`` (``"pgqueue"``), ``messaging.operation.type`` and
``messaging.operation.name`` (``"send"`` or ``"process"``), ``messaging.destination.name``
(the queue), ``messaging.message.id`` (the job id, as a string), ``pgqueue.task``,
``pgqueue.attempt``, ``pgqueue.max_attempts``, ``pgqueue.workflow.id`` (workflow
steps). All are set when the span starts, in one mapping, and what depends only on the
task and queue (the span name, the constant attributes) is built once per task.

A job enqueued from SQL or another language joins a trace by carrying a W3C
``traceparent`` (``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``, see
https://www.w3.org/TR/trace-context/) and optionally ``tracestate`` in ``meta``::

    select pgqueue.enqueue('emails.send', '[42]',
        meta => '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}');
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError("pgqueue.contrib.opentelemetry needs OpenTelemetry: "
                      "pip install 'pgqueue-jobs[otel]'") from e

from .. import hooks as _hooks
from .._sql import q

if TYPE_CHECKING:  # pragma: no cover
    from ..context import JobContext
    from ..hooks import Enqueue

__all__ = ["ATTEMPT_KEY", "PgQueueInstrumentor"]

log = logging.getLogger("pgqueue.opentelemetry")

#: the ``meta`` key under which a workflow step's attempt records its span context
ATTEMPT_KEY = "pgqueue.attempt.traceparent"
#: default of ``link_after``: seconds a job may wait and still be a child of its enqueuer
LINK_AFTER = 3600.0

_PROPAGATOR = TraceContextTextMapPropagator()
_SYSTEM = "pgqueue"


def _traceparent(span: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def _span_context(traceparent: str | None) -> Any:
    """The remote span context a ``traceparent`` names, or ``None``."""
    if not traceparent:
        return None
    sc = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent})
                                 ).get_span_context()
    return sc if sc.is_valid else None


class PgQueueInstrumentor:
    """Trace pgqueue enqueues and attempts in this process (producers and workers).

    One instrumentation per process (as OpenTelemetry's instrumentors): a second
    :meth:`instrument` without :meth:`uninstrument` in between changes nothing.
    """

    _lock = threading.Lock()
    _active: PgQueueInstrumentor | None = None

    def __init__(self) -> None:
        self._tracer: Any = None
        self.link_after: float | None = LINK_AFTER
        #: (task, queue) -> (span name, the attributes every attempt of it shares)
        self._per_task: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        #: the last trace context read from a job's meta, and what it parsed to (jobs
        #: enqueued together share one)
        self._last_parent: tuple[Any, Any] = (None, None)

    @property
    def is_instrumented(self) -> bool:
        return PgQueueInstrumentor._active is self

    def instrument(self, tracer_provider: Any = None, *,
                   link_after: float | None = LINK_AFTER) -> None:
        """Start tracing.

        :param tracer_provider: the ``TracerProvider`` to use (default: the global one).
        :param link_after: seconds between enqueue and an attempt (database clock) beyond
            which the attempt's span starts a new trace linked to the enqueuer's instead of
            being its child (float, default 3600; ``None``: always a child).
        """
        with PgQueueInstrumentor._lock:
            if PgQueueInstrumentor._active is not None:
                return
            from .. import __version__
            self._tracer = trace.get_tracer("pgqueue.contrib.opentelemetry", __version__,
                                            tracer_provider=tracer_provider)
            self.link_after = link_after
            _hooks.GLOBAL.add_on_enqueue(self._send)
            _hooks.GLOBAL.add_around_attempt(self._process)
            PgQueueInstrumentor._active = self

    def uninstrument(self) -> None:
        """Stop tracing (enqueues and attempts that start afterwards are not traced)."""
        with PgQueueInstrumentor._lock:
            active = PgQueueInstrumentor._active
            if active is None:
                return
            _hooks.GLOBAL.remove(active._send)
            _hooks.GLOBAL.remove(active._process)
            PgQueueInstrumentor._active = None

    # -- producer ----------------------------------------------------------------------

    def _send(self, enq: Enqueue) -> Iterator[None]:
        attrs: dict[str, Any] = {
            "messaging.system": _SYSTEM, "messaging.operation.type": "send",
            "messaging.operation.name": "send", "pgqueue.task": enq.task}
        if enq.queue is not None:
            attrs["messaging.destination.name"] = enq.queue
        span = self._tracer.start_span(f"send {enq.task}", kind=SpanKind.PRODUCER,
                                       attributes=attrs)
        enq.meta.update(_traceparent(span))
        try:
            job_id = yield
        except BaseException as e:
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
            span.end()
            raise
        if job_id is not None:
            span.set_attribute("messaging.message.id", str(job_id))
        if enq.workflow_id is not None:
            span.set_attribute("pgqueue.workflow.id", enq.workflow_id)
        span.end()

    # -- worker --------------------------------------------------------------------------

    def _process(self, ctx: JobContext) -> Iterator[None]:
        meta = ctx.meta
        parent = None
        links = []
        tp = meta.get("traceparent")
        if tp is not None:
            key = (tp, meta.get("tracestate"))
            last_key, parent = self._last_parent
            if last_key != key:
                parent = _PROPAGATOR.extract(meta)
                self._last_parent = (key, parent)
            waited = ctx.waited
            if (self.link_after is not None and waited is not None
                    and waited > self.link_after):
                sc = trace.get_current_span(parent).get_span_context()
                if sc.is_valid:
                    links.append(Link(sc, {"pgqueue.link": "enqueue"}))
                parent = otel_context.Context()     # a new trace
        if ctx.workflow_id is not None:
            links += self._dependency_links(ctx)
        per_task = self._per_task.get((ctx.task, ctx.queue))
        if per_task is None:
            per_task = self._per_task[(ctx.task, ctx.queue)] = (f"process {ctx.task}", {
                "messaging.system": _SYSTEM, "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": ctx.queue, "pgqueue.task": ctx.task})
        name, attrs = per_task
        attrs = {**attrs, "messaging.message.id": str(ctx.job_id),
                 "pgqueue.attempt": ctx.attempt, "pgqueue.max_attempts": ctx.max_attempts}
        if ctx.workflow_id is not None:
            attrs["pgqueue.workflow.id"] = ctx.workflow_id
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER,
                                       attributes=attrs, links=links)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        except BaseException as e:
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()
            if ctx.workflow_id is not None:
                self._record_attempt(ctx, span)

    def _dependency_links(self, ctx: JobContext) -> list[Any]:
        try:
            rows = _run(ctx, lambda c: c.execute(q("job_dependency_meta"),
                                                 {"id": ctx.job_id}).fetchall())
        except Exception:  # noqa: BLE001 - tracing never fails a job
            log.warning("cannot read the span contexts of job %s's dependencies", ctx.job_id,
                        exc_info=True)
            return []
        links = []
        for dep_id, dep_meta in rows:
            sc = _span_context((dep_meta or {}).get(ATTEMPT_KEY))
            if sc is not None:
                links.append(Link(sc, {"pgqueue.link": "dependency", "pgqueue.job.id": dep_id}))
        return links

    def _record_attempt(self, ctx: JobContext, span: Any) -> None:
        """Store this attempt's span context in the job's meta, for its dependents."""
        import json
        tp = _traceparent(span).get("traceparent")
        if tp is None:
            return
        try:
            _run(ctx, lambda c: c.execute(q("job_meta_merge"), {
                "id": ctx.job_id, "attempt": ctx.attempt, "meta": json.dumps({ATTEMPT_KEY: tp})}))
        except Exception:  # noqa: BLE001
            log.warning("cannot record the span of job %s attempt %s", ctx.job_id,
                        ctx.attempt, exc_info=True)


#: seconds to wait for a pool connection for tracing's own queries
POOL_TIMEOUT = 5.0


def _run(ctx: JobContext, fn: Any) -> Any:
    """``fn(conn)`` on a transactional task's own transaction (in a savepoint, so a
    failure cannot abort it; committed with the job), else on the app's pool."""
    import psycopg
    conn = ctx.connection
    if isinstance(conn, psycopg.Connection):
        with conn.transaction():
            return fn(conn)
    with ctx.app.connection(timeout=POOL_TIMEOUT) as pooled:
        return fn(pooled)
