"""``celeriac -A proj metrics --port 9808``: a Prometheus endpoint for the app's queue depths.

Layer: cli. A thin shell over ``celeriac.metrics.prometheus.QueueExporter``: serves until SIGTERM or
Ctrl-C. Task counts, runtimes and liveness come from each worker's own endpoint
(``worker --metrics-port``); this one measures the queues once for the whole cluster, and keeps
doing so when no worker runs (docs/monitoring.md, "Metrics and tracing").
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from ..exceptions import ImproperlyConfigured
from .base import AppHolder, UserError, _here


@click.command()
@click.option("--port", required=True, metavar="PORT|LOW-HIGH",
              help="Port to serve on: a port, the first free one of a range, or 0 for any free "
                   "port (the one taken is logged).")
@click.option("--address", default="0.0.0.0", show_default=True,
              help="Address to listen on.")
@click.option("-Q", "--queues", default=None,
              help="Comma-separated queues to measure (default: task_queues, else the default "
                   "queue).")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Logging level.")
@click.pass_obj
def metrics(obj: AppHolder, port: str, address: str, queues: str | None, loglevel: str) -> None:
    """Serve Prometheus metrics of the app's queues (celeriac_queue_length) until stopped."""
    from ..metrics.prometheus import QueueExporter, parse_ports
    from ..utils.log import setup_logging

    setup_logging(loglevel, None)
    log = logging.getLogger("celeriac.metrics")
    try:
        ports = parse_ports(port, setting="--port")
        names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        exporter = QueueExporter(obj.app, names)
        endpoint = exporter.serve(ports, address)
    except ImproperlyConfigured as exc:  # MissingDependency too: the line to run
        raise UserError(f"{_here()}: {exc}", exit_code=2) from None
    stopped = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        log.info("metrics: %s received, stopping", signal.Signals(signum).name)
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("celeriac metrics: serving %s (queues: %s)", endpoint.url,
             ", ".join(exporter.queues))
    click.echo(f"celeriac metrics: {endpoint.url}, queue depths of "
               f"{', '.join(exporter.queues)}; Ctrl-C to stop", err=True)
    try:
        while not stopped.wait(1.0):
            pass
    finally:
        endpoint.close()
        obj.app.close()
