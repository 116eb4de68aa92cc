"""Tasks the lock integration tests run, in-process (threads) and in worker subprocesses;
broker and results from the environment, like app_tasks.

Runs are observed outside the system under test: each task appends a line as it starts and as it
ends to a ledger file named in its arguments, with ``os.write`` on an ``O_APPEND`` file, so lines
from several processes keep one order. ``LOCK_EXPIRE`` (seconds a dead worker's lock outlives
it) and ``LOCK_VT`` (broker lease seconds) are read at import, for worker subprocesses.
"""

from __future__ import annotations

import os
import time

from celeriac import Celery
from tests.integration.ledger import append

EXPIRE = float(os.environ.get("LOCK_EXPIRE") or 30)


def _settings() -> dict:
    if os.environ.get("LOCK_VT"):
        return {"broker_transport_options": {"visibility_timeout": float(os.environ["LOCK_VT"])}}
    return {}


app = Celery("tests.integration.lock_tasks", **_settings())


@app.task(bind=True, lock="job:{key}", lock_expire=EXPIRE)
def exclusive(self, key: str, ledger: str, seconds: float = 0.2) -> str:
    """At most one running per ``key``, across every worker."""
    append(ledger, f"start {key} {self.request.id} {os.getpid()}")
    time.sleep(seconds)
    append(ledger, f"end {key} {self.request.id} {os.getpid()}")
    return key


@app.task(unique="report:{day}")
def report(day: str, ledger: str) -> str:
    """Never queued twice for one ``day``."""
    append(ledger, f"run {day}")
    return day
