"""Celery's result meta documents and safe exception (de)serialization. Layer: backends, pure.

Every store writes exactly these documents, so a Celery client reading a celeriac store (or the
other way round) sees the same layout. Rebuilding exceptions is the one place a result reader
turns data into code objects, so it only ever calls exception classes that are already imported.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .. import exceptions as _exc_module
from .. import states

#: celeriac exception -> the module Celery's own class of that name lives in. Celery re-exports
#: billiard's time-limit / worker-lost errors and kombu's content errors, so their ``__module__``
#: (which is what Celery writes as ``exc_module``) is billiard's or kombu's.
_CELERY_HOMES: dict[str, str] = {
    **dict.fromkeys((
        "ImproperlyConfigured", "NotRegistered", "SecurityError", "TimeoutError", "Retry",
        "MaxRetriesExceededError", "TaskRevokedError", "Ignore", "Reject", "ChordError",
        "QueueNotFound", "BackendError", "IncompleteStream", "InvalidTaskError",
    ), "celery.exceptions"),
    **dict.fromkeys(("TimeLimitExceeded", "SoftTimeLimitExceeded", "WorkerLostError"),
                    "billiard.exceptions"),
    **dict.fromkeys(("ContentDisallowed", "DecodeError", "EncodeError"), "kombu.exceptions"),
}

#: (exc_module, exc_type) as Celery writes them -> our class, for reading them back.
_FROM_CELERY: dict[tuple[str, str], type[BaseException]] = {
    (module, name): getattr(_exc_module, name) for name, module in _CELERY_HOMES.items()
}
# Celery also accepts these spellings for classes that moved or have aliases.
_FROM_CELERY.update({
    ("celery.exceptions", "RetryTaskError"): _exc_module.Retry,
    ("celery.exceptions", "TimeLimitExceeded"): _exc_module.TimeLimitExceeded,
    ("celery.exceptions", "SoftTimeLimitExceeded"): _exc_module.SoftTimeLimitExceeded,
    ("celery.exceptions", "WorkerLostError"): _exc_module.WorkerLostError,
    ("celery.exceptions", "ContentDisallowed"): _exc_module.ContentDisallowed,
    ("celery.exceptions", "DecodeError"): _exc_module.DecodeError,
})
_FOREIGN_MODULES = frozenset(module for module, _ in _FROM_CELERY)

_STAND_IN_LIMIT = 512
_stand_ins: OrderedDict[tuple[str, Any], type[Exception]] = OrderedDict()
_stand_ins_lock = threading.Lock()


def build_meta(task_id: str, state: str, result: Any, *, traceback: str | None = None,
               request: Any = None, children: list[Any] | None = None,
               extended: bool = False) -> dict[str, Any]:
    """The ``celery-task-meta-<id>`` document, keys in Celery's order (readers must not rely on
    order, but byte-identical documents make captures diffable)."""
    meta: dict[str, Any] = {
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": list(children) if children is not None else [],
        "date_done": (datetime.now(timezone.utc).isoformat(timespec="microseconds")
                      if state in states.READY_STATES else None),
    }
    if request is not None:
        group = getattr(request, "group", None)
        if group:
            meta["group_id"] = group
        parent_id = getattr(request, "parent_id", None)
        if parent_id:
            meta["parent_id"] = parent_id
        if extended:
            delivery_info = getattr(request, "delivery_info", None)
            meta.update(
                name=getattr(request, "task", None),
                args=getattr(request, "args", None),
                kwargs=getattr(request, "kwargs", None),
                worker=getattr(request, "hostname", None),
                retries=getattr(request, "retries", None),
                queue=(delivery_info.get("routing_key")
                       if isinstance(delivery_info, Mapping) else None),
            )
    meta["task_id"] = task_id
    return meta


def pending_meta(task_id: str) -> dict[str, Any]:
    """What a missing key means: Celery never stores PENDING."""
    return {"status": states.PENDING, "result": None, "traceback": None, "children": [],
            "date_done": None, "task_id": task_id}


def exception_to_dict(exc: BaseException | Mapping[str, Any]) -> dict[str, Any]:
    """Celery's exception map. Arguments the JSON serializer could not carry become their repr,
    so storing a failure can never fail because of what the exception holds."""
    if isinstance(exc, Mapping):
        return exc if isinstance(exc, dict) else dict(exc)
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {type(exc).__name__}")
    cls = type(exc)
    name = getattr(cls, "__qualname__", cls.__name__)
    module = cls.__module__
    if module == _exc_module.__name__ and name in _CELERY_HOMES:
        module = _CELERY_HOMES[name]
    return {"exc_type": name, "exc_message": [_serializable(arg) for arg in exc.args],
            "exc_module": module}


def exception_from_dict(data: Any) -> BaseException:
    """Rebuild an exception from its map without importing anything or calling non-exceptions.

    The map comes from whoever can write to the result store, so it is untrusted: the module is
    only looked up among already-imported ones, the dotted name is walked statically (no
    ``__getattr__`` hooks or descriptors run), and a name that resolves to anything but an
    exception class yields a ``SecurityError`` instead of being called.
    """
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, Mapping):
        return Exception(data)
    exc_type = data.get("exc_type")
    exc_module = data.get("exc_module")
    message = data.get("exc_message", [])
    if not isinstance(exc_type, str) or not exc_type:
        exc_type = "UnknownError"
    if not isinstance(exc_module, str):
        exc_module = None
    cls = _resolve(exc_module, exc_type)
    if cls is None:
        cls = _stand_in(exc_type, exc_module)
    elif not (issubclass(type(cls), type) and issubclass(cls, BaseException)):
        return _exc_module.SecurityError(
            f"refusing to rebuild {exc_module}.{exc_type}: it is not an exception class")
    try:
        rebuilt: BaseException = (cls(*message) if isinstance(message, (list, tuple))
                                   else cls(message))
        return rebuilt
    except Exception:  # noqa: BLE001 - a constructor that does not take its own args
        fallback = _stand_in(exc_type, exc_module)
        return fallback(*message) if isinstance(message, (list, tuple)) else fallback(message)


def _resolve(exc_module: str | None, exc_type: str) -> Any:
    """The object ``exc_module.exc_type`` names among imported modules, or None if missing."""
    if exc_module is None:
        return None
    if exc_module in _FOREIGN_MODULES:
        return _FROM_CELERY.get((exc_module, exc_type))
    obj: Any = sys.modules.get(exc_module)
    if obj is None:
        return None
    for part in exc_type.split("."):
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            return None
    return obj


def _stand_in(exc_type: str, exc_module: str | None) -> type[Exception]:
    """An exception class named like the original, so messages and ``exception_to_dict`` keep the
    original names. Cached (bounded: the names come from untrusted data)."""
    key = (exc_type, exc_module)
    with _stand_ins_lock:
        cls = _stand_ins.get(key)
        if cls is None:
            cls = type(exc_type.rpartition(".")[2] or exc_type, (Exception,),
                       {"__module__": exc_module, "__qualname__": exc_type})
            _stand_ins[key] = cls
            if len(_stand_ins) > _STAND_IN_LIMIT:
                _stand_ins.popitem(last=False)
        else:
            _stand_ins.move_to_end(key)
        return cls


def safe_repr(value: Any) -> str:
    """``repr(value)``; a broken ``__repr__`` gives a placeholder instead of an error."""
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the failure
        return f"<unrepresentable {type(value).__name__}>"


def _serializable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return safe_repr(value)
    return value
