"""Signatures: a task call packed as data (``task.s(...)``), as Celery embeds them in messages.

Layer: canvas (above producer and results). A ``Signature`` is a dict subclass with Celery's keys,
so it round-trips through JSON and through Celery peers unchanged. Workflow primitives (chain,
group, chord) build on it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterable

from . import _context

if TYPE_CHECKING:
    from .app import Celery
    from .result import AsyncResult


class Signature(dict):
    """``{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`` plus helpers."""

    def __init__(self, task: Any = None, args: Iterable[Any] | None = None,
                 kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 type: Any = None, subtask_type: str | None = None,  # noqa: A002
                 immutable: bool = False, app: "Celery | None" = None, **ex: Any) -> None:
        if isinstance(task, dict):  # signature(dict(s)) rebuilds a signature from its data
            dict.__init__(self, task)
            self.setdefault("options", {})
            self._app = app
            return
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if name is None:
            raise TypeError(f"signature needs a task or task name, got {task!r}")
        if app is None and not isinstance(task, str):
            app = getattr(task, "app", None)
        dict.__init__(self, task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                      options={**(options or {}), **ex}, subtask_type=subtask_type,
                      immutable=immutable)
        self._app = app

    # ---- fields ----------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self["task"]

    @property
    def name(self) -> str:
        return self["task"]

    @property
    def args(self) -> tuple:
        return tuple(self.get("args") or ())

    @property
    def kwargs(self) -> dict:
        return self.get("kwargs") or {}

    @property
    def options(self) -> dict:
        return self["options"]

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def subtask_type(self) -> str | None:
        return self.get("subtask_type")

    @property
    def app(self) -> "Celery":
        app = self._app or _context.get_current_app()
        if app is None:
            from .exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("signature has no app: create a Celery app first")
        return app

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    # ---- building ----------------------------------------------------------------------------
    def clone(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> "Signature":
        """A copy with call-time args prepended and kwargs/options merged (partial application)."""
        new = Signature(copy.deepcopy(dict(self)), app=self._app)
        if not self.immutable:
            if args:
                new["args"] = tuple(args) + tuple(new.get("args") or ())
            if kwargs:
                new["kwargs"] = {**(new.get("kwargs") or {}), **kwargs}
        if options:
            new["options"] = {**new["options"], **options}
        return new

    def set(self, immutable: bool | None = None, **options: Any) -> "Signature":
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: "Signature") -> "Signature":
        self["options"].setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: "Signature") -> "Signature":
        self["options"].setdefault("link_error", []).append(errback)
        return errback

    # ---- calling -----------------------------------------------------------------------------
    def _task_object(self) -> Any:
        return self.app.tasks.get(self.task)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task = self.app.tasks[self.task]
        merged = self.clone(args, kwargs)
        return task(*merged.args, **merged.kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult":
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    **options: Any) -> "AsyncResult":
        merged = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        opts = dict(merged.options)
        task = self._task_object()
        if task is not None:
            return task.apply_async(merged.args, merged.kwargs, **opts)
        return self.app.send_task(merged.task, merged.args, merged.kwargs, **opts)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> Any:
        merged = self.clone(args, kwargs, **options)
        return self.app.tasks[self.task].apply(merged.args, merged.kwargs, **merged.options)

    def __repr__(self) -> str:
        args = ", ".join([repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __reduce__(self) -> Any:
        return (Signature, (dict(self),))

    def __deepcopy__(self, memo: dict) -> "Signature":
        return Signature(copy.deepcopy(dict(self), memo), app=self._app)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """``signature('tasks.add', args=(2, 2))`` or ``signature(dict_from_a_message)``."""
    if isinstance(varies, dict) and not args and not kwargs:
        return varies if isinstance(varies, Signature) else Signature(varies)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(value: Any, app: "Celery | None" = None) -> Signature | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return Signature(dict(value), app=app)


def result_from_tuple(value: Any, app: "Celery | None" = None) -> Any:
    """Rebuild an AsyncResult/GroupResult from Celery's result tuple layout (meta ``children``)."""
    from .result import AsyncResult, GroupResult

    (ident, parent_tuple), nodes = value
    parent = result_from_tuple(parent_tuple, app) if parent_tuple else None
    if nodes is not None:
        return GroupResult(ident, [result_from_tuple(n, app) for n in nodes], parent=parent, app=app)
    return AsyncResult(ident, app=app, parent=parent)
