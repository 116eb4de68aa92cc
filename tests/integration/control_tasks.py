"""Tasks the remote control tests run in real worker subprocesses (broker URL from the
environment)."""

from __future__ import annotations

import os
import time

from celeriac import Celery

app = Celery("tests.integration.control_tasks")


@app.task
def add(x, y):
    return x + y


@app.task
def hold(marker, seconds):
    """Writes ``marker`` once running, then waits ``seconds`` in short sleeps (so a terminate in
    the thread pools lands between two)."""
    with open(marker, "w") as file:
        file.write(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return "held"
