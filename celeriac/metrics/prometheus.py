"""Prometheus exposition: metric names, the HTTP endpoint, queue depths.

Layer: features. ``prometheus_client`` is an optional extra (``celeriac[metrics]``), imported only
when an endpoint starts. Two places serve metrics (docs/monitoring.md says when to use which):

- a worker, with ``--metrics-port`` / ``worker_metrics_port`` (``celeriac.worker.metrics``): task
  counts by name and state and runtimes, counted in its main process as each outcome comes back
  (prefork children send theirs over the pool's pipe, so nothing is counted per child), its own
  liveness, and the depths of the queues it consumes;
- ``celeriac -A proj metrics --port 9808`` (``QueueExporter``): the depths of the app's queues
  measured once for the whole cluster, and still there when no worker runs.

Several workers on one machine: each binds its own port. ``worker_metrics_port`` takes a range
(``"9808-9815"``) of which each worker takes the first free port, or 0 for any free port (the
worker logs the one it got). A single port that is already taken stops the worker at start with
one line saying so, rather than running unseen.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from ..exceptions import ImproperlyConfigured, MissingDependency

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from ..transport.base import Transport

logger = logging.getLogger("celeriac.metrics")

#: the metric names, in one place (docs/monitoring.md lists them with their labels)
TASKS_TOTAL = "celeriac_tasks"  # exposed as celeriac_tasks_total{task,state}
TASK_RUNTIME = "celeriac_task_runtime_seconds"  # histogram {task}
QUEUE_LENGTH = "celeriac_queue_length"  # gauge {queue}
WORKER_UP = "celeriac_worker_up"  # gauge {hostname}
WORKER_HEARTBEAT = "celeriac_worker_last_heartbeat_timestamp_seconds"  # gauge {hostname}
WORKER_PROCESSED = "celeriac_worker_tasks_processed"  # counter {hostname} (..._total)
WORKER_ACTIVE = "celeriac_worker_tasks_active"  # gauge {hostname}
WORKER_CONCURRENCY = "celeriac_worker_concurrency"  # gauge {hostname}

#: runtime buckets, seconds: prometheus_client's defaults stop at 10 s, tasks often run longer
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))

_PORTS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_PORTS_HELP = "a port (9808), a range of ports (9808-9815: the first free one) or 0 (any free port)"


def require_prometheus() -> ModuleType:
    """``prometheus_client``, or one line naming the extra to install."""
    try:
        import prometheus_client
    except ImportError:
        raise MissingDependency("metrics need the 'prometheus_client' package: "
                                "pip install 'celeriac[metrics]'") from None
    return prometheus_client


def parse_ports(value: Any, setting: str = "worker_metrics_port") -> list[int]:
    """The ports to try, in order, from an int or a ``"9808"`` / ``"9808-9815"`` string."""
    if isinstance(value, bool):  # True is an int to Python, not a port to a user
        match = None
    elif isinstance(value, int):
        match = _PORTS.match(str(value))
    else:
        match = _PORTS.match(value) if isinstance(value, str) else None
    if match is None:
        raise ImproperlyConfigured(f"{setting}={value!r}: expected {_PORTS_HELP}")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if high > 65535 or low > high or (low == 0 and high != 0):
        raise ImproperlyConfigured(f"{setting}={value!r}: expected {_PORTS_HELP}, each from 1 "
                                   f"to 65535 and the first not above the last")
    return list(range(low, high + 1))


@dataclass
class Endpoint:
    """A running ``/metrics`` HTTP server (a daemon thread); ``close()`` frees its port."""

    server: Any
    thread: threading.Thread
    address: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(registry: CollectorRegistry, ports: Sequence[int], address: str = "0.0.0.0",
          setting: str = "worker_metrics_port") -> Endpoint:
    """Serve ``registry`` on the first of ``ports`` that is free (0: any free port).

    Raises ImproperlyConfigured when every port is taken: a process that was asked for metrics
    and cannot serve them says so at once instead of running without them."""
    prometheus_client = require_prometheus()
    for port in ports:
        try:
            server, thread = prometheus_client.start_http_server(port, address, registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise ImproperlyConfigured(
                f"cannot serve metrics on {address}:{port}: {exc.strerror or exc} (check "
                f"{setting} and worker_metrics_address)") from None
        return Endpoint(server, thread, address, int(server.server_port))
    shown = str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"
    several = "every port of " if len(ports) > 1 else ""
    raise ImproperlyConfigured(
        f"cannot serve metrics: {several}{setting}={shown} is in use on {address} (another "
        f"worker on this machine?): give each worker its own port, a range such as "
        f"{ports[0]}-{ports[-1] + 3} (each takes the first free one), or 0 for any free port")


class QueueDepths:
    """A collector: ``celeriac_queue_length{queue}``, asked of the broker at each scrape.

    What a depth counts is the broker's ``qsize``: on SQLite and Redis every message of the
    queue (ready, deferred or held by a worker); on RabbitMQ the ready ones plus those this
    process holds. A queue the broker cannot be asked about is left out of that scrape (and
    logged), so one broker hiccup does not fail the whole scrape."""

    def __init__(self, transport: Callable[[], Transport], queues: Callable[[], Iterable[str]]
                 ) -> None:
        self._transport = transport
        self._queues = queues

    def describe(self) -> list[Metric]:
        return []  # collected lazily: describing must not reach the broker

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            QUEUE_LENGTH, "Messages in the queue: waiting, deferred or held by a worker "
            "(RabbitMQ: ready plus those held by this process)", labels=["queue"])
        transport = self._transport()
        for queue in dict.fromkeys(self._queues()):
            try:
                depth = transport.qsize(queue)
            except Exception as exc:
                logger.warning("metrics: could not read the depth of queue %r: %s", queue, exc)
                continue
            family.add_metric([queue], float(depth))
        yield family


class QueueExporter:
    """``celeriac metrics``: queue depths of an app, on their own endpoint."""

    def __init__(self, app: Any, queues: Sequence[str] | None = None) -> None:
        from ..routing import Router

        self.app = app
        self.queues = list(queues or Router.queue_names(app.conf))
        self.registry: CollectorRegistry = require_prometheus().CollectorRegistry(
            auto_describe=True)
        self.registry.register(QueueDepths(lambda: app.transport,
                                           lambda: self.queues))

    def serve(self, ports: Sequence[int], address: str = "0.0.0.0") -> Endpoint:
        return serve(self.registry, ports, address, setting="--port")
