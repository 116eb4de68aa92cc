"""Named in-process state shared by every object opened on the same ``memory://name`` URL.

Layer: utils. The memory transport and the memory result store both keep one state object per
name, so a producer app and a worker app in one process see the same queues and results.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class NamedRegistry(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> T:
        with self._lock:
            item = self._items.get(name)
            if item is None:
                item = self._items[name] = self._factory()
            return item

    def reset(self, name: str | None = None) -> None:
        """Forget ``name`` (every name when None); objects already open keep the old, now
        private, state."""
        with self._lock:
            if name is None:
                self._items.clear()
            else:
                self._items.pop(name, None)
