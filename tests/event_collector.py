"""``Collector``: every event a broker carries, gathered by a celeriac ``EventReceiver`` in a
thread started before the worker (shared by the unit and integration event tests)."""

from __future__ import annotations

import threading
from typing import Any

from celeriac.events import EventReceiver
from tests.waiting import wait_for


class Collector:
    """Every event on the app's broker, from a receiver subscribed before the worker starts."""

    def __init__(self, app: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.receiver = EventReceiver(app, {"*": self._add}).subscribe()
        self._thread = threading.Thread(target=self.receiver.capture, daemon=True)
        self._thread.start()

    def _add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("uuid") == task_id]

    def types(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.of(task_id)]

    def kinds(self) -> list[str]:
        with self._lock:
            return [e["type"] for e in self.events]

    def worker_events(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["type"] == kind]

    def wait_types(self, task_id: str, expected: list[str], timeout: float = 10.0) -> None:
        wait_for(lambda: self.types(task_id) == expected, timeout,
                 message=lambda: f"{task_id}: {self.types(task_id)} != {expected}")

    def close(self) -> None:
        self.receiver.stop()
        self._thread.join(5)
        self.receiver.close()
