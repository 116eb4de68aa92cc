"""Metrics and tracing for operators: a Prometheus endpoint and OpenTelemetry spans.

Layer: features (beside dispatch, batches and beat): it reads the transport and the worker's
facts, and hooks the producer's and executor's signals; nothing below it imports it except
``app.finalize``, which switches tracing on lazily when ``tracing_enabled`` is set.

- ``celeriac.metrics.prometheus``: the metric names, serving an endpoint on a port (or the first
  free one of a range), queue depths; the standalone ``celeriac metrics`` exporter.
- ``celeriac.metrics.tracing``: ``instrument()`` / ``uninstrument()``, a publish span and a run
  span per task, the W3C trace context carried in the message headers.

The worker's side, counting each outcome, is ``celeriac.worker.metrics.WorkerMetrics``.
Both optional packages are extras: ``celeriac[metrics]`` (prometheus_client) and
``celeriac[otel]`` (opentelemetry-api). See docs/monitoring.md, "Metrics and tracing".
"""
