"""Signatures: a task call packed as data (``task.s(...)``), as Celery embeds them in messages.

Layer: canvas (above producer and results). A ``Signature`` is a dict subclass with Celery's keys
(``task``, ``args``, ``kwargs``, ``options``, ``subtask_type``, ``immutable``), so it round-trips
through JSON and through Celery peers unchanged; ``Signature.from_dict`` turns such a dict back
into the right class (a plain call, or a chain, group, chord, map or chunks, registered by
``canvas/primitives.py`` under their ``subtask_type``).
"""

from __future__ import annotations

import copy
import uuid
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from .. import _context

if TYPE_CHECKING:
    from ..app import Celery
    from ..result import AsyncResult

#: options a later merge may not change once set: a task's group decides which chord it counts
#: toward (Celery's ``_IMMUTABLE_OPTIONS``)
_IMMUTABLE_OPTIONS = frozenset({"group_id", "stamped_headers"})

#: call options that steer the client only and never become part of a message
CLIENT_ONLY_OPTIONS = frozenset({"producer", "publisher", "connection", "router", "result_cls",
                                 "chord_size"})


def message_options(options: dict, drop: frozenset[str] = frozenset()) -> dict:
    """``options`` without the ones that only steer the client (and without ``drop``)."""
    return {k: v for k, v in options.items() if k not in CLIENT_ONLY_OPTIONS and k not in drop}


def given(options: dict) -> dict:
    """The call options actually given (``None`` means "not given", as on Celery)."""
    return {k: v for k, v in options.items() if v is not None}


