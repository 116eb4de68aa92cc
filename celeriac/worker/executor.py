"""The one place a task runs: request context, signals, the call, retries, result, callbacks.

Layer: worker (also used by ``Task.apply`` for eager runs). Every pool calls ``execute`` (or
``execute_async`` for ``async def`` tasks) in whatever process or thread runs the task. The result
is stored *before* this returns, so a worker that acks afterwards (``acks_late``) never acks a task
whose result was lost.
"""

from __future__ import annotations

import logging
import os
import time
import traceback as tb_module
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from .. import _context, signals, states
from ..canvas import chords, followups
from ..dispatch import inbox as dispatch_inbox
from ..exceptions import EncodeError, Ignore, Reject, Retry
from ..protocol import serialization
from ..result import AsyncResult, GroupResult
from ..task import Context, Task
from .job import wants_result
from .limits import HardTimeLimitStop, Terminated, task_code_ended, task_code_started
from .outcome import Ending, Outcome
from .pending import PendingWrites

if TYPE_CHECKING:
    from ..backends.base import ResultBackend
    from ..protocol.v2 import TaskBody
    from ..result import EagerResult

logger = logging.getLogger("celeriac.worker")

#: True while this process's main thread is inside a task's own code (not our bookkeeping): the
#: soft time limit's SIGALRM raises only then, so it can never interrupt a result write
in_task_code = [False]

#: what leaves ``execute`` untouched, never recorded as the task's outcome: the process stopping,
#: a terminate, and a pool thread given up on at its hard time limit (the consumer records those)
_PASSED_THROUGH = (KeyboardInterrupt, SystemExit, Terminated, HardTimeLimitStop)


class ExceptionInfo:
    """The exception, its class and its formatted traceback, as Celery's ``einfo`` offers them."""

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc
        self.type = type(exc)
        self.tb = exc.__traceback__
        self.traceback = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))

    def __str__(self) -> str:
        return self.traceback


def _safe_repr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not fail the task
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def context_from_body(body: "TaskBody", *, hostname: str | None, delivery_info: dict | None,
                      properties: dict | None = None) -> Context:
    """The request of a task message (``time_limit``/``soft_time_limit``: the ``timelimit``
    header's, as Celery 5.7's request reads them; the producer puts a task's own there)."""
    headers = body.headers
    ctx = Context(**{k: v for k, v in headers.items() if k.isidentifier()})
    ctx.__dict__.update(
        id=body.id, task=body.name, args=body.args, kwargs=body.kwargs, retries=body.retries,
        root_id=body.root_id, parent_id=body.parent_id, group=body.group_id,
        group_index=body.group_index, hostname=hostname, delivery_info=delivery_info or {},
        is_eager=False, eta=body.eta, expires=body.expires, callbacks=body.callbacks,
        errbacks=body.errbacks, chain=body.chain, chord=body.chord, headers=headers,
        reply_to=body.reply_to, correlation_id=body.id, origin=body.origin,
        timelimit=(body.time_limit, body.soft_time_limit), ignore_result=body.ignore_result,
        shadow=body.shadow, called_directly=False, properties=properties or {}, _adopt=True,
        time_limit=body.time_limit, soft_time_limit=body.soft_time_limit,
    )
    return ctx


