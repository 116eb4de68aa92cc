"""celeriac: a Celery-compatible distributed task queue.

Import what you imported from ``celery``: ``from celeriac import Celery, shared_task``.
"""

from __future__ import annotations

from . import states
from ._context import current_app, current_task, get_current_app
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
