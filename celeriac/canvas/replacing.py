"""``Task.replace`` and ``Task.add_to_chord``: a running task hands its place in a workflow to
other work, or widens the chord it belongs to. Layer: canvas (called from ``task/``).

A replacement keeps the replaced task's identity, as on Celery 5.7: its final task is frozen
with the replaced task's id, group id, group index, chord and root id, so whoever waits on the
replaced task's result (a caller, a group, a chord's join) gets the replacement's result under
the same id and counts it once, in the same place. A group replacement becomes a chord whose
body (``celery.accumulate``) returns the group's results as one list, so the replacement still
ends in one task that can carry those ids and the replaced task's callbacks. The replaced task's
callbacks and errbacks move onto the replacement, and the rest of its chain is appended after
it. Every task of the replacement carries ``replaced_task_nesting`` (one more than the replaced
task's) in its headers. The replaced task itself ends with ``Ignore``: nothing is stored under
its id until the replacement's final task stores its result there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exceptions import ImproperlyConfigured
from .primitives import chain, chord, group
from .signature import Signature, maybe_signature

if TYPE_CHECKING:
    from ..app import Celery
    from ..task import Context

#: Celery's built-in task a group replacement is joined by (``builtins.py`` registers it)
ACCUMULATE = "celery.accumulate"
#: the header each task of a replacement carries (Celery's name; ``request.replaced_task_nesting``)
NESTING_HEADER = "replaced_task_nesting"


def _checked(app: "Celery", sig: Any, what: str) -> Signature:
    """``sig`` as a Signature of its own class, copied so the caller's stays as it was."""
    if not isinstance(sig, dict):
        raise TypeError(f"{what} takes a signature (task.s(...), chain, group or chord), "
                        f"got {type(sig).__name__}: build one with task.s(...)")
    return maybe_signature(sig, app=app).clone()


def _joined(app: "Celery", header: group) -> chord:
    """The group as a chord whose body returns the group's results, in order, as one list."""
    return chord(header, app.signature(ACCUMULATE, kwargs={"index": 0}), app=app)


def prepare(app: "Celery", request: "Context", sig: Any) -> Signature:
    """``sig`` ready to take the running task's place (see the module's docstring).

    In an eager run the replacement is only checked and its groups joined: it is applied in
    place, and the replaced task's own callbacks then run with its value, as for any return.
    """
    sig = _checked(app, sig, "Task.replace")
    if "chord" in sig.options:
        raise ImproperlyConfigured(
            "A signature replacing a task must not be part of a chord: replace with the "
            "chord itself (chord(header, body)) instead of a task frozen into one")
    if isinstance(sig, chain) and not sig.tasks:
        raise ImproperlyConfigured("Cannot replace with an empty chain: give it at least one "
                                   "task, or return a value instead of replacing")
    if isinstance(sig, group):
        sig = _joined(app, sig)
    if isinstance(sig, chain) and isinstance(sig.tasks[-1], group):
        sig.tasks = [*sig.tasks[:-1], _joined(app, sig.tasks[-1])]
    if request.is_eager:
        return sig
    for callback in request.callbacks or ():
        sig.link(maybe_signature(callback, app=app))
    for errback in request.errbacks or ():
        sig.link_error(maybe_signature(errback, app=app))
    # The final task takes the replaced task's id and its place in a group or chord (a chain:
    # its last step; a chord: its body).
    sig.freeze(request.id, group_id=request.group, chord=request.chord,
               root_id=request.root_id, group_index=request.group_index)
    nesting = int(request.get(NESTING_HEADER) or 0) + 1
    _mark_nesting(app, sig, nesting)
    # the rest of the replaced task's chain runs after the replacement (wire order: next last)
    for step in reversed(list(request.chain or ())):
        next_step = maybe_signature(step, app=app).clone()
        _mark_nesting(app, next_step, nesting)
        sig = sig | next_step
    return sig


def _mark_nesting(app: "Celery", sig: Any, nesting: int) -> None:
    """Put ``replaced_task_nesting`` in the headers of every task message ``sig`` sends."""
    sig = maybe_signature(sig, app=app)
    if isinstance(sig, chord):
        for member in sig.tasks.tasks:
            _mark_nesting(app, member, nesting)
        if sig.body is not None:
            _mark_nesting(app, sig.body, nesting)
    elif isinstance(sig, (group, chain)):
        for member in sig.tasks:
            _mark_nesting(app, member, nesting)
    else:
        sig.options["headers"] = {**(sig.options.get("headers") or {}), NESTING_HEADER: nesting}


def addition(app: "Celery", request: "Context", sig: Any) -> tuple[Signature, Any]:
    """``sig`` set up to count in the chord ``request`` is a header member of (Celery's
    ``add_to_chord``: same group, group index, chord body and root), and its frozen result."""
    if not request.chord or not request.group:
        raise ValueError("Current task is not member of any chord: add_to_chord works only "
                         "inside a task of a chord's header")
    sig = _checked(app, sig, "Task.add_to_chord")
    if isinstance(sig, group):
        raise TypeError("add_to_chord counts one result per call, and a group has several: "
                        "add each task on its own, or add a chord (group(...) | task.s())")
    place = {"group_id": request.group, "group_index": request.group_index,
             "chord": request.chord, "root_id": request.root_id}
    # frozen with its place (a chord's body, a chain's last step: the task that counts), then
    # set on the signature itself, which hands the same place on when it is sent
    result = sig.freeze(**place)
    sig.set(**place)
    return sig, result