def as_list(value: Any) -> list:
    """An option that may hold one signature or several, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)


#: what eager runs ignore: the message-only parts of a workflow
_EAGER_DROP = frozenset({"chord", "chain", "group_id", "group_index", "root_id", "parent_id",
                         "reply_to", "add_to_parent", "route_name"})


class Signature(dict):
    """One task call as data, plus the helpers to build on it and to send it."""

    #: ``subtask_type`` -> the class that rebuilds such a dict (see ``register_type``)
    TYPES: ClassVar[dict[str, type["Signature"]]] = {}
    # The app in a slot: a group of 10,000 ``task.s()`` then makes 10,000 fewer objects for the
    # cycle collector to count and walk. ``__dict__`` stays (made only when an attribute is set)
    # so callers may set attributes on a signature, as on Celery's.
    __slots__ = ("_app", "__dict__", "__weakref__")

    def __init__(self, task: Any = None, args: Iterable[Any] | None = None,
                 kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 type: Any = None, subtask_type: str | None = None,  # noqa: A002
                 immutable: bool = False, app: "Celery | None" = None, **ex: Any) -> None:
        name: Any
        if task.__class__ is str:  # the usual call (``task.s()``): a name
            name = task
        elif isinstance(task, dict):  # signature(dict(s)) rebuilds a signature from its data
            dict.__init__(self, task)
            self.setdefault("options", {})
            self._app = app
            return
        else:
            name = task if isinstance(task, str) else getattr(task, "name", None)
            if name is None:
                raise TypeError(f"signature needs a task or task name, got {task!r}")
            if app is None and not isinstance(task, str):
                app = getattr(task, "app", None)
        # item by item: cheaper than dict.__init__ with keywords (a group builds thousands)
        self["task"] = name
        self["args"] = tuple(args) if args else ()
        self["kwargs"] = dict(kwargs) if kwargs else {}
        self["options"] = {**options, **ex} if options else ex  # ``ex`` is this call's own
        self["subtask_type"] = subtask_type
        self["immutable"] = immutable
        self._app = app

    # ---- rebuilding from data ----------------------------------------------------------------
    @classmethod
    def register_type(cls, name: str) -> Callable[[type["Signature"]], type["Signature"]]:
        def register(subclass: type[Signature]) -> type[Signature]:
            Signature.TYPES[name] = subclass
            return subclass
        return register

    @classmethod
    def from_dict(cls, data: dict, app: "Celery | None" = None) -> "Signature":
        """The signature ``data`` describes, as the class its ``subtask_type`` names."""
        kind = data.get("subtask_type")
        target = Signature.TYPES.get(kind) if kind else None
        if target is not None and target is not cls:
            return target.from_dict(data, app=app)
        if target is not None:
            return cls._rebuild(data, app)
        return Signature(data, app=app)

    @classmethod
    def _rebuild(cls, data: dict, app: "Celery | None") -> "Signature":
        sig = cls.__new__(cls)
        Signature.__init__(sig, data, app=app)
        return sig

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

    @args.setter
    def args(self, value: Iterable[Any]) -> None:
        self["args"] = tuple(value)

    @property
    def kwargs(self) -> dict:
        value = self.get("kwargs")
        if value is None:
            value = self["kwargs"] = {}
        return value

    @kwargs.setter
    def kwargs(self, value: dict) -> None:
        self["kwargs"] = dict(value)

    @property
    def options(self) -> dict:
        return self["options"]

    @options.setter
    def options(self, value: dict) -> None:
        self["options"] = dict(value)

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
            from ..exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("signature has no app: create a Celery app first")
        return app

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    @property
    def type(self) -> Any:
        """The registered Task object this signature calls (NotRegistered if unknown here)."""
        return self.app.tasks[self.task]

    # ---- building ----------------------------------------------------------------------------
    def _merge(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
               options: dict | None = None) -> tuple[tuple, dict, dict]:
        """Call-time args prepended, kwargs and options merged (an immutable signature keeps its
        own args and kwargs; options it already has in ``_IMMUTABLE_OPTIONS`` stay)."""
        new_options = self.options
        if options:
            new_options = {**self.options, **{k: v for k, v in options.items()
                                              if k not in _IMMUTABLE_OPTIONS
                                              or k not in self.options}}
        if self.immutable:
            return self.args, dict(self.kwargs), dict(new_options)
        merged_args = tuple(args) + self.args if args else self.args
        merged_kwargs = {**self.kwargs, **kwargs} if kwargs else dict(self.kwargs)
        return merged_args, merged_kwargs, dict(new_options)

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> "Signature":
        """A deep copy with call-time args prepended and kwargs/options merged (partial
        application); the copy's options never share lists with the original's."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        if type(self) is Signature and not any(isinstance(v, (dict, list))
                                               for v in new_options.values()):
            # A plain call with flat options: nothing nested to share, so no deep copy (a group
            # of 10,000 members clones each one). kwargs are copied one level deep, as Celery does.
            new = Signature.__new__(Signature)
            dict.__init__(new, self, args=new_args, kwargs=new_kwargs, options=new_options)
            new._app = self._app
            return new
        data = {**dict(self), "args": new_args, "kwargs": new_kwargs, "options": new_options}
        return Signature.from_dict(copy.deepcopy(data), app=self._app)

    partial = clone

    def replace(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                options: dict | None = None) -> "Signature":
        new = self.clone()
        if args is not None:
            new.args = args
        if kwargs is not None:
            new.kwargs = kwargs
        if options is not None:
            new.options = options
        return new

    def set(self, immutable: bool | None = None, **options: Any) -> "Signature":
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: "Signature") -> "Signature":
        self._append_option("link", callback)
        return callback

    def link_error(self, errback: "Signature") -> "Signature":
        self._append_option("link_error", errback)
        return errback

    def on_error(self, errback: "Signature") -> "Signature":
        """Celery's chaining form of ``link_error``: returns this signature."""
        self.link_error(errback)
        return self

    def _append_option(self, key: str, value: Any) -> None:
        current = self.options.get(key)
        if current is None:
            self.options[key] = [value]
        elif isinstance(current, dict):  # a single signature stored by hand
            self.options[key] = [current, value]
        else:
            current.append(value)

    def freeze(self, _id: str | None = None, group_id: str | None = None,
               chord: "Signature | None" = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None) -> Any:
        """Fix this call's task id (and its place in a workflow) before it is sent, so its
        result can be handed out first; returns that result."""
        from ..result import AsyncResult

        opts = self.options
        app = self._app or _context.get_current_app()
        task_id = opts.get("task_id")
        if task_id is None:
            task_id = opts["task_id"] = _id or str(uuid.uuid4())
        if "reply_to" not in opts and app is not None:
            opts["reply_to"] = app.oid  # as Celery's frozen signatures carry the sender's oid
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord is not None:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        return AsyncResult(task_id, app=app, task_name=self.task)

    # ---- composing ---------------------------------------------------------------------------
    def __or__(self, other: Any) -> Any:
        from .primitives import chain, group

        if isinstance(other, group):
            other = other.unroll_single()
        if isinstance(other, chain):  # task | chain -> one chain
            return chain(self, *other.unchain_tasks(), app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def __ior__(self, other: Any) -> Any:  # dict's |= would merge keys: keep Celery's meaning
        return self.__or__(other)

    # ---- calling -----------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        merged_args, merged_kwargs, _ = self._merge(args, kwargs)
        return self.type(*merged_args, **merged_kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult":
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    **options: Any) -> Any:
        """Send this call (args prepended, kwargs and options merged); returns its result."""
        merged_args, merged_kwargs, merged_options = self._merge(args, kwargs, given(options))
        merged_options = message_options(merged_options)
        app = self.app
        task = app.tasks.get(self.task)
        if task is not None:
            return task.apply_async(merged_args, merged_kwargs, **merged_options)
        return app.send_task(self.task, merged_args, merged_kwargs, **merged_options)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> Any:
        """Run the call here and now (as ``Task.apply`` does); returns an EagerResult."""
        merged_args, merged_kwargs, merged_options = self._merge(args, kwargs, given(options))
        return self.type.apply(merged_args, merged_kwargs,
                               **message_options(merged_options, _EAGER_DROP))

    def __repr__(self) -> str:
        args = ", ".join([repr(a) for a in self.args]
                         + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __reduce__(self) -> Any:
        return (_rebuild, (dict(self),))

    def __deepcopy__(self, memo: dict) -> "Signature":
        return Signature.from_dict(copy.deepcopy(dict(self), memo), app=self._app)


def _rebuild(data: dict) -> Signature:
    return Signature.from_dict(data)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """``signature('tasks.add', args=(2, 2))``, ``signature(task)`` or ``signature(dict_of_one)``
    (a signature taken out of a message or out of JSON; it comes back as its own class)."""
    app = kwargs.pop("app", None)
    if isinstance(varies, dict) and not args and not kwargs:
        if isinstance(varies, Signature):
            return varies.clone() if app is None else Signature.from_dict(dict(varies), app=app)
        return Signature.from_dict(varies, app=app)
    return Signature(varies, *args, app=app, **kwargs)  # type: ignore[misc]  # args never hold app


subtask = signature


def maybe_signature(value: Any, app: "Celery | None" = None, clone: bool = False) -> Any:
    """``value`` as a Signature of its own class (None stays None; a list is converted item by
    item); a Signature is returned as is unless ``clone``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [maybe_signature(item, app=app, clone=clone) for item in value]
    if isinstance(value, Signature):
        if clone:
            value = value.clone()
        if app is not None and value._app is None:
            value._app = app
        return value
    return Signature.from_dict(dict(value), app=app)


def result_from_tuple(value: Any, app: "Celery | None" = None) -> Any:
    """Rebuild an AsyncResult/GroupResult from Celery's result tuple layout (meta ``children``)."""
    from ..result import AsyncResult, GroupResult

    (ident, parent_tuple), nodes = value
    parent = result_from_tuple(parent_tuple, app) if parent_tuple else None
    if nodes is not None:
        return GroupResult(ident, [result_from_tuple(n, app) for n in nodes], parent=parent,
                           app=app)
    return AsyncResult(ident, app=app, parent=parent)
