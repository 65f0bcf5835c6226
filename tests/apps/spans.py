"""Span helpers for the tracing tests: a finished span as JSON, and a file exporter."""

from __future__ import annotations

import json
import threading

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def span_record(span) -> dict:
    """A finished SDK span as plain JSON-able data (what the tests compare)."""
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "links": [{"trace_id": format(link.context.trace_id, "032x"),
                   "span_id": format(link.context.span_id, "016x"),
                   "attributes": dict(link.attributes or {})} for link in span.links],
        "status": span.status.status_code.name,
        "events": [e.name for e in span.events],
    }


class FileExporter(SpanExporter):
    """Appends one JSON line per span to ``path``."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans):
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            for s in spans:
                f.write(json.dumps(span_record(s)) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self):
        return None
