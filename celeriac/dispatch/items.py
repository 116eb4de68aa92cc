"""What a main task may yield, turned into one signature per subtask.

Layer: dispatch. celery-dispatcher's forms: a task, ``(task,)``, ``(task, args)``,
``(task, args, kwargs)``, ``(task, args, kwargs, options)``; here also any signature, a chain
among them (its last task is the one whose result is handled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..canvas.primitives import chord, group
from ..canvas.signature import Signature

if TYPE_CHECKING:
    from ..app import Celery


class InvalidItem(TypeError):
    """The main task yielded something that is not a subtask."""


def _is_task(obj: Any) -> bool:
    return hasattr(obj, "s") and hasattr(obj, "apply_async") and hasattr(obj, "name")


def to_signature(item: Any, app: Celery) -> Signature:
    """One yielded item as a fresh signature (the caller's objects are never changed)."""
    if isinstance(item, (group, chord)):
        raise InvalidItem(
            f"dispatch: a {type(item).__name__} cannot be one subtask (its members would be "
            "handled as one); yield its members one by one instead")
    if isinstance(item, Signature):
        return item.clone()
    if _is_task(item):
        return Signature(item.name, app=app)
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= 4:
        head = item[0]
        rest: tuple[Any, ...] = (*item[1:], *((), {}, {})[len(item) - 1:])
        args, kwargs, options = rest
        if isinstance(head, Signature) and not isinstance(head, (group, chord)):
            # as apply_async on a signature: args are prepended, kwargs and options merged
            return head.clone(args=tuple(args or ()), kwargs=dict(kwargs or {}),
                              **dict(options or {}))
        if _is_task(head):
            return Signature(head.name, tuple(args or ()), dict(kwargs or {}),
                             dict(options or {}), app=app)
    raise InvalidItem(
        f"dispatch: cannot send {item!r}: yield a task, a signature, or a tuple "
        "(task, args, kwargs, options) with the last three optional")
