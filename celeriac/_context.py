"""Context variables for "the current app" and "the task being executed".

Layer: core. contextvars, not thread-locals, so the right value follows a task into asyncio
tasks and is separate per thread in the thread pool.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celery
    from .task import Context

#: The app used by ``shared_task`` and ``AsyncResult`` when none is passed. Set by ``Celery()``
#: (the most recently created app, as Celery does) and by ``app.set_current()``.
current_app_var: ContextVar["Celery | None"] = ContextVar("celeriac_current_app", default=None)

#: The request of the task executing in this context, or None outside a task.
current_request_var: ContextVar["Context | None"] = ContextVar("celeriac_current_request",
                                                               default=None)

#: The Task object executing in this context.
current_task_var: ContextVar[Any] = ContextVar("celeriac_current_task", default=None)

# The most recently created app, visible from every thread (a ContextVar set in one thread is
# not seen by threads started before it). ``get_current_app`` falls back to it.
_default_app: list["Celery"] = []


def get_current_app() -> "Celery | None":
    app = current_app_var.get()
    if app is not None:
        return app
    return _default_app[-1] if _default_app else None


def set_default_app(app: "Celery") -> None:
    _default_app[:] = [app]


def current_worker_request() -> "Context | None":
    """The request of the task a worker is running in this context, or None: outside a task,
    and when the task was called like a function or eagerly (Celery's ``current_worker_task``).
    Work sent from such a task gets it as parent and is listed in its result's ``children``."""
    request = current_request_var.get()
    if request is None or request.called_directly or request.is_eager:
        return None
    return request


def add_to_current_parent(result: Any) -> None:
    """Work sent from inside a running task is one of its children (its stored result lists it,
    as Celery's does)."""
    request = current_worker_request()
    if request is not None:
        request.add_child(result)
