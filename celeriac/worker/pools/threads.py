"""Thread pool and solo pool: tasks run in this process (threads share the app's connections)."""

from __future__ import annotations

import queue
import threading
from typing import Any

from ... import states
from ...exceptions import SoftTimeLimitExceeded
from ..limits import Terminated, ThreadGuard
from ..outcome import Ending, Outcome
from . import OnDone


def run_guarded(runner: Any, guards: dict, lock: threading.Lock, job_id: int, message: Any,
                delivery_info: dict) -> Outcome:
    """Run one job in this thread with its soft time limit and terminate hook in place."""
    _, soft = runner.limits(message)
    guard = ThreadGuard(soft)
    with lock:
        guards[job_id] = guard
    try:
        try:
            return runner(message, delivery_info)
        finally:
            guard.finish()
            with lock:
                guards.pop(job_id, None)
    except Terminated:
        return Outcome.terminated(message.headers.get("id") or "?")
    except SoftTimeLimitExceeded:  # landed after the task returned: nothing left to stop
        return Outcome(message.headers.get("id") or "?", states.FAILURE, Ending.FAILED,
                       exc_repr="SoftTimeLimitExceeded()")


def terminate_guarded(guards: dict, lock: threading.Lock, job_id: int) -> bool:
    with lock:
        guard = guards.get(job_id)
    return guard is not None and guard.interrupt(Terminated)


class ThreadPool:
    """N worker threads taking jobs from one queue: an idle thread always takes the next job."""

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone) -> None:
        self.runner = runner
        self.limit = max(1, concurrency)
        self.on_done = on_done
        self._jobs: "queue.SimpleQueue[tuple | None]" = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._guards: dict[int, ThreadGuard] = {}

    def start(self) -> None:
        for i in range(self.limit):
            t = threading.Thread(target=self._loop, name=f"celeriac-pool-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def free_slots(self) -> int:
        with self._lock:
            return self.limit - self._busy

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> bool:
        with self._lock:
            self._busy += 1
        self._jobs.put((job_id, message, delivery_info))
        return True

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job_id, message, delivery_info = job
            try:
                outcome = run_guarded(self.runner, self._guards, self._lock, job_id, message,
                                      delivery_info)
            finally:
                with self._lock:
                    self._busy -= 1
            self.on_done(job_id, outcome)

    def terminate(self, job_id: int, signum: int) -> bool:
        """Threads cannot take signals: the task gets an exception raised in its thread."""
        return terminate_guarded(self._guards, self._lock, job_id)

    def stop(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for t in self._threads:
                t.join()


class SoloPool:
    """Runs each task inline in the dispatching thread: one at a time, no concurrency."""

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone) -> None:
        self.runner = runner
        self.limit = 1
        self.on_done = on_done
        self._busy = False
        self._lock = threading.Lock()
        self._guards: dict[int, ThreadGuard] = {}

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return 0 if self._busy else 1

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> bool:
        self._busy = True
        try:
            outcome = run_guarded(self.runner, self._guards, self._lock, job_id, message,
                                  delivery_info)
        finally:
            self._busy = False
        self.on_done(job_id, outcome)
        return True

    def terminate(self, job_id: int, signum: int) -> bool:
        return terminate_guarded(self._guards, self._lock, job_id)

    def stop(self, wait: bool = True) -> None:
        pass
