"""A Lamport clock: the logical time Celery's events and remote-control messages carry.

Layer: utils (imports nothing of ours). Each node keeps one (``app.clock``): it ticks once per
event sent and, when the node hears another node's clock (an event it receives, a pidbox
message's ``clock`` header), jumps past it, so "happened before" across nodes is kept by the
values even when wall clocks disagree. Monitors (Celery's ``events.state``, Flower) order a
task's events by it.
"""

from __future__ import annotations

import threading

__all__ = ["LamportClock"]


class LamportClock:
    """A thread-safe Lamport clock with Celery's ``forward`` / ``adjust`` names."""

    __slots__ = ("_lock", "value")

    def __init__(self, initial_value: int = 0) -> None:
        self.value = int(initial_value)
        self._lock = threading.Lock()

    def forward(self, count: int = 1) -> int:
        """Tick for an event this node sends (``count`` ticks for as many events, taken
        together); returns the new value, the last event's."""
        with self._lock:
            self.value += count
            return self.value

    def adjust(self, other: int) -> int:
        """Another node said ``other``: move past it (``max(ours, other) + 1``)."""
        with self._lock:
            self.value = max(self.value, int(other)) + 1
            return self.value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<LamportClock: {self.value}>"
