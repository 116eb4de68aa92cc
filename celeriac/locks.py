"""Locks kept in the result store: ``app.lock()``, and the task options ``lock`` and ``unique``.

Layer: client side (beside ``app`` and ``task``). A lock is a key in the result store holding a
random token, taken and released in one atomic step each (the store's ``Locks`` capability,
backends/base.py), expiring on the store's clock so a holder that dies frees it after its
``expire``. The worker's side of the task options (defer while the key is held, release when the
task ends, renew while it runs) is worker/locking.py; the sender's side of ``unique`` is here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .backends.base import Locks
from .exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .app import Celery
    from .result import AsyncResult
    from .task import Task

logger = logging.getLogger("celeriac.locks")

#: what ``app.lock(lock_id)`` and a task's ``lock`` key are stored under (one namespace: a task
#: with ``lock="feed:{url}"`` and ``app.lock("feed:" + url)`` exclude each other)
LOCK_PREFIX = "celeriac-lock-"
#: what a task's ``unique`` key is stored under while a call is queued
UNIQUE_PREFIX = "celeriac-unique-"
#: the message header naming the ``unique`` key its sender took (the worker frees it at start)
UNIQUE_HEADER = "celeriac_unique"
#: ``app.lock()``'s expiry, and a running task's (the worker renews that one while it runs)
DEFAULT_LOCK_EXPIRE = 60.0
#: how long a queued call keeps its ``unique`` key if it never starts
DEFAULT_UNIQUE_EXPIRE = 3600.0

#: a task option's key: True (the task's name and arguments), a template, or a callable
KeySpec = bool | str | Callable[..., Any]


def lock_store(app: Celery, what: str = "app.lock()") -> Locks:
    """The app's result store as a lock holder, or one line naming the fix."""
    backend = app.backend
    if isinstance(backend, Locks):
        return backend
    where = app.conf.result_backend or "none"
    raise ImproperlyConfigured(
        f"{what} needs a result store that holds locks, and {where!r} does not: set "
        f"result_backend to 'sqlite:///celeriac.db' or 'redis://...' (rpc:// keeps no state)")


class Lock:
    """One named lock in the result store. ``with app.lock(name, expire=60) as acquired:``
    tries once, at once: ``acquired`` is True for the one holder, False for everyone else, and
    the holder releases it on leaving the block. A holder that dies frees it after ``expire``
    seconds; a holder still busy after ``expire`` has lost it (``extend()`` pushes it back)."""

    def __init__(self, store: Locks, name: str, expire: float = DEFAULT_LOCK_EXPIRE, *,
                 token: str | None = None, prefix: str = LOCK_PREFIX) -> None:
        if not expire or expire <= 0:
            raise ValueError(f"a lock's expire must be a positive number of seconds, "
                             f"not {expire!r}")
        self.store = store
        self.name = name
        self.key = prefix + name
        self.expire = float(expire)
        self.token = token or uuid.uuid4().hex
        self.acquired = False

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} {'held' if self.acquired else 'not held'}>"

    def acquire(self) -> bool:
        """Take the lock if it is free (never waits); True if this object holds it now."""
        self.acquired = self.store.lock_acquire(self.key, self.token, self.expire)
        return self.acquired

    def acquire_within(self, patience: float, poll: float = 0.01) -> bool:
        """Take the lock, trying every ``poll`` seconds for up to ``patience`` seconds (for
        short critical sections, such as a read-change-write of one stored record)."""
        deadline = time.monotonic() + patience
        while not self.acquire():
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)
        return True

    def release(self) -> bool:
        """Free the lock if this object still holds it. False when it had expired (another
        holder may have taken it since: the work under it may have overlapped theirs)."""
        if not self.acquired:
            return False
        self.acquired = False
        released = self.store.lock_release(self.key, self.token)
        if not released:
            logger.warning("Lock %r had expired before it was released (held longer than its "
                           "expire=%ss): another holder may have run at the same time",
                           self.name, self.expire)
        return released

    def extend(self, expire: float | None = None) -> bool:
        """Restart the lock's expiry (``expire`` seconds from now, default the lock's own);
        False if it was lost."""
        held = self.acquired and self.store.lock_extend(self.key, self.token,
                                                        float(expire or self.expire))
        self.acquired = held
        return held

    def owner(self) -> str | None:
        """The token holding the lock now (this object's ``token`` if it is this one)."""
        return self.store.lock_owner(self.key)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---- the task options: which key a call locks -------------------------------------------------
