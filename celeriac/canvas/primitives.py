"""Workflow primitives: ``chain``, ``group`` and ``chord`` (``canvas/maps.py``: map, chunks).

Layer: canvas (client side; the worker uses the same classes when it applies a follow-up). Each
is a Signature whose fields sit in ``kwargs`` exactly as Celery puts them (``kwargs.tasks``,
``kwargs.header``/``body``...), so a canvas built here runs on a Celery worker and the reverse.
On the wire (Celery's protocol 2): a chain sends its first task with the rest in ``embed.chain``,
last step first; a group sends one message per member with ``group``/``group_index``; a chord
writes the header's size to the result store (``set_chord_size``) before it sends the header,
each header task carrying the body in ``embed.chord``. Ids are fixed ("frozen") before anything
is sent, so the results handed back are valid at once.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator, cast

from .. import _context
from ..protocol.v2 import uuid4_texts
from ..task import Task
from ..utils.text import one_line
from .signature import Signature, as_list, given, maybe_signature, message_options

if TYPE_CHECKING:
    from ..app import Celery
    from ..result import GroupResult

logger = logging.getLogger(__name__)

#: plain group members are published in batches of this many (one broker round trip each), so
#: a 10,000-task group never holds 10,000 encoded messages at once
PUBLISH_BATCH = 500


def _uuid() -> str:
    return str(uuid.uuid4())


def app_of(sig: Signature, app: "Celery | None" = None) -> "Celery":
    """The signature's app, else the first one a member knows (a chain of ``add.s()`` calls
    belongs to ``add``'s app), else the current app."""
    found = app or sig._app or _member_app(sig)
    if found is None:
        return sig.app  # raises, naming the problem
    sig._app = found
    return found


def _member_app(sig: Any) -> "Celery | None":
    kwargs = sig.get("kwargs") or {}
    members = list(kwargs.get("tasks") or ()) + [kwargs.get(k) for k in ("header", "body", "task")]
    for member in members:
        if isinstance(member, Signature):
            found = member._app or _member_app(member)
            if found is not None:
                return found
    return None


def _is_empty_group(sig: Any) -> bool:
    return isinstance(sig, group) and not sig.tasks


def _eager(app: "Celery") -> bool:
    return bool(app.conf.task_always_eager)


class _TaskList(Signature):
    """What chain and group share: their members in ``kwargs.tasks``."""

    @classmethod
    def from_dict(cls, data: dict, app: "Celery | None" = None) -> Any:
        kwargs = data.get("kwargs") or {}
        sig = cls(list(kwargs.get("tasks") or ()), app=app, **(data.get("options") or {}))
        sig["args"] = tuple(data.get("args") or ())
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs["tasks"]

    @tasks.setter
    def tasks(self, value: Iterable[Any]) -> None:
        self.kwargs["tasks"] = list(value)


