"""Tasks for the dispatch fault tests: main tasks that fan out subtasks, and a ledger of what ran.

A worker reads its settings from the environment at import, so each test picks them per worker
process: ``DISPATCH_VT`` (lease seconds), ``DISPATCH_BATCH`` (``dispatcher_batch_size``),
``DISPATCH_WINDOW`` (``dispatcher_poll_size``), ``DISPATCH_POLL_TIMEOUT``
(``dispatcher_poll_timeout``). Everything that happens is appended to the file named by
``DISPATCH_LEDGER``, one line per event, independently of the system under test:

- ``begin <main id>``: a run of a main task's generator started (a resumed one begins again);
- ``done <root id> <index> <worker> <pid>``: a subtask ran to its end (``DISPATCH_NAME`` names
  the worker);
- ``handled <root id> <index> <task id>``: the main task's receiver was given that outcome.

``celery_app`` (looked up lazily, so only a Celery worker imports Celery) is a real Celery 5 app
with the subtask under the same name, for the mixed-fleet test:
``celery -A tests.integration.dispatch_fault_tasks:celery_app worker``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Generator

from celeriac import Celery
from celeriac.dispatch import dispatch

#: the queue the mixed-fleet main task routes its subtasks to (a Celery worker consumes it)
CELERY_QUEUE = "dispatch-celery"
STEP = "dispatch_faults.step"


def _settings() -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for variable, name in (("DISPATCH_BATCH", "dispatcher_batch_size"),
                           ("DISPATCH_WINDOW", "dispatcher_poll_size"),
                           ("DISPATCH_POLL_TIMEOUT", "dispatcher_poll_timeout")):
        if os.environ.get(variable):
            settings[name] = int(os.environ[variable])
    if os.environ.get("DISPATCH_VT"):
        settings["broker_transport_options"] = {
            "visibility_timeout": float(os.environ["DISPATCH_VT"])}
    return settings


app = Celery("tests.integration.dispatch_fault_tasks", **_settings())


def _append(line: str) -> None:
    """One ``write`` on an O_APPEND file: lines from many processes never interleave."""
    path = os.environ.get("DISPATCH_LEDGER")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _run_step(root_id: str, n: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # small steps, so any pool can interrupt it
        time.sleep(0.005)
    _append(f"done {root_id} {n} {os.environ.get('DISPATCH_NAME') or '-'} {os.getpid()}")
    return n


@app.task(name=STEP, bind=True, acks_late=True)
def step(self: Any, n: int, seconds: float = 0.0) -> int:
    """Sleep ``seconds``, ledger ``done``, return ``n``. ``acks_late``: a subtask cut off by a
    crash is delivered again, or its main task would wait for it until the subtask timeout."""
    return _run_step(self.request.root_id, n, seconds)


def record_handled(root_id: str, task_id: str, retval: Any, **kwargs: Any) -> None:
    """The receiver: the subtask's return value is its index."""
    _append(f"handled {root_id} {retval} {task_id}")


@dispatch(receiver=record_handled)
@app.task(name="dispatch_faults.fan_out", bind=True)
def fan_out(self: Any, count: int, seconds: float = 0.0) -> Generator[Any, Any, int]:
    """``count`` subtasks ``step(n, seconds)``; returns ``count``."""
    _append(f"begin {self.request.id}")
    for n in range(count):
        yield step, (n, seconds)
    return count


@dispatch(receiver=record_handled, auto_ignore=False, options={"queue": CELERY_QUEUE})
@app.task(name="dispatch_faults.fan_out_to_celery", bind=True)
def fan_out_to_celery(self: Any, count: int) -> Generator[Any, Any, int]:
    """``count`` subtasks on the queue a Celery worker consumes; their results are stored
    (``auto_ignore=False``), as a Celery worker reports nothing to the dispatch's inbox."""
    _append(f"begin {self.request.id}")
    for n in range(count):
        yield step, (n,)
    return count


def _make_celery_app() -> Any:
    """A real Celery app with ``step`` under the same name, on the same broker and results."""
    import celery  # type: ignore[import-untyped]

    capp = celery.Celery("dispatch_fault_tasks_celery",
                         broker=os.environ["CELERIAC_BROKER_URL"],
                         backend=os.environ["CELERIAC_RESULT_BACKEND"])
    capp.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json",
                     broker_connection_retry_on_startup=True, worker_hijack_root_logger=True)

    @capp.task(name=STEP, bind=True)
    def celery_step(self: Any, n: int, seconds: float = 0.0) -> int:
        return _run_step(self.request.root_id, n, seconds)

    return capp


_celery_app: Any = None


def __getattr__(name: str) -> Any:
    global _celery_app
    if name != "celery_app":
        raise AttributeError(name)
    if _celery_app is None:
        _celery_app = _make_celery_app()
    return _celery_app