def call_arguments(task: Task, args: Iterable[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults filled in (``f(1)`` and ``f(x=1)`` are
    the same call); a bound task's ``self`` left out."""
    fun = task.__wrapped__ or task.run
    sig = inspect.signature(fun)
    try:
        bound = sig.bind(None, *args, **kwargs) if task._bound else sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{task.name}: {exc}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if task._bound:
        arguments.pop(next(iter(sig.parameters)), None)
    return arguments


def key_for(task: Task, spec: KeySpec, args: Iterable[Any] | None,
            kwargs: dict[str, Any] | None, option: str = "lock") -> str:
    """The key a call of ``task`` locks for the option ``spec``: True is the task's name and
    arguments; a string is a template filled with the arguments by name (``"feed:{url}"``; one
    without fields is one key for every call); a callable gets the call's arguments and
    returns the key."""
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    if callable(spec):
        return str(spec(*args, **kwargs))
    if spec is True:
        arguments = call_arguments(task, args, kwargs)
        text = json.dumps(arguments, sort_keys=True, default=repr, separators=(",", ":"))
        return f"{task.name}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    if isinstance(spec, str):
        arguments = call_arguments(task, args, kwargs)
        try:
            return spec.format_map(arguments)
        except (KeyError, IndexError, AttributeError) as exc:
            raise ImproperlyConfigured(
                f"task {task.name}: {option}={spec!r} names {exc}, which is not one of its "
                f"arguments ({', '.join(arguments) or 'none'}); fix the template") from None
    raise ImproperlyConfigured(f"task {task.name}: {option}={spec!r} must be True, a key "
                               f"template string or a callable returning the key")


# ---- the sender's side: unique while queued ---------------------------------------------------
def send_task_with_locks(task: Task, args: Any, kwargs: Any, options: dict[str, Any]
                         ) -> AsyncResult:
    """``apply_async`` for a task with ``lock`` or ``unique``: a bad key fails here, in the
    caller, rather than in a worker. With ``unique``, the call takes the queued key first: when
    another call holds it (queued, not started yet), nothing is sent and that call's
    AsyncResult comes back, its ``already_queued`` set to True (False on a result sent)."""
    app = task._get_app()
    if task.lock:
        key_for(task, task.lock, args, kwargs)
    if not task.unique:
        return app.send_task(task.name, args, kwargs, _task=task, **options)
    name = key_for(task, task.unique, args, kwargs, option="unique")
    task_id = options.pop("task_id", None) or str(uuid.uuid4())
    queued = Lock(lock_store(app, f"task {task.name} (unique=...)"), name,
                  task.unique_expire or DEFAULT_UNIQUE_EXPIRE, token=task_id,
                  prefix=UNIQUE_PREFIX)
    for _ in range(3):  # a holder that starts between our try and our look: try again
        if queued.acquire():
            break
        holder = queued.owner()
        if holder is not None:
            logger.info("Task %s[%s] not sent: the same call is queued as %s (unique=%r)",
                        task.name, task_id, holder, name)
            result = app.AsyncResult(holder, task_name=task.name)
            result.already_queued = True  # type: ignore[attr-defined]
            return result
    else:
        raise RuntimeError(f"task {task.name}: could not take its unique key {name!r}")
    headers = {**(options.pop("headers", None) or {}), UNIQUE_HEADER: name}
    try:
        result = app.send_task(task.name, args, kwargs, task_id=task_id, headers=headers,
                               _task=task, **options)
    except BaseException:
        queued.release()  # nothing queued: the next call may send
        raise
    result.already_queued = False  # type: ignore[attr-defined]
    return result
