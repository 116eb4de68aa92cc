"""``celeriac -A proj dashboard [--port 5555] [--address 127.0.0.1]``: serve the web dashboard.

Layer: cli. A thin shell over ``celeriac.dashboard.Dashboard``: checks the options, binds (a
port in use is one line naming ``--port``), prints where the page is, and serves until Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import errno
import signal
from typing import Any

import click

from ..utils.text import one_line
from .base import AppHolder, UserError, _here


@click.command("dashboard")
@click.option("--port", type=int, default=5555, show_default=True,
              help="TCP port to serve on (0: any free port, printed at start).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to bind. The dashboard has no authentication: bind another "
                   "address than loopback only on a network you trust.")
@click.option("-Q", "--queues", default=None,
              help="Comma-separated queues to show besides the configured and consumed ones.")
@click.option("--events/--no-events", default=True, show_default=True,
              help="Receive task and worker events (tasks in flight, outcomes, throughput).")
@click.option("--max-tasks", type=int, default=1000, show_default=True,
              help="How many recent tasks the dashboard remembers.")
@click.pass_obj
def dashboard(obj: AppHolder, port: int, address: str, queues: str | None, events: bool,
              max_tasks: int) -> None:
    """Serve a web page of workers, queues, tasks in flight and recent outcomes, throughput,
    dead letters (with replay), dispatches and batches. No authentication."""
    from ..dashboard import Dashboard

    if not 0 <= port <= 65535:
        raise UserError(f"{_here()}: --port must be from 0 to 65535 (got {port})", exit_code=2)
    if max_tasks < 1:
        raise UserError(f"{_here()}: --max-tasks must be at least 1 (got {max_tasks})",
                        exit_code=2)
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    board = Dashboard(obj.app, address, port, queues=names, events=events, max_tasks=max_tasks)
    try:
        url = board.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"{_here()}: port {port} on {address} is in use: pass another "
                            "--port (or --port 0 for any free one)") from exc
        raise UserError(f"{_here()}: cannot serve on {address}:{port}: {one_line(exc)} "
                        "(check --address)") from exc

    def stop(signum: int, frame: Any) -> None:
        board.interrupt()

    signal.signal(signal.SIGTERM, stop)
    click.echo(f"celeriac dashboard: serving {url} (no authentication; Ctrl-C to stop)")
    if not events:
        click.echo("celeriac dashboard: events are off: no tasks in flight, outcomes or "
                   "throughput")
    try:
        board.serve_forever()
    except KeyboardInterrupt:
        board.stop()
    click.echo("celeriac dashboard: stopped")
