"""Thread pool and solo pool: tasks run in this process (threads share the app's connections).

Hard time limits: a thread cannot be killed, so the pool gives it up instead (see
worker/limits.py): the task is reported at once as failed with ``TimeLimitExceeded``, an
exception is raised in its thread to unwind the task's code, and a new thread takes the slot.
The given-up thread leaves as soon as the task's code lets it, and nothing it does afterwards is
recorded; a task blocked in a C call keeps its thread until that call returns.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from typing import Any, Callable

from ... import states
from ...exceptions import SoftTimeLimitExceeded
from ..limits import HardTimeLimitStop, Terminated, ThreadGuard
from ..outcome import Ending, Outcome
from . import OnDone

logger = logging.getLogger("celeriac.worker")

#: what a pool calls when a task passes its hard time limit: ``(job id, message, limit)``
GiveUp = Callable[[int, Any, float], None]


def run_guarded(runner: Any, guards: dict, lock: threading.Lock, job_id: int, message: Any,
                delivery_info: dict, give_up: GiveUp | None = None,
                limits: tuple[float | None, float | None] | None = None) -> Outcome | None:
    """Run one job in this thread with its time limits and terminate hook in place.

    With ``give_up``, the hard limit is enforced: ``give_up`` reports the job when it passes,
    and this returns None (the job is reported already; the thread should leave). ``limits``:
    the message's ``(hard, soft)`` when the caller has read them already."""
    hard, soft = limits if limits is not None else runner.limits(message)
    on_hard_limit = None
    if give_up is not None and hard:
        def on_hard_limit() -> None:
            give_up(job_id, message, hard)

    guard = ThreadGuard(soft, hard, on_hard_limit)
    with lock:
        guards[job_id] = guard
    try:
        try:
            outcome: Outcome = runner(message, delivery_info)
        finally:
            guard.finish()
            with lock:
                guards.pop(job_id, None)
    except HardTimeLimitStop:
        return None
    except Terminated:
        return Outcome.terminated(message.headers.get("id") or "?")
    except SoftTimeLimitExceeded:  # landed after the task returned: nothing left to stop
        return Outcome(message.headers.get("id") or "?", states.FAILURE, Ending.FAILED,
                       exc_repr="SoftTimeLimitExceeded()")
    return None if guard.given_up else outcome


def terminate_guarded(guards: dict, lock: threading.Lock, job_id: int) -> bool:
    with lock:
        guard = guards.get(job_id)
    return guard is not None and guard.interrupt(Terminated)


def time_limit_outcome(message: Any, hard: float) -> Outcome:
    """The outcome of a job given up on at its hard limit (the consumer stores the failure)."""
    task_id = message.headers.get("id") or "?"
    logger.error("Hard time limit (%ss) exceeded for %s[%s]: its thread is given up on and "
                 "replaced", hard, message.headers.get("task"), task_id)
    return Outcome(task_id, states.FAILURE, Ending.TIME_LIMIT, limit=hard)


class ThreadPool:
    """N worker threads taking jobs from one queue: an idle thread always takes the next job.

    Its size can change while it runs (``grow``, ``shrink``: ``--autoscale``); shrinking only
    retires idle threads. ``hard_limits=False`` leaves hard time limits unenforced (the threads
    that run dispatch main tasks, which keep their soft limit only).
    """

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone, *,
                 hard_limits: bool = True) -> None:
        self.runner = runner
        #: slots: threads taking jobs (0 only while an autoscaled pool is at its minimum of 0)
        self.limit = max(0, concurrency)
        self.on_done = on_done
        self.hard_limits = hard_limits
        self._jobs: "queue.SimpleQueue[tuple | None]" = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        #: live threads that take jobs (not those given up on, nor those that have retired)
        self._threads: set[threading.Thread] = set()
        self._names = itertools.count()
        self._guards: dict[int, ThreadGuard] = {}
        self._stopping = False

    def start(self) -> None:
        with self._lock:
            for _ in range(self.limit):
                self._start_thread()

    def _start_thread(self) -> None:
        """Hold ``_lock``."""
        thread = threading.Thread(target=self._loop, name=f"celeriac-pool-{next(self._names)}",
                                  daemon=True)
        self._threads.add(thread)
        thread.start()

    def free_slots(self) -> int:
        with self._lock:
            return self.limit - self._busy

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> bool:
        with self._lock:
            self._busy += 1
        self._jobs.put((job_id, message, delivery_info))
        return True

    def grow(self, n: int) -> int:
        """Add ``n`` threads; returns how many were added."""
        with self._lock:
            if self._stopping or n <= 0:
                return 0
            for _ in range(n):
                self._start_thread()
            self.limit += n
        return n

    def shrink(self, n: int) -> int:
        """Retire up to ``n`` idle threads, never one with a task; returns how many."""
        with self._lock:
            n = max(0, min(n, self.limit - self._busy))
            self.limit -= n
            # behind the jobs already queued, so only a thread with nothing to do takes one
            for _ in range(n):
                self._jobs.put(None)
        return n

    def _loop(self) -> None:
        me = threading.current_thread()
        give_up = self._give_up_on(me) if self.hard_limits else None
        while True:
            job = self._jobs.get()
            if job is None:
                with self._lock:
                    self._threads.discard(me)
                return
            job_id, message, delivery_info = job
            try:
                outcome = run_guarded(self.runner, self._guards, self._lock, job_id, message,
                                      delivery_info, give_up)
            except BaseException:
                with self._lock:
                    self._busy -= 1
                raise
            if outcome is None:  # given up at its hard time limit: reported and replaced
                logger.warning("A pool thread given up on at its hard time limit (task %s) got "
                               "control back and leaves", message.headers.get("id"))
                return
            with self._lock:
                self._busy -= 1
            self.on_done(job_id, outcome)

    def _give_up_on(self, thread: threading.Thread) -> GiveUp:
        def give_up(job_id: int, message: Any, hard: float) -> None:
            with self._lock:
                self._busy -= 1
                self._threads.discard(thread)
                self._start_thread()  # even while stopping: it takes a stop marker in its place
            self.on_done(job_id, time_limit_outcome(message, hard))

        return give_up

    def terminate(self, job_id: int, signum: int) -> bool:
        """Threads cannot take signals: the task gets an exception raised in its thread."""
        return terminate_guarded(self._guards, self._lock, job_id)

    def stop(self, wait: bool = True) -> None:
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        if not wait:
            return
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
                with self._lock:
                    if thread not in self._threads:  # given up on: it may never return
                        break


