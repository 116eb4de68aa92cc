"""celeriac: a Celery-compatible distributed task queue.

Import what you imported from ``celery``: ``from celeriac import Celery, shared_task``.
"""

from __future__ import annotations

from typing import Any

from . import states
from ._context import current_app, get_current_app
from ._version import VERSION as VERSION  # public, as before, though not in __all__
from ._version import __version__
from .app import Celery
from .canvas import (
    Signature,
    TaskSet,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    subtask,
    xmap,
    xstarmap,
)
from .protocol.entities import Broadcast, Exchange, Queue
from .result import AsyncResult, EagerResult, GroupResult, ResultSet, TaskSetResult
from .task import Task, shared_task

__all__ = [
    "AsyncResult",
    "Broadcast",
    "Celery",
    "EagerResult",
    "Exchange",
    "GroupResult",
    "Queue",
    "ResultSet",
    "Signature",
    "Task",
    "TaskSet",
    "TaskSetResult",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "get_current_app",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "subtask",
    "xmap",
    "xstarmap",
]


def __getattr__(name: str) -> Any:
    # current_task is looked up at access time (a contextvar), never cached; current_app is a
    # proxy that does the same on every use (so ``from celeriac import current_app`` works too).
    if name == "current_task":
        from ._context import current_task_var

        return current_task_var.get()
    raise AttributeError(f"module 'celeriac' has no attribute {name!r}")
