"""Celery's signals: hooks user code connects to, sent by the producer, worker and logging setup.

Layer: core (no imports of ours). Public facade with Celery's names (``celery.signals``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Callable, Iterable, NamedTuple

__all__ = [
    "Signal",
    "before_task_publish", "after_task_publish", "task_received", "task_prerun", "task_postrun",
    "task_success", "task_retry", "task_failure", "task_internal_error", "task_revoked",
    "task_unknown", "task_rejected",
    "celeryd_init", "celeryd_after_setup", "import_modules", "worker_init",
    "worker_before_create_process", "worker_process_init", "worker_process_shutdown",
    "worker_ready", "heartbeat_sent", "worker_shutting_down", "worker_shutdown",
    "beat_init", "beat_embedded_init",
    "setup_logging", "after_setup_logger", "after_setup_task_logger",
]

logger = logging.getLogger("celeriac.signals")

Receiver = Callable[..., Any]


class _Entry(NamedTuple):
    key: tuple[Any, Any]
    get: Callable[[], Receiver | None]  # the receiver, or None once it was garbage collected
    sender: Any


def _receiver_id(receiver: Receiver) -> Any:
    # A bound method is a new object on every attribute access: identify it by (object, function).
    self_ = getattr(receiver, "__self__", None)
    func = getattr(receiver, "__func__", None)
    if self_ is not None and func is not None:
        return (id(self_), id(func))
    return id(receiver)


def _sender_key(sender: Any) -> Any:
    if sender is None or isinstance(sender, str):
        return sender
    return ("id", id(sender))  # the entry holds the sender, so the id stays unique


def _sender_matches(wanted: Any, sender: Any) -> bool:
    if wanted is None or wanted is sender:
        return True
    if isinstance(wanted, str):
        # Task signals: connect with the task name; the sender is the Task (``.name``) or the name.
        return wanted == sender or wanted == getattr(sender, "name", None)
    # A shared_task proxy and the app's task built from it wrap the same function.
    wrapped = _wrapped_function(wanted)
    return wrapped is not None and wrapped is _wrapped_function(sender)


def _wrapped_function(obj: Any) -> Any:
    wrapped = getattr(obj, "__wrapped__", None)
    return getattr(wrapped, "__func__", wrapped)  # read through an instance it may be bound


class Signal:
    """A named hook: receivers connect to it, and ``send`` calls every one that matches the sender.

    Receivers are held weakly by default (as in Celery), so connecting a module's function or an
    object's method does not keep it alive; pass ``weak=False`` for a lambda or closure. A
    receiver that raises is logged and the rest still run: a buggy hook must not break a task.
    """

    def __init__(self, name: str, providing_args: Iterable[str] | None = None) -> None:
        self.name = name
        self.providing_args = frozenset(providing_args or ())
        self._lock = threading.Lock()
        # Copy-on-write tuple: ``send`` reads it without the lock.
        self._entries: tuple[_Entry, ...] = ()
        self._has_dead = False

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    # ---- connecting --------------------------------------------------------------------------
    def connect(self, receiver: Receiver | None = None, *, sender: Any = None, weak: bool = True,
                dispatch_uid: Any = None) -> Any:
        """Connect ``receiver``; used bare (``@sig.connect``) or with options
        (``@sig.connect(sender="tasks.add")``), returning the receiver either way."""
        if receiver is None:
            def decorate(fun: Receiver) -> Receiver:
                return self.connect(fun, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
            return decorate
        if not callable(receiver):
            raise TypeError(f"signal receiver must be callable, got {receiver!r}")
        key = (dispatch_uid if dispatch_uid is not None else _receiver_id(receiver),
               _sender_key(sender))
        entry = _Entry(key, self._reference(receiver) if weak else (lambda: receiver), sender)
        with self._lock:
            self._purge_dead()
            if all(e.key != key for e in self._entries):
                self._entries = self._entries + (entry,)
        return receiver

    def _reference(self, receiver: Receiver) -> Callable[[], Receiver | None]:
        def on_collected(_ref: Any) -> None:
            self._has_dead = True  # purged on the next connect/disconnect/receivers

        try:
            if getattr(receiver, "__self__", None) is not None and hasattr(receiver, "__func__"):
                return weakref.WeakMethod(receiver, on_collected)
            return weakref.ref(receiver, on_collected)
        except TypeError:  # not weak-referenceable (a builtin): keep it strongly
            return lambda: receiver

    def disconnect(self, receiver: Receiver | None = None, sender: Any = None,
                   dispatch_uid: Any = None) -> bool:
        """Remove a receiver (by itself or its ``dispatch_uid``); True if one was connected."""
        if dispatch_uid is not None:
            key = (dispatch_uid, _sender_key(sender))
        elif receiver is not None:
            key = (_receiver_id(receiver), _sender_key(sender))
        else:
            raise TypeError("disconnect needs the receiver or its dispatch_uid")
        with self._lock:
            self._purge_dead()
            kept = tuple(e for e in self._entries if e.key != key)
            removed = len(kept) != len(self._entries)
            self._entries = kept
        return removed

    def _purge_dead(self) -> None:
        if self._has_dead:
            self._has_dead = False
            self._entries = tuple(e for e in self._entries if e.get() is not None)

    # ---- sending -----------------------------------------------------------------------------
    @property
    def receivers(self) -> list[Receiver]:
        """The live receivers, in connection order (empty: nobody listens)."""
        if not self._entries:
            return []
        if self._has_dead:
            with self._lock:
                self._purge_dead()
        return [r for r in (e.get() for e in self._entries) if r is not None]

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether ``send(sender)`` would call anyone."""
        return any(e.get() is not None and (sender is None or _sender_matches(e.sender, sender))
                   for e in self._entries)

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call each matching receiver as ``receiver(signal=self, sender=sender, **named)``.

        Returns ``(receiver, response)`` pairs; a receiver that raised has its exception as the
        response, after it is logged.
        """
        responses: list[tuple[Receiver, Any]] = []
        for entry in self._entries:
            if not _sender_matches(entry.sender, sender):
                continue
            receiver = entry.get()
            if receiver is None:
                continue
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.exception("Signal handler %r for %s raised: %r", receiver, self.name, exc)
                response = exc
            responses.append((receiver, response))
        return responses


# ---- publishing --------------------------------------------------------------------------------
before_task_publish = Signal("before_task_publish", providing_args={
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"})
after_task_publish = Signal("after_task_publish", providing_args={
    "body", "exchange", "routing_key"})

# ---- task lifecycle in the worker ----------------------------------------------------------------
task_received = Signal("task_received", providing_args={"request"})
task_prerun = Signal("task_prerun", providing_args={"task_id", "task", "args", "kwargs"})
task_postrun = Signal("task_postrun", providing_args={
    "task_id", "task", "args", "kwargs", "retval", "state"})
task_success = Signal("task_success", providing_args={"result"})
task_retry = Signal("task_retry", providing_args={"request", "reason", "einfo"})
task_failure = Signal("task_failure", providing_args={
    "task_id", "exception", "args", "kwargs", "traceback", "einfo"})
task_internal_error = Signal("task_internal_error", providing_args={
    "task_id", "args", "kwargs", "request", "exception", "traceback", "einfo"})
task_revoked = Signal("task_revoked", providing_args={
    "request", "terminated", "signum", "expired"})
task_unknown = Signal("task_unknown", providing_args={"message", "exc", "name", "id"})
task_rejected = Signal("task_rejected", providing_args={"message", "exc"})

# ---- worker lifecycle ----------------------------------------------------------------------------
celeryd_init = Signal("celeryd_init", providing_args={"instance", "conf", "options"})
celeryd_after_setup = Signal("celeryd_after_setup", providing_args={"instance", "conf"})
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_before_create_process = Signal("worker_before_create_process")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", providing_args={"pid", "exitcode"})
worker_ready = Signal("worker_ready")
heartbeat_sent = Signal("heartbeat_sent")
worker_shutting_down = Signal("worker_shutting_down", providing_args={"sig", "how", "exitcode"})
worker_shutdown = Signal("worker_shutdown")

# ---- beat ----------------------------------------------------------------------------------------
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")

# ---- logging -------------------------------------------------------------------------------------
_LOGGING_ARGS = {"loglevel", "logfile", "format", "colorize"}
setup_logging = Signal("setup_logging", providing_args=_LOGGING_ARGS)
after_setup_logger = Signal("after_setup_logger", providing_args={"logger", *_LOGGING_ARGS})
after_setup_task_logger = Signal("after_setup_task_logger",
                                 providing_args={"logger", *_LOGGING_ARGS})
