"""The benchmark app and its tasks. Layer: bench (outside the package).

The broker and result store come from CELERIAC_BROKER_URL / CELERIAC_RESULT_BACKEND, which the
runner points at a fresh SQLite file for every measure. When CELERIAC_BENCH_READY_FILE is set,
the worker writes the wall-clock time it became ready there, so drains can be timed from that
moment rather than from interpreter start-up.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celeriac import Celery, chord, signals  # noqa: F401 - chord: the client's chord measure

app = Celery("bench.bench_tasks")

READY_FILE_ENV = "CELERIAC_BENCH_READY_FILE"
#: "0" or "1": RabbitMQ's ``confirm_publish`` transport option (bench/redis_vs_celery.py
#: ``--confirm-publish``); unset: the transport's default (confirmed)
CONFIRM_PUBLISH_ENV = "CELERIAC_BENCH_CONFIRM_PUBLISH"
if os.environ.get(CONFIRM_PUBLISH_ENV) in ("0", "1"):
    app.conf.broker_transport_options = {
        "confirm_publish": os.environ[CONFIRM_PUBLISH_ENV] == "1"}


@app.task
def noop() -> None:
    """Does nothing, so a measure shows the queue's own cost per task."""


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def count(results: list) -> int:
    """A chord body: how many header results it was given."""
    return len(results)


#: bench/features_overhead.py switches features on in the worker it starts (comma-separated):
#: "rate": ``noop`` gets a rate limit far above any drain (configured, never binding); "idle":
#: a batch task and a dispatch main task are registered, and never called.
FEATURES_ENV = "CELERIAC_BENCH_FEATURES"
_features = set(filter(None, os.environ.get(FEATURES_ENV, "").split(",")))
if "rate" in _features:
    noop.rate_limit = "1000000/s"
if "idle" in _features:
    from celeriac.batches import Batches
    from celeriac.dispatch import dispatch

    @app.task(base=Batches, flush_every=100, flush_interval=1)
    def idle_batch(requests: list) -> None:
        """Registered, never called: what an idle batch task costs the others."""

    @app.task
    @dispatch
    def idle_dispatch(n: int) -> Any:
        """Registered, never called: what an idle dispatch main task costs the others."""
        for _ in range(n):
            yield noop.s()


@signals.worker_ready.connect
def _write_ready_time(sender: Any = None, **_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    # Write then rename: the runner polls for the file and must never read it half written.
    with open(path + ".tmp", "w") as f:
        f.write(repr(time.time()))
    os.replace(path + ".tmp", path)