# ---- chain --------------------------------------------------------------------------------------
@Signature.register_type("chain")
class chain(_TaskList):
    """Tasks run one after the other, each receiving the previous one's result."""

    def __init__(self, *tasks: Any, app: "Celery | None" = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], dict):
            tasks = tuple(tasks[0])  # chain([a, b]) or chain(generator)
        Signature.__init__(self, "celery.chain", (), {"tasks": [maybe_signature(t, app=app)
                                                               for t in tasks]},
                           options, subtask_type="chain", app=app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs) if self.tasks else None

    def __or__(self, other: Any) -> Any:
        if _is_empty_group(other):
            return self
        if isinstance(other, group):
            other = other.unroll_single()
        tasks = self.unchain_tasks()
        if isinstance(other, chain):
            result: Any = self
            for task in other.unchain_tasks():
                result = result | task
            return result
        if isinstance(other, group):
            if not tasks:
                return other
            if isinstance(tasks[-1], chord):  # the group follows the chord's body
                tasks[-1].body = tasks[-1].body | other
                return chain(*tasks, app=self._app)
            return chain(*tasks, other, app=self._app)
        if isinstance(other, Signature):
            if tasks and isinstance(tasks[-1], group):  # group | task: a chord
                tasks[-1] = chord(tasks[-1], other, app=self._app)
                return chain(*tasks, app=self._app)
            if tasks and isinstance(tasks[-1], chord) and not isinstance(other, chord):
                tasks[-1].body = tasks[-1].body | other
                return chain(*tasks, app=self._app)
            return chain(*tasks, other, app=self._app)
        return NotImplemented

    def unchain_tasks(self) -> list[Signature]:
        """Copies of the steps; the chain's own ``link`` goes to the last step and its
        ``link_error`` to every step (any of them may be the one that fails)."""
        tasks = [maybe_signature(t, app=self._app).clone() for t in self.tasks]
        _link_steps(tasks, self.options.get("link"), self.options.get("link_error"))
        return tasks

    # ---- running ---------------------------------------------------------------------------
    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    **options: Any) -> Any:
        app = app_of(self)
        options = given(options)
        if _eager(app):
            return self.apply(args, kwargs, **options)
        # The chain's own kwargs hold its steps: call-time kwargs go to the first step only.
        merged_args = self.args if self.immutable else tuple(args or ()) + self.args
        # The chain's own link/link_error reach the steps through unchain_tasks; only those
        # given to this call are added by run().
        own = {k: v for k, v in self.options.items() if k not in ("link", "link_error")}
        return self.run(merged_args, dict(kwargs or {}), app=app, **{**own, **options})

    def run(self, args: tuple = (), kwargs: dict | None = None, *, app: "Celery",
            task_id: str | None = None, group_id: str | None = None,
            group_index: int | None = None, chord: Any = None, root_id: str | None = None,
            parent_id: str | None = None, link: Any = None, link_error: Any = None,
            chain: Any = None, **options: Any) -> Any:
        """Freeze every step, then send the first with the others in its ``embed.chain``."""
        options = message_options(options)
        steps = self._prepare_steps(args, kwargs or {}, app, tail=chain)
        if not steps:
            return None
        results = _freeze_steps(steps, app, task_id=task_id, group_id=group_id,
                                group_index=group_index, chord_body=chord, root_id=root_id)
        _link_steps(steps, link, link_error)
        first, rest = steps[0], steps[1:]
        wire_rest = [dict(step) for step in reversed(rest)]
        first_options = _with_lineage(options, root_id, parent_id)
        if wire_rest:
            first_options["chain"] = wire_rest
        sent = first.apply_async(**first_options)
        return sent if not rest else results[-1]

    def _prepare_steps(self, args: tuple, kwargs: dict, app: "Celery",
                       tail: Any = None) -> list[Signature]:
        """The steps to run, flat: nested chains spliced in, one-member groups unrolled, empty
        groups dropped, and a group followed by another step turned into a chord (Celery's
        rules). ``tail`` is the rest of an enclosing chain, in wire order (last step first)."""
        pending = self.unchain_tasks() + [maybe_signature(s, app=app) for s in
                                          reversed(as_list(tail))]
        steps: list[Signature] = []
        while pending:
            step = pending.pop(0)
            if isinstance(step, chain):
                pending[0:0] = step.unchain_tasks()
                continue
            if isinstance(step, group):
                step = step.unroll_single()
                if _is_empty_group(step) and (pending or steps):
                    continue
            steps.append(step)
        merged: list[Signature] = []
        for step in steps:
            if merged and isinstance(merged[-1], group):  # group | next: a chord
                header = merged.pop()
                merged.append(chord(header, step, app=app))
                continue
            merged.append(step)
        if merged and (args or kwargs):
            merged[0] = merged[0].clone(args, kwargs)
        return merged

    def freeze(self, _id: str | None = None, group_id: str | None = None,
               chord: Any = None, root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        app = app_of(self)
        steps = self._prepare_steps(self.args, {}, app)
        # The steps now hold the partial args and the chain's link/link_error: not twice.
        self.tasks, self["args"] = steps, ()
        self.options.pop("link", None)
        self.options.pop("link_error", None)
        results = _freeze_steps(steps, app, task_id=_id, group_id=group_id,
                                group_index=group_index, chord_body=chord, root_id=root_id)
        return results[-1] if results else None

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> Any:
        """Run every step here, in order (``task_always_eager``)."""
        app = app_of(self)
        steps = self._prepare_steps(tuple(args or ()), dict(kwargs or {}), app)
        if not steps:
            return None
        _link_steps(steps, options.pop("link", None), options.pop("link_error", None))
        # the chain's own link/link_error already sit on its steps (unchain_tasks)
        shared = {k: v for k, v in {**self.options, **options}.items()
                  if k not in ("link", "link_error")}
        last = None
        for step in steps:
            result = step.apply((last.get(),) if last is not None else None, **shared)
            result.parent, last = last, result
        return last

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) if self.tasks else "chain()"