class _Run:
    """One execution: shared by the sync and async paths so their bookkeeping is identical."""

    __slots__ = ("app", "task", "ctx", "task_id", "eager", "store", "started", "pending",
                 "dispatch")

    def __init__(self, task: Task, ctx: Context, *, eager: bool,
                 pending: PendingWrites | None = None) -> None:
        self.task = task
        self.app = task._get_app()
        self.ctx = ctx
        #: always set for a run (a message's id, or the one apply() made)
        self.task_id: str = cast(str, ctx.id)
        self.eager = eager
        late = task.acks_late if task.acks_late is not None else self.app.conf.task_acks_late
        #: where a success's result write and chord count go for the consumer to send (inline
        #: settling); not with acks_late, whose ack must only follow a result known stored
        self.pending = None if late else pending
        conf = self.app.conf
        #: the dispatch this task is a subtask of (its outcome is reported there)
        self.dispatch = None if eager else dispatch_inbox.target_of(ctx)
        # a dispatch's auto_ignore: the outcome goes to the dispatch only
        self.store = wants_result(ctx.ignore_result, task) and (
            not eager or bool(conf.task_store_eager_result)) and not (
            self.dispatch is not None and self.dispatch.auto_ignore)
        self.started = 0.0

    def before(self) -> None:
        task, ctx = self.task, self.ctx
        self.started = time.monotonic()
        if signals.task_prerun.receivers:
            signals.task_prerun.send(sender=task, task_id=self.task_id, task=task,
                                     args=ctx.args, kwargs=ctx.kwargs)
        track = task.track_started if task.track_started is not None else \
            self.app.conf.task_track_started
        if track and self.store:
            self.app.backend.mark_as_started(self.task_id, request=ctx, pid=os.getpid(),
                                             hostname=ctx.hostname)
        task.before_start(self.task_id, ctx.args, ctx.kwargs)

    # ---- endings ---------------------------------------------------------------------------
    def succeeded(self, retval: Any) -> Outcome:
        task, ctx = self.task, self.ctx
        runtime = time.monotonic() - self.started
        backend = self.app.backend
        keep = self.store and backend.receives_results
        follow = bool(ctx.callbacks or ctx.chain)
        pending = self.pending
        # Everything is encoded here, where the task ran, before anything is sent: a value the
        # result serializer cannot encode fails the task (stored as an EncodeError, counted as
        # failed by its chord, no callback sent) instead of failing a write later on, where it
        # could only be lost. The value is encoded once for each use: the chord count, else the
        # result write (made before the follow-ups when their ids can be known first), is the
        # check that comes before any follow-up is sent.
        write = None
        report = None
        stored = storable_result(retval, backend)
        try:
            if self.dispatch is not None:
                report = self._dispatch_entry(states.SUCCESS, stored)
            part = chords.part_of(self.app, ctx, states.SUCCESS, stored) if ctx.chord else None
            if keep:
                planned = followups.planned_children(self.app, ctx) \
                    if follow and not self.eager else []
                if planned is not None:
                    write = backend.result_write(self.task_id, stored, states.SUCCESS,
                                                 request=ctx,
                                                 children=[*ctx.children_tuples(), *planned])
                elif part is None:  # a group, chain or chord follows: only a check
                    backend.encode(stored)
        except EncodeError as exc:
            return self.failed(unencodable(task, backend, stored, exc), autoretry=False)
        if follow:
            # Sent before the result is stored, so the stored result lists them as children.
            followups.on_success(self.app, ctx, retval)
            if keep and (write is None or write.meta["children"] != ctx.children_tuples()):
                # (made now, or again when a follow-up could not be sent: not a child)
                write = backend.result_write(self.task_id, stored, states.SUCCESS, request=ctx,
                                             children=ctx.children_tuples())
        if pending is None:
            if part is not None:  # the result, then its count: one round trip on Redis
                chords.count(self.app, part, write)
            elif write is not None:
                backend.write_results([write])
        else:
            if write is not None:
                pending.results.append(write)
            if part is not None:
                pending.chord_counts.append(part)
        if report is not None:
            dispatch_inbox.push(report[0], report[1], report[2])
        task.on_success(retval, self.task_id, ctx.args, ctx.kwargs)
        if signals.task_success.receivers:
            signals.task_success.send(sender=task, result=retval)
        outcome = Outcome(self.task_id, states.SUCCESS, Ending.SUCCEEDED, runtime, retval=retval,
                          pending=pending)
        if not self.eager:
            outcome.retval_repr = _safe_repr(retval)
            logger.info("Task %s[%s] succeeded in %.6fs: %s", task.name, self.task_id, runtime,
                        outcome.retval_repr)
        self._after(states.SUCCESS, retval, None)
        return outcome

    def failed(self, exc: BaseException, *, autoretry: bool = True) -> Outcome:
        """``autoretry``: whether ``autoretry_for`` applies (only to what the task raised)."""
        task = self.task
        if isinstance(exc, Retry):
            return self.retried(exc)
        if isinstance(exc, Ignore):
            self._after(states.IGNORED, None, None)
            return Outcome(self.task_id, states.IGNORED, Ending.IGNORED,
                           time.monotonic() - self.started)
        if isinstance(exc, Reject):
            logger.warning("Task %s[%s] rejected: %r (requeue=%s)", task.name, self.task_id,
                           exc.reason, exc.requeue)
            if not exc.requeue:
                # never runs again: as on Celery 5.7 its result is a FAILURE holding the Reject
                # (chord, chain, errbacks and task_failure learn of it), so nobody waits for
                # ever; the message itself still goes to the dead-letter store
                self._record_failure(exc, ExceptionInfo(exc))
            self._after(states.REJECTED, exc, None)
            return Outcome(self.task_id, states.REJECTED,
                           Ending.REJECTED_REQUEUE if exc.requeue else Ending.REJECTED_DROP,
                           time.monotonic() - self.started, exc_repr=_safe_repr(exc))
        retry = self._autoretry(exc) if autoretry else None
        if retry is not None:
            return self.retried(retry)
        einfo = ExceptionInfo(exc)
        runtime = time.monotonic() - self.started
        expected = bool(task.throws) and isinstance(exc, task.throws)
        self._record_failure(exc, einfo, on_failure=True)
        outcome = Outcome(self.task_id, states.FAILURE, Ending.FAILED, runtime,
                          exc_repr=_safe_repr(exc), traceback=einfo.traceback, retval=exc)
        if not self.eager:
            if expected:
                logger.info("Task %s[%s] raised expected: %s", task.name, self.task_id,
                            outcome.exc_repr)
            else:
                logger.error("Task %s[%s] raised unexpected: %s\n%s", task.name, self.task_id,
                             outcome.exc_repr, einfo.traceback)
        self._after(states.FAILURE, exc, einfo)
        return outcome

    def _record_failure(self, exc: BaseException, einfo: ExceptionInfo, *,
                        on_failure: bool = False) -> None:
        """The failure stored (and its chord, chain and errbacks told), the dispatch it belongs
        to told, ``task.on_failure`` when asked, and the ``task_failure`` signal."""
        task, ctx = self.task, self.ctx
        followups.on_failure(self.app, ctx, exc, einfo.traceback, store=self.store or (
            task.store_errors_even_if_ignored and not self.eager))
        if self.dispatch is not None:
            self._report_failure(exc, einfo.traceback)
        if on_failure:
            task.on_failure(exc, self.task_id, ctx.args, ctx.kwargs, einfo)
        if signals.task_failure.receivers:
            signals.task_failure.send(sender=task, task_id=self.task_id, exception=exc,
                                      args=ctx.args, kwargs=ctx.kwargs,
                                      traceback=exc.__traceback__, einfo=einfo)

    # ---- dispatch ----------------------------------------------------------------------------
    def _dispatch_entry(self, state: str, value: Any) -> tuple[Any, Any, bytes]:
        """(store, target, entry) for this subtask's outcome; EncodeError if it cannot be
        encoded (then the task fails, as with any result)."""
        assert self.dispatch is not None
        store = dispatch_inbox.store_for_target(self.app, self.dispatch)
        return store, self.dispatch, dispatch_inbox.entry(store, self.dispatch, self.ctx, state,
                                                          value)

    def _report_failure(self, exc: BaseException, traceback: str | None) -> None:
        try:
            dispatch_inbox.report(self.app, self.ctx, states.FAILURE, exc, traceback)
        except Exception:
            logger.exception("could not report the failure of subtask %s to its dispatch",
                             self.task_id)

    def retried(self, retry: Retry) -> Outcome:
        task, ctx = self.task, self.ctx
        exc = retry.exc if retry.exc is not None else retry
        einfo = ExceptionInfo(exc)
        resend = getattr(retry, "resend", None)
        outcome = Outcome(self.task_id, states.RETRY, Ending.RETRIED,
                          time.monotonic() - self.started, exc_repr=_safe_repr(exc),
                          traceback=einfo.traceback, retval=retry)
        if resend is None:
            # A bare ``raise Retry()`` without task.retry(): nothing to re-send; treat as failure.
            return self.failed(RuntimeError(f"Retry raised without task.retry(): {retry!r}"))
        if self.eager:
            outcome.retval = resend
        else:
            if self.store:
                self.app.backend.mark_as_retry(self.task_id, exc, einfo.traceback, request=ctx)
            self._resend(resend)
            logger.info("Task %s[%s] retry: Retry %s: %s", task.name, self.task_id,
                        retry.humanize(), outcome.exc_repr)
        task.on_retry(exc, self.task_id, ctx.args, ctx.kwargs, einfo)
        if signals.task_retry.receivers:
            signals.task_retry.send(sender=task, request=ctx, reason=exc, einfo=einfo)
        self._after(states.RETRY, exc, einfo)
        return outcome

    def _after(self, state: str, retval: Any, einfo: Any) -> None:
        task, ctx = self.task, self.ctx
        task.after_return(state, retval, self.task_id, ctx.args, ctx.kwargs, einfo)
        if signals.task_postrun.receivers:
            signals.task_postrun.send(sender=task, task_id=self.task_id, task=task, args=ctx.args,
                                      kwargs=ctx.kwargs, retval=retval, state=state)

    # ---- retries ---------------------------------------------------------------------------
    def _autoretry(self, exc: BaseException) -> Retry | None:
        task = self.task
        if not task.autoretry_for or not isinstance(exc, task.autoretry_for):
            return None
        if task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for):
            return None
        options = dict(task.retry_kwargs)
        if task.retry_backoff:
            options["countdown"] = task.retry_countdown(self.ctx.retries or 0)
        try:
            return task.retry(exc=exc, throw=False, **options)
        except Retry as retry:
            return retry
        except BaseException:
            return None  # past max_retries: task.retry re-raised exc; fall through to failure

    def _resend(self, resend: dict) -> None:
        ctx = self.ctx
        options = {**_carried_over(ctx), **(resend.get("options") or {})}
        self.app.producer.send(
            cast(str, ctx.task), resend["args"], resend["kwargs"], task_id=self.task_id,
            retries=(ctx.retries or 0) + 1, countdown=resend.get("countdown"),
            eta=resend.get("eta"), root_id=ctx.root_id, parent_id=self.task_id,
            group_id=ctx.group, group_index=ctx.group_index,
            link=ctx.callbacks, link_error=ctx.errbacks, chain=ctx.chain, chord=ctx.chord,
            origin=ctx.origin, _task=self.task,
            **_redelivery_target(ctx.delivery_info, _keep_headers(
                ctx.headers, _keep_priority(ctx.delivery_info, options))))

