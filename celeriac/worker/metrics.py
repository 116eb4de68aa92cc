"""``WorkerMetrics``: a worker's Prometheus endpoint (``--metrics-port`` / ``worker_metrics_port``).

Layer: worker (main process). An extension: ``after_outcome`` counts each task by name and state
and observes its runtime; ``on_worker_start`` starts the HTTP endpoint. Outcomes of every pool
arrive in the main process (a prefork child sends its ``Outcome``, runtime included, over the
pool's pipe), so one registry in one process sees them all: no per-child files, no multiprocess
mode. The endpoint starts after the pool forked, so children never hold its port.

Tasks that end without running are counted too: dropped as revoked or expired (Celery's REVOKED)
through the ``task_revoked`` signal, filtered to this worker.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .. import signals
from ..metrics import prometheus as prom
from .extensions import Dropped, WorkerExtension
from .outcome import Ending

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..app import Celery
    from .consumer import Consumer
    from .job import Job
    from .outcome import Outcome

logger = logging.getLogger("celeriac.worker")

#: endings where the task's code ran, so its runtime means something (a lost process, a time
#: limit or a terminate report no runtime)
_RAN = frozenset({Ending.SUCCEEDED, Ending.FAILED, Ending.RETRIED, Ending.IGNORED,
                  Ending.REJECTED_REQUEUE, Ending.REJECTED_DROP})


class WorkerMetrics(WorkerExtension):
    """Counts outcomes and serves them, with the worker's liveness and its queues' depths."""

    def __init__(self, app: Celery, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self.endpoint: prom.Endpoint | None = None
        self.consumer: Consumer | None = None
        self.last_heartbeat: float | None = None
        self._counts: dict[tuple[str, str], Any] = {}
        self._runtimes: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------------
    def on_worker_start(self, consumer: Consumer) -> None:
        conf = self.app.conf
        ports = prom.parse_ports(conf.get("worker_metrics_port"))
        address = str(conf.get("worker_metrics_address") or "0.0.0.0")
        client = prom.require_prometheus()
        self.consumer = consumer
        registry = client.CollectorRegistry(auto_describe=True)
        self.tasks = client.Counter(
            prom.TASKS_TOTAL, "Tasks this worker ended, by task name and state (SUCCESS, "
            "FAILURE, RETRY, REVOKED, REJECTED, IGNORED)", ["task", "state"], registry=registry)
        self.runtime = client.Histogram(
            prom.TASK_RUNTIME, "Seconds each task's code ran, by task name", ["task"],
            buckets=prom.RUNTIME_BUCKETS, registry=registry)
        registry.register(_WorkerState(self))
        registry.register(prom.QueueDepths(lambda: consumer.transport,
                                           lambda: consumer.queues))
        self.endpoint = prom.serve(registry, ports, address)
        signals.heartbeat_sent.connect(self._on_heartbeat, weak=False)
        logger.info("%s: metrics on %s", self.hostname, self.endpoint.url)

    def on_worker_shutdown(self, consumer: Consumer) -> None:
        """The worker finished (tasks drained): free the port. Serving goes on until then, so a
        long warm shutdown stays visible."""
        signals.heartbeat_sent.disconnect(self._on_heartbeat)
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.close()

    # ---- counting --------------------------------------------------------------------------------
    def after_outcome(self, job: Job, outcome: Outcome) -> None:
        name = getattr(job.task, "name", None) or str(job.headers.get("task") or "?")
        self._count(name, outcome.state)
        if outcome.ending in _RAN:
            runtime = self._runtimes.get(name)
            if runtime is None:
                runtime = self._runtimes[name] = self.runtime.labels(name)
            runtime.observe(outcome.runtime)

    def _count(self, name: str, state: str) -> None:
        counter = self._counts.get((name, state))
        if counter is None:
            counter = self._counts[(name, state)] = self.tasks.labels(name, state)
        counter.inc()

    def on_dropped(self, dropped: Dropped) -> None:
        # a terminated task ended through after_outcome (state REVOKED): counted there
        if dropped.reason not in ("revoked", "expired"):
            return
        name = getattr(dropped.task, "name", None) or str(
            dropped.delivery.message.headers.get("task") or "?")
        self._count(name, "REVOKED")

    def _on_heartbeat(self, sender: Any = None, **_: Any) -> None:
        if sender is self.consumer:
            self.last_heartbeat = time.time()


class _WorkerState:
    """A collector: the worker's liveness, read from the consumer at each scrape."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics = self.metrics
        consumer = metrics.consumer
        host = [metrics.hostname]
        up = GaugeMetricFamily(prom.WORKER_UP, "1 while this worker serves metrics",
                               labels=["hostname"])
        up.add_metric(host, 1.0)
        yield up
        if consumer is None:
            return
        if metrics.last_heartbeat is not None:
            beat = GaugeMetricFamily(
                prom.WORKER_HEARTBEAT, "When this worker last recorded its heartbeat in the "
                "result store (Unix time)", labels=["hostname"])
            beat.add_metric(host, metrics.last_heartbeat)
            yield beat
        processed = CounterMetricFamily(prom.WORKER_PROCESSED,
                                        "Tasks this worker ended since it started",
                                        labels=["hostname"])
        processed.add_metric(host, float(consumer.processed))
        yield processed
        active = GaugeMetricFamily(prom.WORKER_ACTIVE, "Tasks running now", labels=["hostname"])
        active.add_metric(host, float(consumer.active))
        yield active
        size = GaugeMetricFamily(prom.WORKER_CONCURRENCY, "Pool slots (the pool's size now)",
                                 labels=["hostname"])
        size.add_metric(host, float(getattr(consumer.pool, "limit", 0)))
        yield size