class SoloPool:
    """Runs each task inline in the dispatching thread: one at a time, no concurrency.

    A message with a hard time limit runs on a helper thread instead, which the dispatching
    thread waits for: when the limit passes, the helper is given up on (and a new one made for
    the next such task) while the dispatching thread carries on. Everything else about the task
    is as inline: its outcome is handed over in the dispatching thread.
    """

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone) -> None:
        self.runner = runner
        self.limit = 1
        self.on_done = on_done
        self._busy = False
        self._lock = threading.Lock()
        self._guards: dict[int, ThreadGuard] = {}
        self._helper: _Helper | None = None

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return 0 if self._busy else 1

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> bool:
        self._busy = True
        try:
            limits = self.runner.limits(message)
            if limits[0]:
                outcome = self._on_helper(job_id, message, delivery_info)
            else:
                outcome = run_guarded(self.runner, self._guards, self._lock, job_id, message,
                                      delivery_info, limits=limits)
        finally:
            self._busy = False
        if outcome is not None:
            self.on_done(job_id, outcome)
        return True

    def _on_helper(self, job_id: int, message: Any, delivery_info: dict) -> Outcome | None:
        if self._helper is None or self._helper.given_up:
            self._helper = _Helper(self)
        return self._helper.run(job_id, message, delivery_info)

    def terminate(self, job_id: int, signum: int) -> bool:
        return terminate_guarded(self._guards, self._lock, job_id)

    def stop(self, wait: bool = True) -> None:
        if self._helper is not None:
            self._helper.stop()


class _Helper:
    """The solo pool's thread for tasks with a hard time limit: one job at a time, handed over
    by the dispatching thread, which waits for its outcome or for the limit to pass."""

    def __init__(self, pool: SoloPool) -> None:
        self.pool = pool
        self.given_up = False
        self._jobs: "queue.SimpleQueue[tuple | None]" = queue.SimpleQueue()
        self._outcomes: "queue.SimpleQueue[Outcome | BaseException]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="celeriac-solo-limited",
                                        daemon=True)
        self._thread.start()

    def run(self, job_id: int, message: Any, delivery_info: dict) -> Outcome:
        self._jobs.put((job_id, message, delivery_info))
        answer = self._outcomes.get()
        if isinstance(answer, BaseException):  # a bug: it surfaces as if the job ran inline
            raise answer
        return answer

    def _give_up(self, job_id: int, message: Any, hard: float) -> None:
        self.given_up = True
        self._outcomes.put(time_limit_outcome(message, hard))

    def _loop(self) -> None:
        pool = self.pool
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job_id, message, delivery_info = job
            try:
                outcome = run_guarded(pool.runner, pool._guards, pool._lock, job_id, message,
                                      delivery_info, self._give_up)
            except BaseException as exc:  # noqa: BLE001 - handed to the dispatching thread
                self._outcomes.put(exc)
                continue
            if outcome is None:  # given up at its hard time limit: _give_up answered
                logger.warning("The solo pool's thread given up on at its hard time limit "
                               "(task %s) got control back and leaves",
                               message.headers.get("id"))
                return
            self._outcomes.put(outcome)

    def stop(self) -> None:
        self._jobs.put(None)
