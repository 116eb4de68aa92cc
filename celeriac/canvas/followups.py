"""What a finished task sets in motion: link callbacks, the next chain step, its chord's join,
and on failure the rest of its chain and its errbacks. Layer: canvas (called by the worker's
executor, and by the consumer for tasks that end without running: revoked, timed out, lost).

Everything a task sends from here goes through ``Signature.apply_async`` while the task's
request is current, so it becomes one of the task's ``children`` and gets the task as parent.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from .. import states
from . import chords
from .primitives import chain, chord, group
from .signature import Signature, maybe_signature

if TYPE_CHECKING:
    from ..app import Celery
    from ..task import Context, Task

logger = logging.getLogger("celeriac.worker")


#: errors worth raising to the worker (the task's message is then handled as an internal error
#: and, with acks_late, runs again): the broker or the store was unreachable
_TRANSIENT: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)


def on_success(app: "Celery", ctx: "Context", retval: Any) -> None:
    """Send the task's callbacks with ``retval`` prepended, then the next step of its chain
    (which takes the remaining steps along, still in wire order: next step last)."""
    for callback in ctx.callbacks or ():
        _send_or_fail(app, callback, (retval,), ctx, ())
    if ctx.chain:
        rest = list(ctx.chain)
        _send_or_fail(app, rest.pop(), (retval,), ctx, rest, chain=rest)


def planned_children(app: "Celery", ctx: "Context") -> list | None:
    """The ``children`` entries ``on_success`` will add, known before it sends anything: each
    follow-up that is a single task gets its task id now (the id it is then sent with), so the
    task's result can be made ready first. None when a follow-up is a group, chain or chord,
    whose result only takes shape as it is sent."""
    from ..result import AsyncResult

    callbacks = [maybe_signature(sig, app=app) for sig in ctx.callbacks or ()]
    steps = list(ctx.chain or ())
    following = [*callbacks, maybe_signature(steps[-1], app=app)] if steps else callbacks
    if any(type(sig) is not Signature for sig in following):
        return None
    for sig in following:
        sig.options.setdefault("task_id", str(uuid.uuid4()))
    # on_success sends these very signatures (with their ids), in this order
    ctx.callbacks = callbacks
    if steps:
        ctx.chain = [*steps[:-1], following[-1]]
    return [AsyncResult(sig.options["task_id"], app=app).as_tuple() for sig in following]


def _send(app: "Celery", sig: Any, prefix: tuple, ctx: "Context", **options: Any) -> Any:
    sig = maybe_signature(sig, app=app)
    return sig.apply_async(prefix, parent_id=ctx.id, root_id=ctx.root_id or ctx.id, **options)


def _send_or_fail(app: "Celery", sig: Any, prefix: tuple, ctx: "Context", rest: Any,
                  **options: Any) -> None:
    """Send one follow-up. One that can never be sent (its arguments do not fit, it cannot be
    encoded...) does not cost the finished task its result: it and what follows it are stored
    as failed with the reason, so nobody waits for them forever."""
    transient: tuple[type[BaseException], ...] = (*_TRANSIENT, *app.transport.transient_errors)
    try:
        _send(app, sig, prefix, ctx, **options)
    except transient:
        raise
    except Exception as exc:
        logger.error("Task %s[%s]: could not send %s: %r", ctx.task, ctx.id,
                     maybe_signature(sig, app=app).task, exc)
        fail_chain(app, [*rest, sig], exc, None)  # wire order: the next step last


def on_failure(app: "Celery", ctx: "Context", exc: BaseException, traceback: str | None, *,
               store: bool, state: str = states.FAILURE, errbacks_first: bool = False) -> None:
    """Record a failed (or revoked) task the way Celery does: its own state, its part in a chord,
    the same end for every later step of its chain (so whoever waits on the chain's result
    learns of it; Celery leaves them pending after a revoke), then, for a failure, its
    errbacks.

    ``errbacks_first``: a chord body that will never run (Celery's ``chord_error_from_stack``)
    sends its errbacks before its failure is stored, and the stored failure lists them (the
    task-style ones, one group) as its children, so a caller finds them from the body's result.
    """
    sent = None
    if errbacks_first and state != states.REVOKED:
        sent = send_errbacks(app, ctx, exc, traceback, as_group=True)
    if store:
        if state == states.REVOKED:
            reason = str(exc.args[0]) if exc.args else "revoked"
            app.backend.mark_as_revoked(cast(str, ctx.id), reason, request=ctx)
        else:
            app.backend.mark_as_failure(cast(str, ctx.id), exc, traceback, request=ctx,
                                        state=state,
                                        children=None if sent is None else [sent.as_tuple()])
    if ctx.chord:
        chords.on_part_return(app, ctx, state, exc)
    fail_chain(app, ctx.chain, exc, traceback, state=state)
    if state != states.REVOKED and not errbacks_first:
        send_errbacks(app, ctx, exc, traceback)


def fail_chain(app: "Celery", steps: Any, exc: BaseException, traceback: str | None, *,
               state: str = states.FAILURE) -> None:
    """Mark every step that will now never run as failed (or revoked) with ``exc``; a step that
    belongs to a chord header counts toward that chord (as failed), so it does not wait forever."""
    # ``steps`` is in wire order (next step last): marked from the next step on, so whoever sees
    # the chain's last result failed finds every step before it failed too
    pending = deque(maybe_signature(s, app=app) for s in reversed(list(steps or ())))
    persistent = app.backend.persistent
    while pending:
        step = pending.popleft()
        if isinstance(step, chord):  # its header never runs; what waits on it waits on the body
            if step.body is not None:
                pending.append(step.body)
            continue
        if isinstance(step, (group, chain)):
            pending.extend(maybe_signature(t, app=app) for t in step.tasks)
            continue
        if not step.id:
            continue
        step_ctx = request_for(step)
        if persistent:
            app.backend.mark_as_failure(step.id, exc, traceback, request=step_ctx, state=state)
        if step_ctx.chord:
            chords.on_part_return(app, step_ctx, state, exc)


def request_for(sig: Any, **fields: Any) -> "Context":
    """The request a task would have had if this frozen signature had been sent: what storing
    its end (and counting it in its chord) needs."""
    from ..task import Context

    options = sig.options
    return Context(id=options.get("task_id"), task=sig.task, args=sig.args, kwargs=sig.kwargs,
                   group=options.get("group_id"), group_index=options.get("group_index"),
                   chord=options.get("chord"), parent_id=options.get("parent_id"),
                   root_id=options.get("root_id"), called_directly=False, is_eager=False,
                   delivery_info={}, **fields)


def send_errbacks(app: "Celery", ctx: "Context", exc: BaseException,
                  traceback: str | None, *, as_group: bool = False) -> Any:
    """New-style errbacks ``(request, exc, traceback)`` registered here run in this process, as
    on Celery; the rest are sent as tasks with the failed task's id as their argument.

    ``as_group``: the task-style errbacks go out as one group (Celery's layout) whose
    ``GroupResult`` is returned (None when there were none)."""
    task_style: list[Signature] = []
    for errback in ctx.errbacks or ():
        sig = maybe_signature(errback, app=app)
        try:
            local = app.tasks.get(sig.task)
            if local is not None and accepts_request_exc_tb(local, sig):
                sig(ctx, exc, traceback)
            elif as_group:
                task_style.append(sig)
            else:
                _send(app, sig, (ctx.id,), ctx)
        except Exception:
            logger.exception("errback %s of task %s[%s] failed", sig.task, ctx.task, ctx.id)
    if not task_style:
        return None
    try:
        return _send(app, group(task_style, app=app), (ctx.id,), ctx)
    except Exception:
        logger.exception("errbacks of task %s[%s] could not be sent", ctx.task, ctx.id)
        return None


def accepts_request_exc_tb(task: "Task", sig: Any = None) -> bool:
    """Whether ``task`` still takes more than one positional argument once the errback
    signature's own args and kwargs are bound (Celery's test for the new errback style)."""
    fun = task.__wrapped__ or task.run
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return False
    if task._bound and params:
        params = params[1:]
    if sig is not None and not sig.immutable:
        params = params[len(sig.args):]
        params = [p for p in params if p.name not in sig.kwargs]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 1 or any(p.kind == p.VAR_POSITIONAL for p in params)
