"""Batches: a task called once with a list of buffered requests, with a result per request.

Layer: batches (above the client side, below the worker). ``@app.task(base=Batches,
flush_every=100, flush_interval=10)`` makes a task whose calls the worker buffers (outside the
prefetch window, bounded) and hands over as one list of ``SimpleRequest`` once ``flush_every``
have arrived or ``flush_interval`` seconds after the first (worker/batching.py). Each request
gets its own result: ``app.backend.mark_as_done(request.id, value, request=request)`` as with
celery-batches, or the task's own ``mark_as_done`` / ``mark_as_failure`` / ``mark_as_retry``;
a request left unmarked succeeds with ``None`` when the call returns, and fails with the
exception when it raises.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterable

from .. import states
from ..task import Context, Task

if TYPE_CHECKING:
    from ..result import EagerResult

__all__ = ["Batches", "SimpleRequest"]

#: what the task marked during the batch call running in this context: id -> (state, value,
#: countdown)
current_marks: ContextVar[dict[str, tuple[str, Any, float | None]] | None] = ContextVar(
    "celeriac_batch_marks", default=None)


class SimpleRequest:
    """One buffered call, as the batch task sees it (celery-batches' fields, and the rest of
    the request kept for chains, chords and retries)."""

    __slots__ = ("id", "name", "args", "kwargs", "delivery_info", "hostname", "ignore_result",
                 "reply_to", "correlation_id", "chord", "context")

    def __init__(self, context: Any) -> None:
        #: the full request (``self.request`` of a plain task)
        self.context = context
        self.id: str = context.id
        self.name: str = context.task
        self.args: tuple = tuple(context.args or ())
        self.kwargs: dict = dict(context.kwargs or {})
        self.delivery_info: dict = dict(context.delivery_info or {})
        self.hostname: str | None = context.hostname
        self.ignore_result: bool = bool(context.ignore_result)
        self.reply_to: str | None = context.reply_to
        self.correlation_id: str | None = context.correlation_id or context.id
        self.chord: Any = context.chord

    # what the result store reads from a request (result_extended, group and parent)
    @property
    def task(self) -> str:
        return self.name

    @property
    def retries(self) -> int:
        return int(self.context.retries or 0)

    @property
    def group(self) -> str | None:
        return self.context.group

    @property
    def parent_id(self) -> str | None:
        return self.context.parent_id

    @property
    def root_id(self) -> str | None:
        return self.context.root_id

    def __repr__(self) -> str:
        return f"<SimpleRequest: {self.name}[{self.id}]>"


class Batches(Task):
    """Base class of batch tasks: ``run(requests)`` gets a list of ``SimpleRequest``."""

    #: requests per call: the batch is handed over as soon as this many are buffered
    flush_every: int = 10
    #: seconds after the first buffered request that a smaller batch is handed over
    flush_interval: float = 30.0
    #: the worker buffers this task's requests (worker/batching.py)
    collects_requests = True
    #: calls carry the request's own arguments, not the batch function's
    typing = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("is_coroutine"):
            raise TypeError(
                f"{cls.__qualname__}: a batch task is a plain `def` function taking the list of "
                "requests (`async def` batch tasks are not supported yet)")

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              task_id: str | None = None, link: Any = None, link_error: Any = None,
              throw: bool | None = None, retries: int = 0, **options: Any) -> EagerResult:
        """Run here as a batch of one request (``task_always_eager`` too): the result is what
        the task marked for it, else None; links are not called."""
        from ..result import EagerResult

        app = self._get_app()
        task_id = task_id or str(uuid.uuid4())
        context = Context(id=task_id, task=self.name, args=tuple(args or ()),
                          kwargs=dict(kwargs or {}), retries=retries, root_id=task_id,
                          is_eager=True, called_directly=False, hostname=None,
                          delivery_info={"is_eager": True}, headers=options,
                          ignore_result=bool(options.get("ignore_result", False)))
        marks: dict[str, tuple[str, Any, float | None]] = {}
        token = current_marks.set(marks)
        try:
            self.run([SimpleRequest(context)])
        except Exception as exc:  # noqa: BLE001 - the batch's failure is the request's
            state, value = states.FAILURE, exc
        else:
            state, value, _ = marks.get(task_id, (states.SUCCESS, None, None))
        finally:
            current_marks.reset(token)
        propagate = app.conf.task_eager_propagates if throw is None else throw
        if state != states.SUCCESS and propagate and isinstance(value, BaseException):
            raise value
        return EagerResult(task_id, value, state, name=self.name, app=app)

    def _mark(self, request: Any, state: str, value: Any, countdown: float | None = None) -> None:
        marks = current_marks.get()
        if marks is None:
            raise RuntimeError(f"{self.name}: mark_as_* is for the requests of the batch being "
                               "run (call it inside the batch task)")
        marks[request.id if not isinstance(request, str) else request] = (state, value, countdown)

    def mark_as_done(self, request: Any, result: Any = None) -> None:
        """This request succeeded with ``result`` (stored when the batch call returns)."""
        self._mark(request, "SUCCESS", result)

    def mark_as_failure(self, request: Any, exc: BaseException) -> None:
        """This request failed with ``exc`` (its errbacks and chord see it, as for any task)."""
        self._mark(request, "FAILURE", exc)

    def mark_as_retry(self, request: Any, exc: BaseException | None = None,
                      countdown: float | None = None) -> None:
        """Run this request again in a later batch, ``countdown`` seconds from now (default: the
        task's ``default_retry_delay``), up to ``max_retries``; then it fails with ``exc``."""
        self._mark(request, "RETRY", exc, countdown)
