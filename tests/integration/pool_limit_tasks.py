"""Tasks for the autoscale and thread hard-time-limit tests: each says where it ran (the pool
process and thread), so a test can count how many ran side by side."""

from __future__ import annotations

import os
import threading
import time

from celeriac import Celery

app = Celery("tests.integration.pool_limit_tasks")


@app.task
def where(seconds: float) -> dict:
    """Sleeps, then names the pool process and thread it ran in."""
    started = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "thread": threading.get_ident(), "started": started,
            "ended": time.time()}


@app.task
def spin(seconds: float, path: str | None = None) -> str:
    """Loops in Python (no blocking call): only a hard limit that interrupts Python code ends
    it early. Appends "finished" to ``path`` if it ever gets to its end."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        count += 1
    if path:
        with open(path, "a") as fh:
            fh.write("finished\n")
    return "spun to the end"


@app.task
def blocked(seconds: float, path: str) -> str:
    """One blocking C call (time.sleep): the hard limit can only land once it returns; then the
    task must not record anything. Appends "returned" to ``path`` when the sleep is over."""
    try:
        time.sleep(seconds)
    finally:
        with open(path, "a") as fh:
            fh.write("returned\n")
    return "slept to the end"


@app.task
def add(x: int, y: int) -> int:
    return x + y