def _freeze_steps(steps: list[Signature], app: "Celery", *, task_id: str | None,
                  group_id: str | None, group_index: int | None, chord_body: Any,
                  root_id: str | None) -> list[Any]:
    """Fix every step's id; the last step stands for the whole chain (its id, and its place in
    an enclosing group or chord). Each result's parent is the step before."""
    results: list[Any] = [None] * len(steps)
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        if index == len(steps) - 1:
            results[index] = step.freeze(task_id, group_id=group_id, chord=chord_body,
                                         root_id=root_id, group_index=group_index)
        else:
            results[index] = step.freeze(root_id=root_id)
    for index in range(1, len(results)):
        if results[index] is None:
            continue
        node = _root_of(results[index])  # a chord's result tree
        if node is not results[index - 1]:
            node.parent = results[index - 1]
    return results


def _link_steps(steps: list[Signature], link: Any, link_error: Any) -> None:
    """A chain's callbacks go to its last step; its errbacks to every step (any of them may be
    the one that fails)."""
    if not steps:
        return
    for callback in as_list(link):
        steps[-1].link(callback)
    for errback in as_list(link_error):
        for step in steps:
            step.link_error(errback)


def _with_lineage(options: dict, root_id: str | None, parent_id: str | None) -> dict:
    """A copy of ``options`` carrying the workflow's root and parent, where they are known."""
    options = dict(options)
    if root_id:
        options["root_id"] = root_id
    if parent_id:
        options["parent_id"] = parent_id
    return options


#: the member types ``group._members(copy=False)`` passes on without a copy
_PLAIN_ONLY = frozenset((Signature,))


