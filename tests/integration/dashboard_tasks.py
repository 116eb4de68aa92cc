"""Tasks the dashboard tests run in a real worker (broker and results from the environment):
a success, a failure with a traceback, a dispatch that holds half its subtasks until a gate
file exists (so its ``PROGRESS`` shows mid-way), and a batch task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from celeriac import Celery
from celeriac.batches import Batches
from celeriac.dispatch import dispatch

app = Celery("tests.integration.dashboard_tasks")

#: how long a held subtask waits for its gate before giving up (a stuck test, not a result)
GATE_PATIENCE = 30.0


@app.task
def add(x: int, y: int) -> int:
    return x + y


def _explode(message: str) -> None:
    raise ValueError(message)


@app.task
def fail(message: str = "boom") -> None:
    _explode(message)  # two frames, so the traceback shows more than the task's own line


@app.task
def square(i: int) -> int:
    return i * i


@app.task
def held_square(i: int, gate: str) -> int:
    """``i * i`` once ``gate`` exists."""
    deadline = time.monotonic() + GATE_PATIENCE
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was never opened")
        time.sleep(0.02)
    return i * i


@dispatch
@app.task
def squares(n: int, gate: str) -> Iterator[Any]:
    """The first half of the subtasks finish at once, the rest once ``gate`` exists."""
    for i in range(n):
        yield (square, (i,)) if i < n // 2 else (held_square, (i, gate))
    return n


@app.task(base=Batches, flush_every=3, flush_interval=0.2)
def tally(requests: list) -> None:
    for request in requests:
        app.backend.mark_as_done(request.id, sum(request.args), request=request)
