"""OpenTelemetry tracing: a span for each publish and each run, linked through message headers.

Layer: features. ``opentelemetry-api`` is an optional extra (``celeriac[otel]``). Off by default;
``tracing_enabled = True`` switches it on in every process that uses the app (the app calls
``instrument()`` when it finalizes: a client's first send, a worker's start; a worker's replacement
children call it as they load the app), or call ``instrument()`` yourself. Where spans go is the
OpenTelemetry SDK's business: configure a ``TracerProvider`` and an exporter in each process (in a
prefork worker, in ``worker_process_init``), as for any other instrumented library.

- ``before_task_publish`` starts ``apply_async/<task>`` (kind PRODUCER) as a child of the current
  span and writes the W3C trace context into the message headers (``traceparent``, plus
  ``tracestate``/``baggage`` when set, through the configured propagator); ``after_task_publish``
  ends it, a failed publish ends it with an error status (``producer.publish_failure_hooks``).
- ``task_prerun``, in the process that runs the task (a prefork child included), starts
  ``run/<task>`` (kind CONSUMER), a child of the context read from the message's headers, and
  makes it the current span of a sync task, so the task's own spans and whatever it sends (chain
  steps, callbacks, retries, subtasks) are its children; ``task_postrun`` ends it with the state.
  An ``async def`` task's run span is not current on its event loop (its prerun and postrun run on
  helper threads), but what the task sends still gets it as parent.

The span names are those of Celery's OpenTelemetry instrumentation, and the header is the one it
writes, so a trace carries on between Celery and celeriac clients and workers both ways.

Tracing is per process, not per app: the signals are global. Instrumenting twice is harmless.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import _context, producer, signals
from .._version import __version__
from ..exceptions import MissingDependency

if TYPE_CHECKING:
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from ..transport.base import Outgoing

__all__ = ["instrument", "uninstrument", "is_instrumented"]

_UID = "celeriac.metrics.tracing"


@dataclass(slots=True)
class _OpenRun:
    span: Span
    #: the token of the context made current for a sync task (None: an async task's)
    token: Any
    thread: threading.Thread


class _Tracing:
    """The process's tracer and the spans it has open."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.publishing: dict[str, Span] = {}
        self.running: dict[str, _OpenRun] = {}


_lock = threading.Lock()
_state: _Tracing | None = None


