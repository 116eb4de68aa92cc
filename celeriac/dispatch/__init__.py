"""Dispatch: a generator main task fans out subtasks and handles each result as it finishes.

Layer: dispatch (above the client side, below the worker). ``@dispatch`` turns a generator
function, or a task made from one (above or below the task decorator), into a main task: when
it runs, what it yields is sent as subtasks in a bounded window, and each subtask's outcome is
handed to ``subtask_success`` / ``subtask_failure`` / ``subtask_timeout`` and to the
``receiver`` as it arrives (see run.py). Main tasks run outside the worker's pool (worker:
``runs_outside_pool``), so waiting for subtasks never takes a slot they need.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import _context
from .run import PROGRESS, DispatchRun, drive, drive_async

__all__ = ["dispatch", "DispatchConfig", "PROGRESS"]


@dataclass(frozen=True)
class DispatchConfig:
    """What ``@dispatch(...)`` was given."""

    #: options for every subtask (a yielded item's own options win)
    options: dict[str, Any] = field(default_factory=dict)
    #: called as ``receiver(root_id=, task_id=, retval=)`` for each successful subtask
    receiver: Callable[..., Any] | None = None
    #: a result store URL for this dispatch's state (default: ``dispatcher_result_backend``,
    #: else the app's result store)
    backend: str | None = None
    #: the subtasks' own results are not stored: their outcomes go only to the dispatch
    auto_ignore: bool = True


#: task options every main task gets (a task's explicit options win): acks_late, so a main task
#: whose worker dies is delivered again and resumes; outside the pool, so it never holds a slot
MAIN_TASK_OPTIONS = {"acks_late": True, "runs_outside_pool": True}


def dispatch(fun: Any = None, *, options: dict[str, Any] | None = None,
             receiver: Callable[..., Any] | None = None, backend: str | None = None,
             auto_ignore: bool = True) -> Any:
    """``@dispatch`` or ``@dispatch(options=, receiver=, backend=, auto_ignore=)``, above or
    below ``@app.task`` / ``@shared_task``."""
    config = DispatchConfig(dict(options or {}), receiver, backend, auto_ignore)
    if fun is None:
        return functools.partial(_apply, config=config)
    return _apply(fun, config=config)


def _apply(target: Any, *, config: DispatchConfig) -> Any:
    from ..task import SharedTaskProxy, Task

    if isinstance(target, Task):  # above @app.task: the task's class runs the main loop now
        main = main_task_function(_original(target), config)
        cls = type(target)
        cls.run = main if target._bound else staticmethod(main)  # type: ignore[method-assign]
        cls.__wrapped__ = staticmethod(main)
        cls.is_coroutine = inspect.iscoroutinefunction(main)
        for key, value in MAIN_TASK_OPTIONS.items():
            if key not in cls.__dict__ or key == "runs_outside_pool":
                setattr(cls, key, value)
        return target
    if isinstance(target, SharedTaskProxy):  # above @shared_task: every app's copy changes
        from ..task import replace_shared_function

        main = main_task_function(target.__wrapped__, config)
        replace_shared_function(target, main)
        return target
    if callable(target):  # below the task decorator: the task is made from the main function
        return main_task_function(target, config)
    raise TypeError(f"@dispatch decorates a generator function or a task, not {target!r}")


def _original(task: Any) -> Callable[..., Any]:
    wrapped = task.__wrapped__
    return getattr(wrapped, "__func__", wrapped)


def main_task_function(fun: Callable[..., Any], config: DispatchConfig) -> Callable[..., Any]:
    """A function with ``fun``'s signature that runs the dispatch loop over what ``fun``
    yields (``fun``: a generator function, or an async generator function)."""
    name = getattr(fun, "__qualname__", repr(fun))
    if inspect.isasyncgenfunction(fun):
        @functools.wraps(fun)
        async def main_async(*args: Any, **kwargs: Any) -> Any:
            run, skip = _start(config)
            return await drive_async(run, fun(*args, **kwargs), skip)

        main: Callable[..., Any] = main_async
    elif inspect.isgeneratorfunction(fun):
        @functools.wraps(fun)
        def main_sync(*args: Any, **kwargs: Any) -> Any:
            run, skip = _start(config)
            return drive(run, fun(*args, **kwargs), skip)

        main = main_sync
    else:
        raise TypeError(
            f"@dispatch: {name} must be a generator function (it yields its subtasks: "
            "`yield task, (args,)`)")
    main.__celeriac_dispatch__ = config  # type: ignore[attr-defined]
    main.__celeriac_task_options__ = dict(MAIN_TASK_OPTIONS)  # type: ignore[attr-defined]
    return main


def _start(config: DispatchConfig) -> tuple[DispatchRun, int]:
    """The run of the main task executing now (a direct call gets an id of its own)."""
    import uuid

    from ..task import Context

    task = _context.current_task_var.get()
    request = _context.current_request_var.get()
    app = task._get_app() if task is not None else _context.get_or_create_current_app()
    if request is None or getattr(request, "id", None) is None:
        request = Context(id=str(uuid.uuid4()), called_directly=True)
        request.root_id = request.id
    run = DispatchRun(app, task, request, config)
    return run, run.load()