def _carried_over(ctx: Context) -> dict[str, Any]:
    """What a retry keeps of its message, as Celery's does: its expiry, its own time limits
    and its shadow name (the retry's own options win)."""
    hard, soft = ctx.timelimit or (None, None)
    expires: Any = ctx.expires
    if isinstance(expires, str):
        try:
            expires = datetime.fromisoformat(expires)
        except ValueError:
            expires = None
    kept = {"expires": expires, "time_limit": hard, "soft_time_limit": soft,
            "shadow": ctx.shadow}
    return {key: value for key, value in kept.items() if value is not None}


def _keep_priority(delivery_info: dict | None, options: dict) -> dict:
    """A retry is sent with the priority the message had (Celery's ``signature_from_request``);
    ``options`` win."""
    priority = (delivery_info or {}).get("priority")
    if priority is None or options.get("priority") is not None:
        return options
    return {**options, "priority": priority}


#: the headers protocol 2 itself defines (and ones a broker adds): a retry sends its own
_PROTOCOL_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps", "compression", "x-death",
    "x-delivery-count", "x-first-death-exchange", "x-first-death-queue",
    "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
    "x-last-death-reason",
    # set again by the producer when the retry is sent (tracing_enabled)
    "traceparent", "tracestate"})


def _keep_headers(headers: dict | None, options: dict) -> dict:
    """A retry keeps the message's own headers (the caller's ``headers={...}``, and the one
    that makes a dispatch's subtask stay one), as Celery does; ``options`` win. celeriac's
    other headers (``celeriac_unique``: the queued key the first run freed) stay behind."""
    kept = {key: value for key, value in (headers or {}).items()
            if key == dispatch_inbox.HEADER
            or key not in _PROTOCOL_HEADERS and not key.startswith("celeriac_")}
    if not kept:
        return options
    return {**options, "headers": {**kept, **(options.get("headers") or {})}}


