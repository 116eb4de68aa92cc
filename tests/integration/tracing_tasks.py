"""Tasks for tests/integration/test_tracing.py, on an app with ``tracing_enabled``.

Each prefork child records the spans it makes with the OpenTelemetry SDK's in-memory exporter
(set up in ``worker_process_init``, as an application sets up its exporter in a prefork worker);
``recorded_spans`` hands them back, with the pid of the child that holds them.
"""

from __future__ import annotations

import os

from celeriac import Celery, signals

app = Celery("tests.integration.tracing_tasks", tracing_enabled=True)

exporter = None


@signals.worker_process_init.connect
def record_spans_in_memory(**_):
    global exporter
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def span_dict(span):
    """A finished span as plain data (ids in hex, as trace viewers show them)."""
    return {
        "name": span.name, "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "status": span.status.status_code.name, "attributes": dict(span.attributes or {}),
        "events": [event.name for event in span.events],
    }


@app.task
def add(x, y):
    return x + y


@app.task
def broken():
    raise ValueError("broken on purpose")


@app.task
def recorded_spans():
    spans = exporter.get_finished_spans() if exporter is not None else ()
    return {"pid": os.getpid(), "spans": [span_dict(span) for span in spans]}