# ---- group --------------------------------------------------------------------------------------
@Signature.register_type("group")
class group(_TaskList):
    """Tasks run in parallel; their results come back as one GroupResult, in call order."""

    def __init__(self, *tasks: Any, app: "Celery | None" = None, **options: Any) -> None:
        if len(tasks) == 1:
            only = tasks[0]
            if isinstance(only, group):
                tasks = tuple(only.tasks)
            elif isinstance(only, dict):
                tasks = (maybe_signature(only, app=app).clone(),)
            else:
                tasks = only  # a list or a generator of signatures
        # a Signature that needs no app given is kept as is without a call (``task.s()`` x N)
        Signature.__init__(self, "celery.group", (), {"tasks": [
            t if t.__class__ is Signature and (app is None or t._app is not None)
            else maybe_signature(t, app=app) for t in tasks]},
            options, subtask_type="group", app=app)

    def __len__(self) -> int:  # Celery's group: the number of tasks, not of dict keys
        return len(self.tasks)

    def __iter__(self) -> Iterator[Signature]:
        return iter(self.tasks)

    def __call__(self, *args: Any, **options: Any) -> Any:
        return self.apply_async(args, **options)

    def __or__(self, other: Any) -> Any:
        if _is_empty_group(other):
            return self
        return chord(self, body=other, app=self._app)

    def unroll_single(self) -> Signature:
        """A group of one task is that task (with the group's options)."""
        if len(self.tasks) != 1:
            return self
        only = maybe_signature(self.tasks[0], app=self._app).clone()
        for key, value in self.options.items():
            only.options.setdefault(key, value)
        return only

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            task.set_immutable(immutable)

    def link(self, callback: Signature) -> Signature:
        # Runs after the first member only (Celery's behaviour), so it gets no result: use a
        # chord to run something after every member.
        return self.tasks[0].link(maybe_signature(callback).clone().set(immutable=True))

    def link_error(self, errback: Signature) -> Any:
        errback = maybe_signature(errback)
        return tuple(task.link_error(errback.clone()) for task in self.tasks)

    # ---- running ---------------------------------------------------------------------------
    def _members(self, app: "Celery", copy: bool = True) -> list[Signature]:
        """Copies of the members with nested groups flattened (their tasks count one by one);
        without ``copy``, plain task signatures come as they are (for a caller that changes
        none of them but gives those without an app ``app``, as ``maybe_signature`` would:
        ``_send``)."""
        tasks = self.tasks
        if not copy and set(map(type, tasks)) <= _PLAIN_ONLY:
            return list(tasks)  # the usual group: every member a plain task signature
        members: list[Signature] = []
        pending = [maybe_signature(t, app=app) for t in tasks]
        pending.reverse()  # taken from the end: the first member last
        while pending:
            member = pending.pop()
            if not copy and type(member) is Signature:
                members.append(member)
                continue
            member = member.clone()
            if isinstance(member, group):
                pending.extend(maybe_signature(t, app=app) for t in reversed(member.tasks))
            elif isinstance(member, chain) and not member.tasks:
                continue
            else:
                members.append(member)
        return members

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    add_to_parent: bool = True, link: Any = None, link_error: Any = None,
                    **options: Any) -> Any:
        if link is not None:
            raise TypeError("Cannot add link to group: use a chord")
        if link_error is not None:
            raise TypeError("Cannot add link_error to group: do that on the member tasks")
        app = app_of(self)
        options = given(options)
        if _eager(app):
            return self.apply(args, kwargs, **options)
        merged = message_options({**self.options, **options})
        merged.pop("chain", None)  # a group never carries an enclosing chain to its members
        group_id = merged.pop("task_id", None) or _uuid()
        merged.pop("group_id", None)
        merged.pop("group_index", None)
        body = merged.pop("chord", None)
        result = self._send(app, tuple(args or ()), dict(kwargs or {}), group_id, body, merged)
        if add_to_parent:
            _context.add_to_current_parent(result)
        return result

    def _send(self, app: "Celery", args: tuple, kwargs: dict, group_id: str, body: Any,
              options: dict) -> "GroupResult":
        from ..result import AsyncResult, GroupResult

        publisher = _Publisher(app)
        results: list[Any] = []
        root_id = options.get("root_id")
        members = self._members(app, copy=False)
        count = len(members)
        ids = uuid4_texts(count)
        oid = app.oid
        tasks = app.tasks
        #: per task name: the registered task (None: sent by name), whether it checks its
        #: arguments, and for members without options of their own, the options their messages
        #: share
        known: dict[str, tuple[Any, bool, dict | None]] = {}
        counts_checked: set[tuple[str, int]] = set()  # (task, how many arguments) that fit
        partial = bool(args or kwargs)
        add_result = results.append
        new_result = AsyncResult.__new__
        # the batch the last member went to (its calls, task and options): a member like it
        # joins it here, without a call per member
        calls: list[tuple[Any, Any, Any, Any]] = []
        batch_name: str | None = None
        batch_options: dict | None = None
        # the task the last plain member called (``known[name]`` of it), and the arguments
        # last found to fit it: a run of ``task.s()`` looks neither up again
        name_of_last: str | None = None
        task: Any = None
        typing = False
        plain: dict | None = None
        checked_name: str | None = None
        checked_args: Any = None
        try:
            for start in range(0, count, PUBLISH_BATCH):
                if start:
                    # one broker round trip per batch: the next one is built while Redis
                    # stores this one
                    publisher.flush(more=True)
                    batch_options = None
                for index in range(start, min(start + PUBLISH_BATCH, count)):
                    member = members[index]
                    if type(member) is not Signature:
                        if args or kwargs:
                            member = member.clone(args, kwargs) if not member.immutable else member
                        publisher.flush()  # keep the publishing order the call order
                        batch_options = None
                        results.append(member.apply_async(
                            group_id=group_id, group_index=index, chord=body,
                            add_to_parent=False, **options))
                        continue
                    name = member["task"]
                    if name is not name_of_last:
                        try:
                            task, typing, plain = known[name]
                        except KeyError:
                            task = tasks.get(name)
                            if (task is not None
                                    and type(task).apply_async is not Task.apply_async):
                                task = False  # its own apply_async: called through it, on a copy
                            typing, plain = bool(task and task.typing), None
                            known[name] = task, typing, plain
                        name_of_last = name
                    member_app = member._app
                    if member_app is None:
                        member._app = member_app = app  # as maybe_signature gives it
                    if task is False or member_app is not app:
                        # (a member of another app carries that app's reply_to: freeze a copy)
                        member = member.clone(args, kwargs) if partial else member.clone()
                        add_result(member.freeze(group_id=group_id, group_index=index, chord=body,
                                                 root_id=root_id))
                        publisher.add(member, options)
                        batch_options = None
                        continue
                    # What freezing a copy and publishing it would send, without the copy: the
                    # member's own options (its id...) win over the group's, then freeze's.
                    own = member["options"]
                    if own:
                        shared = _member_options(options, own, oid, group_id, body, root_id, task)
                        given_id = own.get("task_id")
                        task_id = given_id or ids[index]
                        if task_id.__class__ is not str:
                            publisher.formed = False
                    else:
                        if plain is None:
                            plain = _member_options(options, own, oid, group_id, body,
                                                    root_id, task)
                            known[name] = task, typing, plain
                        shared, task_id, given_id = plain, ids[index], None
                    task_args = member.get("args") or ()
                    task_kwargs = member.get("kwargs")
                    if not task_kwargs and task_kwargs.__class__ is not dict:
                        task_kwargs = {}  # (an empty dict is taken as it is: no new one a member)
                    if partial and not member.get("immutable"):
                        task_args = tuple(args) + tuple(task_args)
                        task_kwargs = {**task_kwargs, **kwargs}
                    elif task_args.__class__ is not tuple or task_kwargs.__class__ is not dict:
                        publisher.formed = False  # (a list, say: ``v2.Likes.add`` makes a tuple)
                    if typing:
                        if task_kwargs:
                            task._check_arguments(tuple(task_args), task_kwargs)
                        elif task_args is not checked_args or name is not checked_name:
                            # positional arguments only: whether they fit depends on their
                            # count (the same tuple, ``()`` of ``task.s()``: the same count)
                            if (name, len(task_args)) not in counts_checked:
                                task._check_arguments(tuple(task_args), task_kwargs)
                                counts_checked.add((name, len(task_args)))
                            checked_name, checked_args = name, task_args
                    if given_id:
                        add_result(AsyncResult(task_id, app=app, task_name=name))
                    else:  # AsyncResult._drawn, without a call per member
                        result = new_result(AsyncResult)
                        result.id, result.app, result.name = task_id, app, name
                        add_result(result)
                    if shared is not batch_options or name != batch_name:
                        calls = publisher.calls_for(name, shared)
                        batch_name, batch_options = name, shared
                    calls.append((task_id, task_args, task_kwargs, index))
            publisher.flush()
        except BaseException:
            publisher.settle_quietly()  # a batch that went ahead is stored (or logged)
            raise
        return GroupResult(group_id, results, app=app)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> "GroupResult":
        from ..result import GroupResult

        app = app_of(self)
        opts = self.options
        gid = opts.setdefault("task_id", _id or _uuid())
        if group_id:
            opts["group_id"] = group_id
        if chord is not None:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        members = self._members(app)
        # Inside an enclosing group or chord header (a chain ending in this group, a chord body
        # that is a group), the members count toward the enclosing one, as on Celery.
        results = [m.freeze(group_id=group_id or gid, group_index=i, chord=chord,
                            root_id=root_id, parent_id=parent_id) for i, m in enumerate(members)]
        self.tasks = members
        return GroupResult(gid, results, app=app)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              **options: Any) -> "GroupResult":
        from ..result import GroupResult

        app = app_of(self)
        group_id = options.pop("task_id", None) or self.options.get("task_id") or _uuid()
        for key in ("chord", "chain", "group_id", "group_index"):
            options.pop(key, None)
        return GroupResult(group_id, [m.apply(args, kwargs, **options)
                                      for m in self._members(app)], app=app)

    def __repr__(self) -> str:
        return f"group({list(self.tasks)!r})" if self.tasks else "group(<empty>)"


