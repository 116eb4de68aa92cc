"""Time limits and forced stops for tasks running in threads and on the event loop.

Layer: worker. The process pool enforces limits with signals (SIGALRM in the child for the soft
limit, the parent killing the child for the hard one). Threads cannot be killed, so in the thread
and solo pools the soft limit (and a terminate) is delivered as an exception raised in the task's
thread; the hard limit is not enforced there (a warning says so at startup). ``async def`` tasks
get both: the soft limit is thrown into the coroutine at its current ``await``, the hard limit
cancels it.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from typing import Any, Coroutine

from ..exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded


class Terminated(TaskRevokedError):
    """Raised in a pool thread to stop a task revoked with terminate=True; the executor lets it
    through untouched, so the consumer records REVOKED, not a task failure."""


def limits_for(app: Any, task: Any, headers: dict) -> tuple[float | None, float | None]:
    """(hard, soft) seconds: the message's ``timelimit`` header, else the task's, else settings."""
    pair = headers.get("timelimit") or (None, None)
    hard = pair[0] if len(pair) > 0 else None
    soft = pair[1] if len(pair) > 1 else None
    conf = app.conf
    if hard is None:
        hard = getattr(task, "time_limit", None) or conf.task_time_limit
    if soft is None:
        soft = getattr(task, "soft_time_limit", None) or conf.task_soft_time_limit
    return (float(hard) if hard else None, float(soft) if soft else None)


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise ``exc_type`` in another thread at its next bytecode.

    A thread blocked in a long C call (``time.sleep``, a socket read) sees it only when that call
    returns. Returns False if no such thread exists.
    """
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                       ctypes.py_object(exc_type))
    if done > 1:  # more than one thread state touched: undo, as the C API docs require
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1


class ThreadGuard:
    """Soft time limit and terminate for one task running in a pool thread."""

    def __init__(self, soft: float | None) -> None:
        self.thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._active = True
        self._timer: threading.Timer | None = None
        if soft:
            self._timer = threading.Timer(soft, self.interrupt, (SoftTimeLimitExceeded,))
            self._timer.daemon = True
            self._timer.start()

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        with self._lock:
            if not self._active:
                return False
            return raise_in_thread(self.thread_id, exc_type)

    def finish(self) -> None:
        with self._lock:
            self._active = False
        if self._timer is not None:
            self._timer.cancel()


class _SoftLimitCoroutine:
    """Wraps a task's coroutine so a cancel we send for the soft limit arrives as
    ``SoftTimeLimitExceeded`` at the coroutine's current ``await`` (catchable by the task)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.soft_pending = False
        self.future: asyncio.Future | None = None

    def __await__(self) -> "_SoftLimitCoroutine":
        return self

    def __iter__(self) -> "_SoftLimitCoroutine":
        return self

    def __next__(self) -> Any:
        return self.coro.send(None)

    def send(self, value: Any) -> Any:
        return self.coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = val if val is not None else typ
        if self.soft_pending and isinstance(exc, (asyncio.CancelledError, type)) and (
                exc is asyncio.CancelledError or isinstance(exc, asyncio.CancelledError)):
            self.soft_pending = False
            if isinstance(self.future, asyncio.Task):
                self.future.uncancel()
            return self.coro.throw(SoftTimeLimitExceeded())
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self) -> None:
        self.coro.close()


async def run_with_limits(coro: Coroutine[Any, Any, Any], soft: float | None,
                          hard: float | None) -> Any:
    """Await ``coro`` under the soft/hard limits; a hard limit raises TimeLimitExceeded."""
    if not soft and not hard:
        return await coro
    wrapper = _SoftLimitCoroutine(coro)
    future: asyncio.Future[Any] = asyncio.ensure_future(wrapper)
    wrapper.future = future
    loop = asyncio.get_running_loop()
    hard_fired = []

    def fire_soft() -> None:
        if not future.done():
            wrapper.soft_pending = True
            future.cancel()

    def fire_hard() -> None:
        if not future.done():
            hard_fired.append(True)
            future.cancel()

    handles = []
    if soft:
        handles.append(loop.call_later(soft, fire_soft))
    if hard:
        handles.append(loop.call_later(hard, fire_hard))
    try:
        return await future
    except asyncio.CancelledError:
        if hard_fired:
            raise TimeLimitExceeded(hard) from None
        raise
    finally:
        for handle in handles:
            handle.cancel()

