"""The asyncio pool: ``async def`` tasks run concurrently on one event loop in a worker thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..outcome import Outcome
from . import OnDone


class AsyncioPool:
    """Up to ``limit`` coroutines at once on a private loop; sync tasks run in the loop's
    executor."""

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone) -> None:
        self.runner = runner  # runner.run_async(message, delivery_info) -> coroutine
        self.limit = max(1, concurrency)
        self.on_done = on_done
        self._busy = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="celeriac-asyncio",
                                        daemon=True)
        self._idle = threading.Condition(self._lock)
        self._futures: dict[int, Any] = {}

    def start(self) -> None:
        self._thread.start()

    def free_slots(self) -> int:
        with self._lock:
            return self.limit - self._busy

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> bool:
        with self._lock:
            self._busy += 1
            self._futures[job_id] = asyncio.run_coroutine_threadsafe(
                self._run(job_id, message, delivery_info), self._loop)
        return True

    async def _run(self, job_id: int, message: Any, delivery_info: dict) -> None:
        try:
            outcome = await self.runner.run_async(message, delivery_info)
        except asyncio.CancelledError:  # revoked with terminate=True
            outcome = Outcome.terminated(message.headers.get("id") or "?")
        finally:
            with self._lock:
                self._busy -= 1
                self._futures.pop(job_id, None)
                self._idle.notify_all()
        self.on_done(job_id, outcome)

    def terminate(self, job_id: int, signum: int) -> bool:
        """Cancel the task's coroutine at its current await."""
        with self._lock:
            future = self._futures.get(job_id)
        return future is not None and future.cancel()

    def stop(self, wait: bool = True) -> None:
        if wait:
            with self._lock:
                while self._busy:
                    self._idle.wait(0.1)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()
