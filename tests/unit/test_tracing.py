"""Tracing in one process: an in-process worker (solo pool, memory:// broker) and eager runs,
recorded with the OpenTelemetry SDK's in-memory exporter; a failed publish; a missing package.
(Across a prefork child and real brokers: tests/integration/test_tracing.py.)"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celeriac import Celery
from celeriac.exceptions import MissingDependency, OperationalError
from celeriac.metrics import tracing
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from tests.tracing_support import in_memory_spans


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    with in_memory_spans() as traced:
        yield traced


def finished(exporter: InMemorySpanExporter, name: str, task_id: str) -> Any:
    found = [s for s in exporter.get_finished_spans()
             if s.name == name and (s.attributes or {}).get("messaging.message.id") == task_id]
    assert len(found) == 1, (name, task_id, exporter.get_finished_spans())
    return found[0]


def test_sync_and_async_runs_in_a_worker(spans):
    provider, exporter = spans
    app = make_test_app("tracing-in-process")

    @app.task(name="t.current")
    def current():
        return format(trace.get_current_span().get_span_context().span_id, "016x")

    @app.task(name="t.noop")
    def noop():
        return None

    @app.task(name="t.fan")
    async def fan():
        return noop.delay().id

    try:
        with start_worker(app, pool="solo"):
            first = current.delay()
            second = current.delay()
            inside = first.get(timeout=10), second.get(timeout=10)
            fanned = fan.delay()
            sub_id = fanned.get(timeout=10)
            app.AsyncResult(sub_id).get(timeout=10)
    finally:
        dispose_test_app(app)

    for result, seen in zip((first, second), inside):
        published = finished(exporter, "apply_async/t.current", result.id)
        ran = finished(exporter, "run/t.current", result.id)
        assert ran.parent.span_id == published.context.span_id
        assert ran.context.trace_id == published.context.trace_id
        assert format(ran.context.span_id, "016x") == seen  # current while the task ran
    assert first.id != second.id and finished(exporter, "run/t.current", second.id).context \
        .trace_id != finished(exporter, "run/t.current", first.id).context.trace_id

    # an async task: its run span is not current on the loop, yet what it sends is its child
    fan_ran = finished(exporter, "run/t.fan", fanned.id)
    assert fan_ran.parent.span_id == finished(exporter, "apply_async/t.fan",
                                              fanned.id).context.span_id
    sub_published = finished(exporter, "apply_async/t.noop", sub_id)
    assert sub_published.parent.span_id == fan_ran.context.span_id
    assert finished(exporter, "run/t.noop", sub_id).parent.span_id == \
        sub_published.context.span_id


def test_an_eager_run_is_a_child_of_the_current_span(spans):
    provider, exporter = spans
    app = make_test_app("tracing-eager")

    @app.task(name="t.eager")
    def eager(x):
        return x

    try:
        with provider.get_tracer("test").start_as_current_span("outer") as outer:
            result = eager.apply((1,))
    finally:
        dispose_test_app(app)
    ran = finished(exporter, "run/t.eager", result.id)
    assert ran.parent.span_id == outer.get_span_context().span_id
    assert not trace.get_current_span().get_span_context().is_valid  # nothing left attached


def test_a_failed_publish_ends_its_span_as_an_error(spans):
    _, exporter = spans
    app = Celery("tracing-unreachable", broker="redis://127.0.0.1:1/0",
                 backend="memory://tracing-unreachable", task_publish_retry=False,
                 set_as_current=False)

    @app.task(name="t.never")
    def never():
        return None

    try:
        with pytest.raises(OperationalError):
            never.apply_async(task_id="never-sent")
    finally:
        app.close()
    published = finished(exporter, "apply_async/t.never", "never-sent")
    assert published.status.status_code is trace.StatusCode.ERROR
    assert [e.name for e in published.events] == ["exception"]
    assert not tracing._state.publishing  # nothing kept once the publish failed


def test_a_missing_opentelemetry_names_the_extra(monkeypatch):
    tracing.uninstrument()
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(MissingDependency, match=r"pip install 'celeriac\[otel\]'"):
        tracing.instrument()
    app = Celery("tracing-missing", broker="memory://tracing-missing", tracing_enabled=True,
                 set_as_current=False)
    with pytest.raises(MissingDependency, match="tracing needs"):
        app.finalize()
    assert not tracing.is_instrumented()
