"""Tasks for the pool-child limit tests (worker_max_tasks_per_child, worker_max_memory_per_child):
each reports the pid of the pool process it ran in."""

from __future__ import annotations

import os

from celeriac import Celery
from celeriac.worker.pools.processes import resident_kib

app = Celery("tests.integration.child_limit_tasks")

#: what ``hog`` keeps alive for the rest of the process's life
_kept: list[bytearray] = []


@app.task
def where() -> dict:
    return {"pid": os.getpid(), "rss_kib": resident_kib()}


@app.task
def hog(megabytes: int) -> dict:
    _kept.append(bytearray(b"\x01") * (megabytes << 20))  # every page written, so resident
    return {"pid": os.getpid(), "rss_kib": resident_kib()}


@app.task(time_limit=30)
def hard_limited() -> int:
    return os.getpid()
