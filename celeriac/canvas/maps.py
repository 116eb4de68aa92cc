"""One task over many items: ``xmap``/``xstarmap`` (``task.map``, ``task.starmap``) and ``chunks``.

Layer: canvas. A map is one ``celery.map``/``celery.starmap`` message that runs the task once per
item in a single worker (every app registers those two names, see ``builtins.py``); ``chunks``
splits the items into a group of starmaps. Kwargs in Celery's layout: ``task``, ``it`` (and
``n`` for chunks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .primitives import app_of, group
from .signature import Signature, given, maybe_signature, message_options

if TYPE_CHECKING:
    from ..app import Celery


class _basemap(Signature):
    _task_name = ""
    _type_name = ""
    _star = ""  # how the repr shows an item being passed: x, or *x

    def __init__(self, task: Any, it: Iterable[Any], app: "Celery | None" = None,
                 **options: Any) -> None:
        Signature.__init__(self, self._task_name, (),
                           {"task": maybe_signature(task, app=app), "it": list(it)}, options,
                           subtask_type=self._type_name, immutable=True, app=app)

    @classmethod
    def from_dict(cls, data: dict, app: "Celery | None" = None) -> "_basemap":
        kwargs = data.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or (), app=app, **(data.get("options") or {}))

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    **options: Any) -> Any:
        _, _, merged = self._merge(options=given(options))
        merged = message_options(merged)
        task = maybe_signature(self.kwargs["task"], app=self._app)
        app = app_of(self)
        # Routed as the mapped task would be (task_routes, its queue), as Celery does.
        return app.tasks[self._task_name].apply_async(
            (), {"task": task, "it": list(self.kwargs["it"])}, route_name=task.task, **merged)

    def __repr__(self) -> str:
        return f"[{self.kwargs['task'].task}({self._star}x) for x in {self.kwargs['it']!r:.100}]"


@Signature.register_type("xmap")
class xmap(_basemap):
    """One task called once per item, in one message (``task.map(items)``)."""

    _task_name = "celery.map"
    _type_name = "xmap"


@Signature.register_type("xstarmap")
class xstarmap(_basemap):
    """One task called once per argument tuple, in one message (``task.starmap(items)``)."""

    _task_name = "celery.starmap"
    _type_name = "xstarmap"
    _star = "*"


@Signature.register_type("chunks")
class chunks(Signature):
    """Items split into chunks of ``n``: a group of ``celery.starmap`` messages."""

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: "Celery | None" = None,
                 **options: Any) -> None:
        if int(n) < 1:
            raise ValueError(f"chunks: n must be at least 1, got {n!r}")
        Signature.__init__(self, "celery.chunks", (),
                           {"task": maybe_signature(task, app=app), "it": list(it), "n": int(n)},
                           options, subtask_type="chunks", immutable=True, app=app)

    @classmethod
    def from_dict(cls, data: dict, app: "Celery | None" = None) -> "chunks":
        kwargs = data.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or (), kwargs["n"], app=app,
                   **(data.get("options") or {}))

    def __call__(self, **options: Any) -> Any:
        return self.apply_async(**options)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    **options: Any) -> Any:
        return self.group().apply_async(args, kwargs, **{**self.options, **options})

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> Any:
        return self.group().apply(args, kwargs, **options)

    def group(self) -> group:
        task, items, size = self.kwargs["task"], list(self.kwargs["it"]), self.kwargs["n"]
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        return group([xstarmap(task, part, app=self._app) for part in parts], app=self._app)

    def __repr__(self) -> str:
        kwargs = self.kwargs
        return f"{kwargs['task'].task}.chunks({len(kwargs['it'])} items, n={kwargs['n']})"
