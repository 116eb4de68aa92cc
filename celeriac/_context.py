"""Context variables for "the current app" and "the task being executed".

Layer: core. contextvars, not thread-locals, so the right value follows a task into asyncio
tasks and is separate per thread in the thread pool.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

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


_fallback_lock = threading.Lock()


def get_or_create_current_app() -> "Celery":
    """The current app; with none created yet, a fallback app named ``default`` (with the default
    settings: the embedded SQLite broker) made the default app, as Celery's ``current_app`` does.
    The next ``Celery(...)`` created replaces it."""
    app = get_current_app()
    if app is not None:
        return app
    with _fallback_lock:
        app = get_current_app()
        if app is None:
            from .app import Celery

            app = Celery("default", set_as_current=False)
            set_default_app(app)
            # Celery makes this app silently; a task sent to its embedded broker by mistake
            # would wait for a worker that never comes, so it is said once
            logging.getLogger("celeriac").warning(
                "current_app: no app has been created yet, so a fallback app named 'default' "
                "(default settings: %s) is used; create your Celery(...) app before using "
                "current_app, or pass app= explicitly", app.broker_url)
    return app


class _CurrentAppProxy:
    """What ``from celeriac import current_app`` binds: every use is forwarded to the app that is
    current *at that moment* (Celery's ``current_app`` proxy), so importing it before any app
    exists, or before the app a test makes current, is fine."""

    __slots__ = ()

    def _get_current_object(self) -> "Celery":
        return get_or_create_current_app()

    @property  # type: ignore[misc]  # isinstance(current_app, Celery) holds, as in Celery
    def __class__(self) -> type:
        return type(self._get_current_object())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._get_current_object(), name)

    def __dir__(self) -> list[str]:
        return dir(self._get_current_object())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _CurrentAppProxy):
            other = other._get_current_object()
        return self._get_current_object() is other

    def __hash__(self) -> int:
        return hash(self._get_current_object())

    def __bool__(self) -> bool:
        return True

    def __enter__(self) -> "Celery":
        return self._get_current_object().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._get_current_object().__exit__(*exc)

    def __repr__(self) -> str:
        return repr(self._get_current_object())

    def __reduce__(self) -> Any:
        return self._get_current_object().__reduce__()


#: ``celeriac.current_app``: typed as the app it stands for
current_app: "Celery" = cast("Celery", _CurrentAppProxy())


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


class _CurrentTaskProxy:
    """What ``from celeriac import current_task`` binds: the task running in this context at
    each use (Celery's ``current_task`` proxy), so a module may import it once at the top.
    False outside a task; ``current_task.request`` and the task's other attributes read
    through."""

    __slots__ = ()

    def _get_current_object(self) -> Any:
        return current_task_var.get()

    def __getattr__(self, name: str) -> Any:
        task = current_task_var.get()
        if task is None:
            raise AttributeError(f"current_task: no task is running here (looking up {name!r})")
        return getattr(task, name)

    def __bool__(self) -> bool:
        return current_task_var.get() is not None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _CurrentTaskProxy):
            other = other._get_current_object()
        return current_task_var.get() == other

    def __hash__(self) -> int:
        return hash(current_task_var.get())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return current_task_var.get()(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(current_task_var.get())


#: ``celeriac.current_task``: the running task, looked up at each use (None-like outside one)
current_task: Any = _CurrentTaskProxy()

