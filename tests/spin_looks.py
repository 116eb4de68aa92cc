"""Counting a thread's looks (``utils.spin.look_until``'s pauses) while it waits: whether a wait
polled before it slept, read without timing anything (a look yields the CPU, so on a busy
machine a waiter that polls may get little CPU, but it still looks many times)."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from celeriac.utils import spin

#: pauses between looks a wait that polled for a while makes at least (each pause yields the
#: CPU: a few microseconds on an idle machine, a scheduler slice on a loaded one)
LOOKED = 5


class Looks:
    """How many pauses between looks the thread that made this has taken so far."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._thread = threading.get_ident()
        real: Callable[[], Any] = spin._pause

        def counted() -> Any:
            if threading.get_ident() == self._thread:
                self.count += 1
            return real()

        monkeypatch.setattr(spin, "_pause", counted)

    def during(self, wait: Callable[[], Any]) -> int:
        """The pauses this thread took in ``wait()``."""
        before = self.count
        wait()
        return self.count - before
