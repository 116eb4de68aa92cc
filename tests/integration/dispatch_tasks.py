"""Dispatch main tasks and their subtasks, run by workers started in the test process
(``celeriac.testing.start_worker``; broker and result store from the environment, as
``task_module`` sets them).

The README example comes first, as the README writes it. Everything the dispatch signals and
receivers hear is kept in ``HEARD`` (reset by the tests), tagged with the main task's id;
subtasks that must be counted where they run append a line to a ledger file of the test's own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Generator, Iterator

from celeriac import Celery, shared_task
from celeriac.dispatch import dispatch
from celeriac.dispatch.signals import subtask_failure, subtask_success, subtask_timeout

app = Celery("tests.integration.dispatch_tasks")

#: how long a held subtask waits for its gate file before giving up (a stuck test, not a result)
GATE_PATIENCE = 30.0


@dataclass
class Heard:
    """What the dispatch signals and receivers reported, in the order they did."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, **details: Any) -> None:
        with self.lock:
            self.events.append({"kind": kind, **details})

    def of(self, kind: str, root_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events
                    if e["kind"] == kind and (root_id is None or e["root_id"] == root_id)]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()


HEARD = Heard()


# ---- the README example, as written there -------------------------------------------------------
@shared_task
def sqrt(i):
    return i * i


@dispatch
@shared_task
def calc():
    for i in range(10):
        yield sqrt, (i,)


@subtask_success.connect(sender=calc)
def handle_result(root_id, task_id, retval, **kwargs):
    HEARD.add("readme", root_id=root_id, task_id=task_id, retval=retval)


# ---- every subtask outcome of every main task ---------------------------------------------------
def _on_success(sender: Any = None, root_id: str = "", task_id: str = "", retval: Any = None,
                **_: Any) -> None:
    HEARD.add("success", sender=getattr(sender, "name", None), root_id=root_id, task_id=task_id,
              retval=retval)


def _on_failure(sender: Any = None, root_id: str = "", task_id: str = "",
                exception: BaseException | None = None, traceback: str | None = None,
                **_: Any) -> None:
    HEARD.add("failure", sender=getattr(sender, "name", None), root_id=root_id,
              task_id=task_id, exception=exception, traceback=traceback)


def _on_timeout(sender: Any = None, root_id: str = "", task_id: str = "",
                exception: BaseException | None = None, **_: Any) -> None:
    HEARD.add("timeout", sender=getattr(sender, "name", None), root_id=root_id,
              task_id=task_id, exception=exception)


subtask_success.connect(_on_success)
subtask_failure.connect(_on_failure)
subtask_timeout.connect(_on_timeout)


def collect(root_id: str, task_id: str, retval: Any) -> None:
    """The ``receiver=`` of ``with_receiver``."""
    HEARD.add("receiver", root_id=root_id, task_id=task_id, retval=retval)


# ---- subtasks -----------------------------------------------------------------------------------
@app.task
def square(i: int) -> int:
    return i * i


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def held(ledger: str, gate: str, i: int) -> int:
    """Writes ``start i`` to the ledger, waits until the gate file exists, writes ``done i``."""
    _write(ledger, f"start {i}")
    deadline = time.monotonic() + GATE_PATIENCE
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    _write(ledger, f"done {i}")
    return i


def _write(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")


# ---- main tasks ---------------------------------------------------------------------------------
@app.task
@dispatch(receiver=collect, auto_ignore=False)
def with_receiver(n: int) -> Iterator[Any]:
    """``receiver=``; ``auto_ignore=False`` keeps each subtask's own result as well."""
    for i in range(n):
        yield square, (i,)


@app.task
@dispatch
def squares(n: int) -> Generator[Any, None, str]:
    """``n`` subtasks, each of the five item forms in turn; returns what the generator returns."""
    for i in range(n):
        form = i % 5
        if form == 0:
            yield square.s(i)
        elif form == 1:
            yield square, (i,)
        elif form == 2:
            yield square, (), {"i": i}
        elif form == 3:
            yield square, (i,), {}, {"priority": 3}
        else:
            yield (square.s(i),)
    return f"sent {n}"


@app.task
@dispatch
def mixed() -> Iterator[Any]:
    """Two successes around one failure."""
    yield square, (2,)
    yield fail, ("subtask broke",)
    yield square, (3,)


@dispatch
@app.task
def chained() -> Iterator[Any]:
    """A chain is one subtask: its last task's result is the one handled (dispatch above
    ``@app.task``)."""
    yield add.s(1, 2) | add.s(10) | square.s()
    yield square, (5,)


@app.task
@dispatch
def held_subtasks(ledger: str, gate: str, n: int) -> Iterator[Any]:
    for i in range(n):
        yield held, (ledger, gate, i)


@app.task
@dispatch
def quick_then_held(ledger: str, gate: str, n: int) -> Iterator[Any]:
    """One subtask that ends at once, then ``n`` held ones: progress after the first."""
    yield square, (7,)
    for i in range(n):
        yield held, (ledger, gate, i)


@app.task
@dispatch
async def async_squares(n: int) -> AsyncIterator[Any]:
    """An ``async def`` generator main task."""
    for i in range(n):
        await asyncio.sleep(0)
        yield square, (i,)
