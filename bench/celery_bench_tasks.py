"""The Celery 5 twin of bench/bench_tasks.py, for side-by-side runs. Layer: bench.

Imported only by Celery processes in the benchmark's own virtualenv (bench/.venv-celery), never
by celeriac or pytest. It reads the same environment variables as the celeriac app, so one
runner drives both: CELERIAC_BROKER_URL names the broker (the Redis database, or RabbitMQ's
vhost for bench/peers.py's celery-amqp side), CELERIAC_RESULT_BACKEND the Redis database, and
CELERIAC_BENCH_READY_FILE, when set, receives the wall-clock time the worker became ready.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, chord, signals  # noqa: F401 - chord: the client's chord measure

# Same name as bench.bench_tasks.READY_FILE_ENV; not imported, since celeriac is not installed here.
READY_FILE_ENV = "CELERIAC_BENCH_READY_FILE"

app = Celery("bench.celery_bench_tasks",
             broker=os.environ.get("CELERIAC_BROKER_URL"),
             backend=os.environ.get("CELERIAC_RESULT_BACKEND"))
# Celery's defaults otherwise; this one only silences a start-up deprecation warning.
app.conf.broker_connection_retry_on_startup = True
# "0" or "1" (bench/redis_vs_celery.py --confirm-publish): kombu's confirm_publish on RabbitMQ;
# unset: kombu's default (no publisher confirms)
if os.environ.get("CELERIAC_BENCH_CONFIRM_PUBLISH") in ("0", "1"):
    app.conf.broker_transport_options = {
        "confirm_publish": os.environ["CELERIAC_BENCH_CONFIRM_PUBLISH"] == "1"}


@app.task
def noop() -> None:
    """Does nothing, so a measure shows the queue's own cost per task."""


@app.task
def count(results: list) -> int:
    """A chord body: how many header results it was given."""
    return len(results)


@signals.worker_ready.connect
def _write_ready_time(sender: Any = None, **_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    with open(path + ".tmp", "w") as f:  # write then rename: the runner never reads half a file
        f.write(repr(time.time()))
    os.replace(path + ".tmp", path)
