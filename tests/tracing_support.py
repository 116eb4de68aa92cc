"""This process traced into the OpenTelemetry SDK's in-memory exporter, for one test."""

from __future__ import annotations

import contextlib
from typing import Iterator

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celeriac.metrics import tracing


@contextlib.contextmanager
def in_memory_spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Tracing on, into an in-memory exporter, for the block only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        tracing.uninstrument()
        provider.shutdown()
