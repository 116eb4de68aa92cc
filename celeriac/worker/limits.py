"""Time limits and forced stops for tasks running in threads and on the event loop.

Layer: worker. The process pool enforces limits with signals (SIGALRM in the child for the soft
limit, the parent killing the child for the hard one). Threads cannot be killed, so in the thread
and solo pools the soft limit (and a terminate) is delivered as an exception raised in the task's
thread, and the hard limit gives the thread up: the task is reported as failed with
``TimeLimitExceeded`` at once, ``HardTimeLimitStop`` is raised in its thread to unwind the task's
code, and the pool puts a new thread in its place. Nothing the given-up thread does afterwards is
recorded (the executor lets ``HardTimeLimitStop`` through; ``task_code_ended`` raises it should the
task swallow it). A thread blocked in a C call (``time.sleep``, a socket read) stays blocked until
that call returns: the stop can only land when Python code runs again.

``async def`` tasks get both: the soft limit is thrown into the coroutine at its current ``await``,
the hard limit cancels it.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from typing import Any, Callable, Coroutine

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


class HardTimeLimitStop(BaseException):
    """Raised in a pool thread whose task ran past its hard time limit, after the worker has
    recorded the task as failed and moved on: it only unwinds the task's code so the thread can
    leave. Not an ``Exception``, so a task's ``except Exception`` does not swallow it; the executor
    lets it through and records nothing more for the task."""


#: the guard of the task running in this thread (pool threads only; unset elsewhere)
_current = threading.local()


def task_code_started() -> None:
    """The executor is about to call the task's own code in this thread."""
    guard: ThreadGuard | None = getattr(_current, "guard", None)
    if guard is not None:
        guard.enter_task_code()


def task_code_ended() -> None:
    """The task's own code returned (or raised). Raises ``HardTimeLimitStop`` when the thread
    was given up on meanwhile, so nothing after it records an outcome."""
    guard: ThreadGuard | None = getattr(_current, "guard", None)
    if guard is not None:
        guard.leave_task_code()


class ThreadGuard:
    """Soft and hard time limits and terminate for one task running in a pool thread.

    Made in the thread that runs the task. The hard limit acts only while the task's own code
    runs (between ``task_code_started`` and ``task_code_ended``): it then gives the thread up
    (``given_up``), raises ``HardTimeLimitStop`` in it and calls ``on_hard_limit``, which reports
    the task. Passed before the task's code starts (its prerun bookkeeping), it looks again a
    moment later; passed after the code returned, it does nothing: the outcome is being recorded
    and is reported as usual.
    """

    #: seconds before the hard limit looks again when it passes before the task's code started
    RECHECK = 0.05

    def __init__(self, soft: float | None, hard: float | None = None,
                 on_hard_limit: Callable[[], None] | None = None) -> None:
        self.thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._active = True
        self._depth = 0  # task code calls in progress (an eager apply() nests one)
        self._code_started = False
        #: the hard limit passed while the task's code ran: the task has been reported already
        self.given_up = False
        self._on_hard_limit = on_hard_limit
        self._timers: list[threading.Timer] = []
        if soft:
            self._arm(soft, self.interrupt, SoftTimeLimitExceeded)
        if hard and on_hard_limit is not None:
            self._arm(hard, self._hard_limit)
        _current.guard = self

    def _arm(self, seconds: float, action: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(seconds, action, args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        with self._lock:
            if not self._active or self.given_up:
                return False
            return raise_in_thread(self.thread_id, exc_type)

    def _hard_limit(self) -> None:
        with self._lock:
            if not self._active or self.given_up:
                return
            if self._depth == 0:
                if not self._code_started:
                    self._arm(self.RECHECK, self._hard_limit)
                return
            self.given_up = True
            raise_in_thread(self.thread_id, HardTimeLimitStop)
        assert self._on_hard_limit is not None
        self._on_hard_limit()

    def enter_task_code(self) -> None:
        with self._lock:
            self._depth += 1
            self._code_started = True

    def leave_task_code(self) -> None:
        with self._lock:
            self._depth -= 1
            given_up = self.given_up
            if given_up:
                # the stop may not have landed yet (set while a C call ran): take it back and
                # raise it here, so it cannot land later in code that records the outcome
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)
        if given_up:
            raise HardTimeLimitStop()

    def finish(self) -> None:
        with self._lock:
            self._active = False
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        if getattr(_current, "guard", None) is self:
            _current.guard = None


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