# ---- chord --------------------------------------------------------------------------------------
@Signature.register_type("chord")
class chord(Signature):
    """A group (the header) whose results, in header order, go to one more task (the body)."""

    def __init__(self, header: Any, body: Any = None, task: str = "celery.chord",
                 args: Iterable[Any] | None = None, kwargs: dict | None = None,
                 app: "Celery | None" = None, **options: Any) -> None:
        fields = dict(kwargs) if kwargs else {"kwargs": {}}
        header_sig = header if isinstance(header, group) else (
            maybe_signature(header, app=app) if isinstance(header, dict)
            else group(header, app=app))
        if not isinstance(header_sig, group):  # a single task, or a chain, as the whole header
            header_sig = group([header_sig], app=app)
        fields.update(header=header_sig, body=maybe_signature(body, app=app))
        Signature.__init__(self, task, args, fields, options, subtask_type="chord", app=app)

    @classmethod
    def from_dict(cls, data: dict, app: "Celery | None" = None) -> "chord":
        kwargs = dict(data.get("kwargs") or {})
        header, body = kwargs.pop("header", None), kwargs.pop("body", None)
        sig = cls(header or [], body, args=data.get("args"), kwargs=kwargs or None, app=app,
                  **(data.get("options") or {}))
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    @property
    def tasks(self) -> "group":
        return self.kwargs["header"]

    header = tasks

    @property
    def body(self) -> Any:
        """The body Signature (None until one is given, as in ``chord(header)(body)``)."""
        return self.kwargs.get("body")

    @body.setter
    def body(self, value: Any) -> None:
        self.kwargs["body"] = maybe_signature(value, app=self._app)

    def __call__(self, body: Any = None, **options: Any) -> Any:
        return self.apply_async((), {"body": body} if body else {}, **options)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, group) and len(other.tasks) == 1:
            other = other.unroll_single()
        if isinstance(other, Signature) and not isinstance(other, (group, chain)):
            new = cast(chord, self.clone())  # a chord's clone is a chord
            new.body = new.body | other
            return new
        return Signature.__or__(self, other)

    def link(self, callback: Signature) -> Signature:
        self.body.link(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        # The body is what fails when a header task fails (ChordError), so it holds the errback.
        self.body.link_error(errback)
        return errback

    def set_immutable(self, immutable: bool) -> None:
        self.tasks.set_immutable(immutable)

    def __length_hint__(self) -> int:
        return chord_size(self.tasks)

    # ---- running ---------------------------------------------------------------------------
    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                    task_id: str | None = None, **options: Any) -> Any:
        app = app_of(self)
        options = given(options)
        kwargs = dict(kwargs or {})
        body = kwargs.pop("body", None) or self.body
        if body is None:
            raise TypeError("a chord needs a body: chord(header)(body) or chord(header, body)")
        args = tuple(args or ())
        if not self.immutable:
            args = args + self.args
        else:
            args = self.args
        if _eager(app):
            return self.apply(args, kwargs, body=body, **options)
        merged = {**self.options, **options}
        # A chord's own task_id is its header group's id (Celery's layout); ``task_id`` given
        # to this call is the body's.
        header_id = merged.pop("task_id", None)
        return self.run(self.tasks, maybe_signature(body, app=app).clone(), args, app=app,
                        task_id=task_id, header_id=header_id, kwargs=kwargs, **merged)

    def run(self, header: "group", body: Signature, partial_args: tuple, *, app: "Celery",
            task_id: str | None = None, header_id: str | None = None,
            kwargs: dict | None = None,
            group_id: str | None = None, group_index: int | None = None, chord: Any = None,
            chain: Any = None, link: Any = None, link_error: Any = None,
            parent_id: str | None = None, root_id: str | None = None,
            **options: Any) -> Any:
        options = message_options(options)
        add_to_parent = options.pop("add_to_parent", True)
        header = maybe_signature(header, app=app)
        # a new group over the same members (each is copied as it is sent): the caller's chord
        # keeps its header as it was
        header = group(list(header.tasks), app=app, **dict(header.options))
        header_id = header.options.get("task_id") or header_id or _uuid()
        header.options["task_id"] = header_id
        if chain:  # the rest of an enclosing chain continues after the body
            body = chain_from_tail(body, chain, app)
        for callback in as_list(link):
            body.link(callback)
        for errback in as_list(link_error):
            body.link_error(errback)
        for key, value in options.items():  # queue, priority...: the body goes the same way
            body.options.setdefault(key, value)
        # A chord inside a group (or an outer chord's header) counts there through its body.
        body_result = body.freeze(task_id or body.options.get("task_id") or _uuid(),
                                  group_id=group_id or header_id, chord=chord,
                                  group_index=group_index, root_id=root_id)
        size = chord_size(header)
        header_options = _with_lineage(options, root_id, parent_id)
        if size == 0:  # nothing will ever count: the body runs now, on an empty list
            from ..result import GroupResult

            body.apply_async(([],), parent_id=parent_id, root_id=root_id)
            header_result = GroupResult(header_id, [], app=app)
        else:
            from ..result import ResultSet

            if any(t.__class__ is not Signature and type(maybe_signature(t, app=app))
                   is not Signature for t in header.tasks):
                # Members that are workflows may stand for several results (a chain ending in
                # a group): the header's shape is saved, and the body gets nested lists back.
                shape = header.freeze(header_id, chord=body, root_id=root_id)
                if any(isinstance(r, ResultSet) for r in shape.results):
                    shape.save()
            # Written before any header task is sent, so the last one to finish always sees it.
            app.backend.set_chord_size(header_id, size)
            header_result = header.apply_async(partial_args, kwargs, task_id=header_id,
                                               chord=body, add_to_parent=False,
                                               **header_options)
        _root_of(body_result).parent = header_result
        if add_to_parent:
            _context.add_to_current_parent(body_result)
        return body_result

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        header = self.tasks
        header_result = header.freeze(parent_id=parent_id, root_id=root_id, chord=self.body)
        self.options["task_id"] = header_result.id  # where Celery looks for the header's id
        body_result = self.body.freeze(_id, group_id=group_id or header_result.id,
                                       chord=chord, root_id=root_id, group_index=group_index)
        if group_id is not None:
            self.body.options["group_id"] = group_id
        _root_of(body_result).parent = header_result
        return body_result

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
              propagate: bool = True, body: Any = None, **options: Any) -> Any:
        body = maybe_signature(body, app=self._app) if body is not None else self.body
        header_result = self.tasks.clone().apply(args, kwargs)
        return body.apply((header_result.get(propagate=propagate),))

    def __repr__(self) -> str:
        return f"chord({self.tasks!r}, {self.body!r})"


