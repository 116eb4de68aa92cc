"""Tasks for tests/integration/test_dispatch_cli.py (broker and results from the environment).

``squares`` sends half its subtasks to finish at once and holds the other half until a gate
file exists, so its main task provably stores a ``PROGRESS`` state that the progress command
can draw before the dispatch ends; ``broken`` is a main task whose generator raises.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from celeriac import Celery
from celeriac.dispatch import dispatch

app = Celery("tests.integration.dispatch_cli_tasks")

#: how long a held subtask waits for its gate before giving up (a stuck test, not a result)
GATE_PATIENCE = 30.0


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


@dispatch
@app.task
def broken() -> Iterator[Any]:
    yield square, (1,)
    raise RuntimeError("the generator broke")

