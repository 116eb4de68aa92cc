"""Thread pool and solo pool: tasks run in this process (threads share the app's connections)."""

from __future__ import annotations

import queue
import threading
from typing import Any

from . import OnDone


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

    def start(self) -> None:
        for i in range(self.limit):
            t = threading.Thread(target=self._loop, name=f"celeriac-pool-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def free_slots(self) -> int:
        with self._lock:
            return self.limit - self._busy

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> None:
        with self._lock:
            self._busy += 1
        self._jobs.put((job_id, message, delivery_info))

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job_id, message, delivery_info = job
            try:
                outcome = self.runner(message, delivery_info)
            finally:
                with self._lock:
                    self._busy -= 1
            self.on_done(job_id, outcome)

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

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return 0 if self._busy else 1

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> None:
        self._busy = True
        try:
            outcome = self.runner(message, delivery_info)
        finally:
            self._busy = False
        self.on_done(job_id, outcome)

    def stop(self, wait: bool = True) -> None:
        pass
