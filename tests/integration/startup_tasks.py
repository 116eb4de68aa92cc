"""The app of tests/integration/test_worker_startup.py; its settings come from the environment.

STARTUP_RETRY_ON_STARTUP=0: broker_connection_retry_on_startup = False; STARTUP_MAX_RETRIES=n:
broker_connection_max_retries = n; STARTUP_NOT_BUILT=1: beat_sync_every, which celeriac's beat has
no use for, a beat_schedule and a task rate_limit, which it acts on without a word (the test's
one call runs at once); STARTUP_FAILING_EXTENSION=1: a worker extension whose on_worker_start
raises. The broker URL comes from CELERIAC_BROKER_URL (or the embedded default).
"""

from __future__ import annotations

import os

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.extensions import WorkerExtension

app = Celery("tests.integration.startup_tasks")
if os.environ.get("STARTUP_RETRY_ON_STARTUP") == "0":
    app.conf.broker_connection_retry_on_startup = False
if os.environ.get("STARTUP_MAX_RETRIES"):
    app.conf.broker_connection_max_retries = int(os.environ["STARTUP_MAX_RETRIES"])
NOT_BUILT = os.environ.get("STARTUP_NOT_BUILT") == "1"
if NOT_BUILT:
    app.conf.beat_sync_every = 10
    app.conf.beat_schedule = {"add-every-minute": {
        "task": "tests.integration.startup_tasks.add", "schedule": 60.0, "args": (1, 2)}}
if os.environ.get("STARTUP_FAILING_EXTENSION") == "1":
    class _Refuses(WorkerExtension):
        def on_worker_start(self, consumer: object) -> None:
            raise ImproperlyConfigured("this extension refuses to start (a test of the start-up "
                                       "path)")

    app.worker_extensions.append(_Refuses())


@app.task(rate_limit="1/m" if NOT_BUILT else None)
def add(x, y):
    return x + y


@app.task
def gc_threshold():
    """The collector's first threshold where the task runs (the CLI worker tunes it)."""
    import gc

    return gc.get_threshold()[0]