def chord_size(sig: Any) -> int:
    """How many results a chord with this header waits for: a member task counts 1, a group
    the sum of its members, a chain its last step, a chord its body (Celery's rule)."""
    sig = maybe_signature(sig)
    if isinstance(sig, group):  # a plain task signature counts 1, without a call per member
        return sum(1 if t.__class__ is Signature else chord_size(t) for t in sig.tasks)
    if isinstance(sig, chain):
        for step in reversed(sig.tasks):
            size = chord_size(step)
            if size:
                return size
        return 0
    if isinstance(sig, chord):
        return chord_size(sig.body)
    return 1


def chain_from_tail(first: Signature, tail: Any, app: "Celery") -> Signature:
    """``first`` followed by the steps of an enclosing chain's ``embed.chain`` (wire order)."""
    rest = [maybe_signature(s, app=app) for s in reversed(as_list(tail))]
    return chain(first, *rest, app=app) if rest else first


def _root_of(result: Any) -> Any:
    node = result
    while node.parent is not None:
        node = node.parent
    return node


# ---- sending helpers ----------------------------------------------------------------------------
def _member_options(options: dict, own: dict, oid: str, group_id: str, body: Any,
                    root_id: str | None, task: Any) -> dict:
    """The options a group member's message is sent with, but its id and group index: the
    group's, then the member's own, then what freezing it sets (``Signature.freeze``)."""
    merged = {**options, **own}
    if "reply_to" not in own:
        merged["reply_to"] = oid
    if root_id:
        merged["root_id"] = root_id
    if "group_id" not in own:
        merged["group_id"] = group_id
    if body is not None:
        merged["chord"] = body
    merged.pop("task_id", None)
    merged.pop("group_index", None)
    merged = message_options(merged, frozenset({"add_to_parent"}))
    if task:
        merged["_task"] = task
    return merged


