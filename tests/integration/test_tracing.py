"""OpenTelemetry spans across a real worker: the publish span in the client, the run span in
the worker's prefork child, linked by the ``traceparent`` header; a chain's next step carries the
trace on. Spans are recorded with the SDK's in-memory exporter on both sides (the child's are
handed back by a task, see tests/integration/tracing_tasks.py)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celeriac import chain
from tests.integration.tracing_tasks import span_dict
from tests.tracing_support import in_memory_spans

pytestmark = pytest.mark.integration

APP = "tests.integration.tracing_tasks"


@pytest.fixture
def client_spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """This process traced into an in-memory exporter, for the test only."""
    with in_memory_spans() as traced:
        yield traced


def one(spans: list[dict[str, Any]], name: str, task_id: str) -> dict[str, Any]:
    found = [s for s in spans
             if s["name"] == name and s["attributes"].get("messaging.message.id") == task_id]
    assert len(found) == 1, (name, task_id, spans)
    return found[0]


def test_run_span_is_a_child_of_the_publish_span_across_a_prefork_child(
        broker, task_module, start_worker, client_spans):
    provider, exporter = client_spans
    tasks = task_module("tracing_tasks", broker.url, broker.results)
    worker = start_worker("-c", "1", app=APP, url=broker.url, env=broker.worker_env())

    with provider.get_tracer("test").start_as_current_span("request") as root:
        single = tasks.add.delay(2, 3)
        steps = chain(tasks.add.s(1, 1), tasks.add.s(10)).delay()
        failing = tasks.broken.delay()
    assert single.get(timeout=20) == 5
    assert steps.get(timeout=20) == 12
    with pytest.raises(ValueError):
        failing.get(timeout=20)
    # the one child ran everything before: its spans of those runs have ended
    handed_back = tasks.recorded_spans.delay().get(timeout=20)
    assert handed_back["pid"] != worker.proc.pid  # recorded in the pool's child
    in_child = handed_back["spans"]
    here = [span_dict(s) for s in exporter.get_finished_spans()]
    trace_id = format(root.get_span_context().trace_id, "032x")
    root_id = format(root.get_span_context().span_id, "016x")

    # one task: publish here, run there
    published = one(here, f"apply_async/{APP}.add", single.id)
    ran = one(in_child, f"run/{APP}.add", single.id)
    assert published["kind"] == "PRODUCER" and ran["kind"] == "CONSUMER"
    assert published["parent_id"] == root_id
    assert ran["parent_id"] == published["span_id"]
    assert published["trace_id"] == ran["trace_id"] == trace_id
    assert ran["attributes"]["celery.state"] == "SUCCESS"
    assert ran["status"] == "UNSET"

    # a chain: the second step is published from the first step's run, in the child
    first_id, second_id = steps.parent.id, steps.id
    first_published = one(here, f"apply_async/{APP}.add", first_id)
    first_ran = one(in_child, f"run/{APP}.add", first_id)
    second_published = one(in_child, f"apply_async/{APP}.add", second_id)
    second_ran = one(in_child, f"run/{APP}.add", second_id)
    assert first_ran["parent_id"] == first_published["span_id"]
    assert second_published["parent_id"] == first_ran["span_id"]
    assert second_ran["parent_id"] == second_published["span_id"]
    assert {s["trace_id"] for s in (first_published, first_ran, second_published,
                                    second_ran)} == {trace_id}

    # a failure: the run span says so
    failed = one(in_child, f"run/{APP}.broken", failing.id)
    assert failed["parent_id"] == one(here, f"apply_async/{APP}.broken", failing.id)["span_id"]
    assert failed["status"] == "ERROR"
    assert failed["attributes"]["celery.state"] == "FAILURE"
    assert "exception" in failed["events"]