def _redelivery_target(delivery_info: dict | None, options: dict) -> dict:
    """A retry goes where the message came from, as Celery sends it: the queue its delivery
    names (default exchange), else the same exchange and routing key; ``options`` win."""
    info = delivery_info or {}
    exchange, routing_key = info.get("exchange"), info.get("routing_key")
    if options.get("queue") is not None or options.get("exchange") is not None:
        return options
    if exchange:
        return {"exchange": exchange, "routing_key": routing_key, **options}
    return {**options, "queue": routing_key}


#: containers walked to find the value pickle cannot encode (on the failure path only)
_WALK_LIMIT = 10_000


def _unpicklable_type(value: Any) -> type | None:
    """The type of the first value in ``value`` (walking dicts, lists and tuples) that pickle
    cannot encode on its own (pickle's errors do not name it); None when every part can."""
    stack, seen = [value], 0
    while stack and seen < _WALK_LIMIT:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        else:
            try:
                serialization.dumps(item, "pickle")
            except EncodeError:
                return type(item)
    return None


def _type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"


def storable_result(retval: Any, backend: "ResultBackend") -> Any:
    """What is stored for a task that returned ``retval``: a returned ``AsyncResult`` or
    ``GroupResult`` becomes its ``as_tuple()`` form unless results are pickled, as Celery stores
    it (a Celery client reads that form back; ``result_from_tuple`` rebuilds the result)."""
    if isinstance(retval, (AsyncResult, GroupResult)) and \
            serialization.content_type_of(backend.serializer) != serialization.PICKLE:
        return retval.as_tuple()
    return retval