class _Publisher:
    """Collects plain member calls and publishes them in batches (``producer.send_groups``):
    runs of calls to one task with the same options go as one entry."""

    def __init__(self, app: "Celery") -> None:
        self.app = app
        #: ``(task name, shared options, [(task id, args, kwargs, group index)...])``
        self.batches: list[tuple[str, dict, list[tuple[Any, Any, Any, Any]]]] = []
        #: whether a batch went ahead (``flush(more=True)``) and was not waited for since
        self.sent_ahead = False
        #: whether every call collected since the last flush is in the form ``v2.Likes`` keeps
        #: (``producer.send_groups``'s ``formed``): ``group._send`` says when one is not
        self.formed = True

    def add(self, sig: Signature, options: dict) -> None:
        """A frozen member: its own options (its id) win over ``options``."""
        merged = message_options({**options, **sig.options}, frozenset({"add_to_parent"}))
        self.formed = False  # its id and arguments as the signature has them
        task = self.app.tasks.get(sig.task)
        if task is not None:
            if type(task).apply_async is not Task.apply_async:
                # a task class with its own apply_async gets called through it, in order
                self.flush()
                task.apply_async(sig.args, sig.kwargs, add_to_parent=False, **merged)
                return
            if task.typing:
                task._check_arguments(sig.args, sig.kwargs)
            merged["_task"] = task
        task_id, index = merged.pop("task_id", None), merged.pop("group_index", None)
        self.add_call(sig.task, merged, task_id, sig.args, sig.kwargs, index)

    def add_call(self, name: str, shared: dict, task_id: Any, args: Any, kwargs: Any,
                 index: Any) -> None:
        """One call: ``shared`` are its options but its id and group index."""
        self.calls_for(name, shared).append((task_id, args, kwargs, index))

    def calls_for(self, name: str, shared: dict) -> list[tuple[Any, Any, Any, Any]]:
        """The list a call to ``name`` with options ``shared`` (but its id and group index) goes
        to: the last batch's when its calls are like it, else a new batch's."""
        batches = self.batches
        if batches:
            last = batches[-1]
            if last[0] == name and (last[1] is shared or last[1] == shared):
                return last[2]
        calls: list[tuple[Any, Any, Any, Any]] = []
        batches.append((name, shared, calls))
        return calls

    def flush(self, more: bool = False) -> None:
        """Publish the calls collected; with ``more``, the batch may still be in flight when
        this returns (``producer.send_groups``): a flush without it waits for all of them."""
        if self.batches:
            batches, self.batches, formed, self.formed = self.batches, [], self.formed, True
            self.app.producer.send_groups(batches, more=more, formed=formed)
            self.sent_ahead = more
        elif not more and self.sent_ahead:
            self.app.producer.settle()
            self.sent_ahead = False

    def settle_quietly(self) -> None:
        """After an error: wait for what went ahead (it was sent), logging its own error (the
        caller raises the first)."""
        if self.sent_ahead:
            self.sent_ahead = False
            try:
                self.app.producer.settle()
            except Exception as exc:  # noqa: BLE001 - the error being raised comes first
                logger.warning("a group batch sent before an error may not be stored: %s",
                               one_line(exc))
