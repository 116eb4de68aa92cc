"""A stand-in for a shared per-thread connection, for the in-process broker and result store.

Layer: utils (used by ``transport/memory`` and ``backends/memory``). Redis lets the worker stage
a result write and an ack on one thread's connection and send them in one round trip; the memory
transport and store opened on the same ``memory://name`` share a ``MemoryWire`` so the worker's
inline settling runs (and is unit-tested) without Redis. Staged actions run, in order, at the
thread's next ``flush``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol, runtime_checkable

from .registry import NamedRegistry


class MemoryWire:
    """Each thread's staged actions, run in the order they were staged."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _staged(self) -> list[Callable[[], Any]]:
        staged = getattr(self._local, "staged", None)
        if staged is None:
            staged = self._local.staged = []
        return staged

    def stage(self, action: Callable[[], Any]) -> None:
        self._staged().append(action)

    @property
    def pending(self) -> int:
        return len(self._staged())

    def flush(self) -> None:
        """Run what this thread staged; an action that raises stays staged with those after it
        (as a round trip that failed is sent again)."""
        staged = self._staged()
        while staged:
            staged[0]()
            staged.pop(0)


@runtime_checkable
class OnMemoryWire(Protocol):
    """A memory broker or result store, and the wire its name shares."""

    def memory_wire(self) -> MemoryWire: ...


_WIRES: NamedRegistry[MemoryWire] = NamedRegistry(MemoryWire)
wire_for = _WIRES.get