def unencodable(task: Task, backend: "ResultBackend", value: Any,
                exc: BaseException) -> EncodeError:
    """The failure stored for a task whose result the result serializer cannot encode: which
    task, which type, and how to fix it (the serializer's own error is its ``__cause__``).
    ``value`` is encoded again on its own, so the message blames it only when it is at fault."""
    serializer = backend.serializer
    try:
        backend.encode(value)
    except EncodeError as own:
        exc = own
    else:  # the value is fine: what was stored with it is not
        error = EncodeError(f"task {task.name}: its result could not be stored with the "
                            f"{serializer!r} result serializer: {exc}")
        error.__cause__ = exc.__cause__ or exc
        return error
    cause = exc.__cause__ or exc
    pickled = serialization.content_type_of(serializer) == serialization.PICKLE
    culprit = _unpicklable_type(value) if pickled else serialization.unserializable_type(exc)
    if culprit is None:
        what = f"{type(cause).__name__}: {cause}"
    elif pickled:
        what = f"{_type_name(culprit)} cannot be pickled"
    else:
        what = f"{_type_name(culprit)} is not {serialization.serializer_label(serializer)} " \
               f"serializable"
    error = EncodeError(f"task {task.name} returned a value the {serializer!r} result "
                        f"serializer cannot encode: {what}; "
                        f"{serialization.encode_advice(serializer, returned=True)}")
    error.__cause__ = cause
    return error


def internal_error(task: Task, ctx: Context, exc: BaseException) -> Outcome:
    """The task may have run, but its outcome could not be recorded: never ack such a message
    as done (the consumer requeues it when it still holds it: at-least-once)."""
    einfo = ExceptionInfo(exc)
    logger.critical("Internal error running task %s[%s]: %r\n%s", task.name, ctx.id, exc,
                    einfo.traceback)
    if signals.task_internal_error.receivers:
        signals.task_internal_error.send(sender=task, task_id=ctx.id, args=ctx.args,
                                         kwargs=ctx.kwargs, request=ctx, exception=exc,
                                         traceback=exc.__traceback__, einfo=einfo)
    return Outcome(ctx.id or "?", states.FAILURE, Ending.INTERNAL_ERROR,
                   exc_repr=_safe_repr(exc), traceback=einfo.traceback)


