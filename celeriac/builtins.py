"""Built-in tasks every app registers, under Celery's names so Celery clients can call them.

Layer: core. ``celery.map`` / ``celery.starmap`` run one task over many items in a single message
(what ``task.map``/``task.starmap``/``task.chunks`` send). ``celery.accumulate`` returns what it
is given (the chord body ``Task.replace`` joins a group replacement with). ``celery.ping``
answers "pong": the in-process test worker (``celeriac.testing.start_worker``) sends it to know
it is consuming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celery


def register_builtins(app: "Celery") -> None:
    def _resolve(task: Any) -> Any:
        name = task["task"] if isinstance(task, dict) else task
        return app.tasks[name]

    def xmap(task: Any, it: Any) -> list:
        fun = _resolve(task)
        return [fun(item) for item in it]

    def xstarmap(task: Any, it: Any) -> list:
        fun = _resolve(task)
        return [fun(*item) for item in it]

    def ping() -> str:
        return "pong"

    def accumulate(*args: Any, **kwargs: Any) -> Any:
        # Task.replace joins a group replacement with this as its chord's body (index=0: the
        # header's results, as one list)
        index = kwargs.get("index")
        return args[index] if index is not None else args

    app._task_from_fun(xmap, name="celery.map", shared=False, typing=False)
    app._task_from_fun(xstarmap, name="celery.starmap", shared=False, typing=False)
    app._task_from_fun(ping, name="celery.ping", shared=False, typing=False)
    app._task_from_fun(accumulate, name="celery.accumulate", shared=False, typing=False)
