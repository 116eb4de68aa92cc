"""Where a finished subtask's outcome goes: its dispatch's inbox in the result store.

Layer: dispatch. A subtask's message carries the ``celeriac_dispatch`` header: ``[main task id,
index, main task name, auto_ignore]``. The worker that runs it (whatever its pool) appends one
entry to the inbox of that dispatch when it ends (``report``), in the result store's
append-only log (``AppendLog``): the index, a newline, then the outcome as the result store's
own document (Celery's meta in the result serializer; never pickle unless you chose it). The
worker running the main task reads the inbox in completion order from a saved cursor, so a
main task that crashes and comes back loses nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import AppendLog, ResultBackend
from ..backends.meta import exception_to_dict
from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from ..app import Celery

#: the message header that makes a task a subtask of a dispatch
HEADER = "celeriac_dispatch"
_ID_NAMESPACE = uuid.UUID("6b1f0c1e-3d2a-5e55-9c61-2f0d5c3e7a10")


def inbox_key(dispatch_id: str) -> str:
    return f"celeriac-dispatch-{dispatch_id}"


def state_key(dispatch_id: str) -> str:
    return f"celeriac-dispatch-state-{dispatch_id}"


def subtask_id(dispatch_id: str, index: int) -> str:
    """The id of subtask ``index``: the same each time the main task runs (a redelivered main
    task sends the same ids again, so a repeat is recognised and its result lands in one place)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{dispatch_id}/{index}"))


@dataclass(frozen=True, slots=True)
class Target:
    """The dispatch a subtask reports to."""

    dispatch_id: str
    index: int
    main_task: str | None
    auto_ignore: bool

    def as_header(self) -> list[Any]:
        return [self.dispatch_id, self.index, self.main_task, self.auto_ignore]


def target_of(request: Any) -> Target | None:
    """The dispatch this task's request belongs to, or None for any other task."""
    headers = getattr(request, "headers", None) or {}
    value = headers.get(HEADER) if isinstance(headers, dict) else None
    if value is None:
        value = getattr(request, HEADER, None)
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    main = value[2] if len(value) > 2 else None
    return Target(str(value[0]), int(value[1]), main, bool(value[3]) if len(value) > 3 else True)


_stores: dict[tuple[int, str], ResultBackend] = {}


def store_for(app: Celery, url: str | None = None) -> ResultBackend:
    """The store holding dispatch state: ``url`` (the decorator's ``backend=``), else the
    ``dispatcher_result_backend`` setting, else the app's result store."""
    url = url or app.conf.get("dispatcher_result_backend")
    store: ResultBackend
    if not url:
        store = app.backend
    else:
        key = (id(app), url)
        cached = _stores.get(key)
        if cached is None:
            from ..backends import backend_from_url

            cached = _stores[key] = backend_from_url(url, app)
        store = cached
    if not isinstance(store, AppendLog):
        raise ImproperlyConfigured(
            f"dispatch needs a result store that keeps state, and {type(store).__name__} does "
            "not: set dispatcher_result_backend (or result_backend) to a redis://, sqlite:// "
            "or memory:// URL")
    return store


def store_for_target(app: Celery, target: Target) -> ResultBackend:
    """The store a subtask reports to: its main task's ``backend=`` when this worker knows the
    main task, else the settings."""
    task = app.tasks.get(target.main_task) if target.main_task else None
    config = getattr(getattr(task, "__wrapped__", None), "__celeriac_dispatch__", None)
    return store_for(app, getattr(config, "backend", None))


def entry(store: ResultBackend, target: Target, request: Any, state: str, value: Any,
          traceback: str | None = None) -> bytes:
    """The inbox entry for one outcome; ``EncodeError`` when the result serializer cannot
    encode ``value``."""
    if isinstance(value, BaseException):
        value = exception_to_dict(value)
    write = store.result_write(str(request.id), value, state, traceback, request=request)
    return b"%d\n" % target.index + write.value


def push(store: ResultBackend, target: Target, data: bytes) -> None:
    assert isinstance(store, AppendLog)
    store.log_append(inbox_key(target.dispatch_id), [data], store.expires or None)


def report(app: Celery, request: Any, state: str, value: Any,
           traceback: str | None = None) -> None:
    """Append the outcome of ``request`` to its dispatch's inbox (no-op for other tasks)."""
    target = target_of(request)
    if target is None:
        return
    store = store_for_target(app, target)
    push(store, target, entry(store, target, request, state, value, traceback))


def parse(store: ResultBackend, data: bytes) -> tuple[int, dict[str, Any]]:
    """An inbox entry back into ``(index, meta)``."""
    head, _, body = bytes(data).partition(b"\n")
    return int(head), store.decode(body)
