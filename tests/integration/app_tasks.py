"""Tasks the integration tests run in real worker subprocesses (broker URL from the environment)."""

from __future__ import annotations

import asyncio
import os
import time

from celeriac import Celery, shared_task
from celeriac.exceptions import SoftTimeLimitExceeded
from celeriac.utils.log import get_task_logger

app = Celery("tests.integration.app_tasks")
logger = get_task_logger(__name__)


@app.task
def add(x, y):
    return x + y


@app.task
def fail(message="boom"):
    raise ValueError(message)


@app.task(bind=True)
def whoami(self):
    r = self.request
    return {"id": r.id, "retries": r.retries, "root_id": r.root_id, "parent_id": r.parent_id,
            "hostname": r.hostname, "delivery_info": r.delivery_info, "pid": os.getpid()}


@app.task(bind=True, max_retries=3)
def retry_until(self, succeed_on):
    if self.request.retries < succeed_on:
        raise self.retry(countdown=0.05, exc=RuntimeError(f"attempt {self.request.retries}"))
    return self.request.retries


@app.task(autoretry_for=(KeyError,), retry_backoff=0.01, retry_backoff_max=0.05, max_retries=2,
          retry_jitter=False)
def always_keyerror():
    raise KeyError("missing")


@app.task
def write_ledger(path, n, pause=0.0):
    """Appends one line per execution, outside the system under test (an independent ledger)."""
    if pause:
        time.sleep(pause)
    with open(path, "a") as fh:
        fh.write(f"{n} {os.getpid()}\n")
    return n


@app.task
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


@app.task
def log_message(text):
    logger.info("task says: %s", text)
    return text


@app.task
async def async_sleep_add(x, y, seconds=0.2):
    await asyncio.sleep(seconds)
    return x + y


@app.task
async def async_window(seconds):
    start = time.time()
    await asyncio.sleep(seconds)
    return [start, time.time()]


@app.task
def record_errback_old(task_id, *, path):
    """Old-style errback: one positional argument, so it is sent as a task with the id."""
    with open(path, "a") as fh:
        fh.write(f"old {task_id}\n")


@app.task
def record_errback_new(request, exc, traceback, path):
    """New-style errback: called in the worker's process with the failed request."""
    with open(path, "a") as fh:
        fh.write(f"new {request.id} {type(exc).__name__}\n")


@shared_task
def shared_mul(x, y):
    return x * y


@app.task(soft_time_limit=0.3)
def soft_limited(seconds):
    """Sleeps in small steps (so a thread pool can interrupt it too) until the soft limit hits."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "finished"


@app.task(soft_time_limit=0.3)
async def async_soft_limited(seconds):
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "finished"


@app.task
def mark_and_wait(path, seconds):
    """Writes its pid, then waits in small steps (interruptible in every pool)."""
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "completed"


@app.task
async def async_mark_and_wait(path, seconds):
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    await asyncio.sleep(seconds)
    return "completed"