def _require_otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise MissingDependency("tracing needs the 'opentelemetry-api' package (and an SDK to "
                                "export spans): pip install 'celeriac[otel]'") from None
    return trace


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace every task this process publishes or runs, from now on.

    ``tracer_provider``: where spans go (default: the global one, resolved at each span, so a
    provider set later, e.g. in a prefork child, is used). Called again with a provider, it
    switches to that one; without, it keeps the one it has."""
    global _state
    trace = _require_otel()
    with _lock:
        if _state is not None and tracer_provider is None:
            return
        tracer = trace.get_tracer("celeriac", __version__, tracer_provider=tracer_provider)
        if _state is not None:
            _state.tracer = tracer
            return
        _state = _Tracing(tracer)
        signals.before_task_publish.connect(_before_publish, weak=False, dispatch_uid=_UID)
        signals.after_task_publish.connect(_after_publish, weak=False, dispatch_uid=_UID)
        signals.task_prerun.connect(_prerun, weak=False, dispatch_uid=_UID)
        signals.task_postrun.connect(_postrun, weak=False, dispatch_uid=_UID)
        signals.task_internal_error.connect(_internal_error, weak=False, dispatch_uid=_UID)
        producer.publish_failure_hooks.append(_publish_failed)


def uninstrument() -> None:
    """Stop tracing (spans still open are dropped, not exported)."""
    global _state
    with _lock:
        if _state is None:
            return
        _state = None
        for signal in (signals.before_task_publish, signals.after_task_publish,
                       signals.task_prerun, signals.task_postrun, signals.task_internal_error):
            signal.disconnect(dispatch_uid=_UID)
        if _publish_failed in producer.publish_failure_hooks:
            producer.publish_failure_hooks.remove(_publish_failed)


def is_instrumented() -> bool:
    return _state is not None


# ---- publishing --------------------------------------------------------------------------------
def _before_publish(sender: Any = None, headers: dict[str, Any] | None = None,
                    routing_key: str | None = None, exchange: str | None = None,
                    **_: Any) -> None:
    state = _state
    if state is None or headers is None or not headers.get("id"):
        return
    from opentelemetry import propagate, trace

    task_id = str(headers["id"])
    name = str(headers.get("task") or sender or "?")
    span = state.tracer.start_span(
        f"apply_async/{name}", context=_publish_parent(state), kind=trace.SpanKind.PRODUCER,
        attributes={"celery.action": "apply_async", "celery.task_name": name,
                    "messaging.message.id": task_id, "messaging.operation.type": "send",
                    "messaging.destination.name": routing_key or exchange or ""})
    propagate.inject(headers, context=trace.set_span_in_context(span))
    state.publishing[task_id] = span


def _publish_parent(state: _Tracing) -> OtelContext | None:
    """The current context when a span is current; else, inside a task whose run span is not
    current (an ``async def`` task), that run span; else None (a new trace)."""
    from opentelemetry import trace

    if trace.get_current_span().get_span_context().is_valid:
        return None
    request = _context.current_worker_request()
    run = state.running.get(str(request.id)) if request is not None else None
    return trace.set_span_in_context(run.span) if run is not None else None


def _after_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    state = _state
    if state is None or headers is None:
        return
    span = state.publishing.pop(str(headers.get("id")), None)
    if span is not None:
        span.end()


def _publish_failed(items: Sequence[Outgoing], exc: BaseException) -> None:
    state = _state
    if state is None:
        return
    from opentelemetry.trace import Status, StatusCode

    for item in items:
        span = state.publishing.pop(str(item.message.headers.get("id")), None)
        if span is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()


# ---- running -----------------------------------------------------------------------------------
def _prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    state = _state
    if state is None or task_id is None:
        return
    from opentelemetry import context, propagate, trace

    _end_abandoned(state)
    request = getattr(task, "request", None)
    headers = getattr(request, "headers", None)
    parent = propagate.extract(headers) if isinstance(headers, dict) else None
    if parent is not None and not trace.get_current_span(parent).get_span_context().is_valid:
        parent = None  # no trace context sent (an eager call, an untraced client): the current
    name = str(getattr(task, "name", None) or sender or "?")
    attributes: dict[str, Any] = {"celery.action": "run", "celery.task_name": name,
                                  "messaging.message.id": task_id,
                                  "messaging.operation.type": "process"}
    hostname = getattr(request, "hostname", None)
    if hostname:
        attributes["celery.hostname"] = str(hostname)
    delivery = getattr(request, "delivery_info", None) or {}
    if delivery.get("routing_key"):
        attributes["messaging.destination.name"] = str(delivery["routing_key"])
    span = state.tracer.start_span(f"run/{name}", context=parent,
                                   kind=trace.SpanKind.CONSUMER, attributes=attributes)
    # an async task's prerun runs on a helper thread whose context is thrown away: nothing to
    # make current there (what it sends finds the span through its request, _publish_parent)
    token = None if getattr(task, "is_coroutine", False) else context.attach(
        trace.set_span_in_context(span))
    state.running[task_id] = _OpenRun(span, token, threading.current_thread())


def _postrun(task_id: str | None = None, retval: Any = None, state: str | None = None,
             **_: Any) -> None:
    _end_run(task_id, state, retval if state == "FAILURE" else None)


def _internal_error(task_id: str | None = None, exception: BaseException | None = None,
                    **_: Any) -> None:
    _end_run(task_id, "INTERNAL_ERROR", exception)


def _end_run(task_id: str | None, outcome: str | None, error: Any) -> None:
    tracing = _state
    if tracing is None or task_id is None:
        return
    run = tracing.running.pop(task_id, None)
    if run is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    if run.token is not None and run.thread is threading.current_thread():
        context.detach(run.token)
    span = run.span
    if outcome:
        span.set_attribute("celery.state", outcome)
    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def _end_abandoned(state: _Tracing) -> None:
    """End the run spans of threads gone without a postrun (a thread given up at a hard time
    limit): exported as errors instead of kept for ever."""
    if not state.running:
        return
    from opentelemetry.trace import Status, StatusCode

    for task_id, run in list(state.running.items()):
        if run.thread.is_alive():
            continue
        if state.running.pop(task_id, None) is run:
            run.span.set_status(Status(StatusCode.ERROR, "the thread running the task ended "
                                                         "before the task did"))
            run.span.end()