# ---- entry points ----------------------------------------------------------------------------
def execute(task: Task, ctx: Context, *, eager: bool = False,
            pending: PendingWrites | None = None) -> Outcome:
    """Run a sync task to its end; never raises for task errors (they become the Outcome).
    With ``pending``, a success's result write and chord count are recorded there instead of
    sent (the consumer sends them)."""
    run = _Run(task, ctx, eager=eager, pending=pending)
    req_token = _context.current_request_var.set(ctx)
    task_token = _context.current_task_var.set(task)
    try:
        try:
            run.before()
            in_task_code[0] = True
            task_code_started()
            try:
                retval = task(*ctx.args, **ctx.kwargs)
            finally:
                in_task_code[0] = False
                task_code_ended()  # raises HardTimeLimitStop if the pool gave this thread up
        except BaseException as exc:
            if isinstance(exc, _PASSED_THROUGH):
                raise
            ctx._adopt = False
            return run.failed(exc)
        ctx._adopt = False
        return run.succeeded(retval)
    except _PASSED_THROUGH:
        raise
    except BaseException as exc:  # our own bookkeeping failed (e.g. the result store is down)
        if eager:
            raise
        outcome = internal_error(task, ctx, exc)
        outcome.pending = run.pending  # what was recorded before the failure still goes out
        return outcome
    finally:
        _context.current_task_var.reset(task_token)
        _context.current_request_var.reset(req_token)


async def execute_async(task: Task, ctx: Context, soft: float | None = None,
                        hard: float | None = None, *, eager: bool = False) -> Outcome:
    """Run an ``async def`` task on the current event loop; result I/O goes to a thread."""
    import asyncio

    from .limits import run_with_limits

    run = _Run(task, ctx, eager=eager)
    req_token = _context.current_request_var.set(ctx)
    task_token = _context.current_task_var.set(task)
    try:
        try:
            await asyncio.to_thread(run.before)
            ctx._adopt = False
            retval = await run_with_limits(task.run(*ctx.args, **ctx.kwargs), soft, hard)
        except Exception as exc:
            return await asyncio.to_thread(run.failed, exc)
        return await asyncio.to_thread(run.succeeded, retval)
    except Exception as exc:  # our own bookkeeping failed
        if eager:
            raise
        return internal_error(task, ctx, exc)
    finally:
        _context.current_task_var.reset(task_token)
        _context.current_request_var.reset(req_token)


def apply_eagerly(task: Task, args: tuple, kwargs: dict, *, task_id: str | None = None,
                  link: Any = None, link_error: Any = None, throw: bool | None = None,
                  retries: int = 0, options: dict | None = None) -> "EagerResult":
    """``Task.apply``: run here, retrying inline, returning an EagerResult."""
    from ..producer import _as_signature_list
    from ..result import EagerResult

    app = task._get_app()
    throw = app.conf.task_eager_propagates if throw is None else throw
    task_id = task_id or str(uuid.uuid4())
    while True:
        ctx = Context(id=task_id, task=task.name, args=args, kwargs=kwargs, retries=retries,
                      root_id=task_id, is_eager=True, called_directly=False, hostname=None,
                      delivery_info=_eager_delivery_info(options or {}),
                      callbacks=_as_signature_list(link),
                      errbacks=_as_signature_list(link_error), headers=options or {},
                      ignore_result=bool((options or {}).get("ignore_result", False)), _adopt=True)
        if task.is_coroutine:
            import asyncio

            outcome = asyncio.run(execute_async(task, ctx, eager=True))
        else:
            outcome = execute(task, ctx, eager=True)
        if outcome.state == states.RETRY and isinstance(outcome.retval, dict):
            resend = outcome.retval
            args, kwargs, retries = tuple(resend["args"]), dict(resend["kwargs"]), retries + 1
            continue
        if outcome.state == states.FAILURE and throw:
            raise outcome.retval
        return EagerResult(task_id, outcome.retval, outcome.state, outcome.traceback,
                           name=task.name, app=app)


def _eager_delivery_info(options: dict) -> dict:
    """An eager run's ``delivery_info``: Celery's keys, from the call's options (nothing was
    delivered, so no ``redelivered``)."""
    return {"is_eager": True, "exchange": options.get("exchange"),
            "routing_key": options.get("routing_key"), "priority": options.get("priority")}
