"""Fork detection, in one place: what a process made is not its forked child's to use.

Layer: utils (imports nothing of ours). A child must not use the sockets, SQLite handles,
listener threads or random salts its parent made. The check compares ``os.getpid()`` with the
pid that made the thing, on every use, instead of relying on ``os.register_at_fork``: servers such
as uWSGI (without ``py-call-osafterfork``) fork in C, and Python's at-fork hooks never run there.
A ``getpid`` is a system call (glibc has not cached the pid since 2.25): a few hundred
nanoseconds on this project's VMs, so hot paths that run per task or per event check a counter
bumped at fork where they can instead.

Two shapes:

- ``PidGuard``: an object that owns connections keeps one and, when ``forked()`` says so, drops
  what the parent made and calls ``adopt()``;
- ``ForkLocal``: a value built by a factory, built again on first use in each process (a
  module's per-process state: a salt, a thread-local table of connections, a name with the pid).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ForkLocal", "PidGuard"]

T = TypeVar("T")

_getpid = os.getpid


class PidGuard:
    """Remembers the process that made (or last adopted) an object's resources."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = _getpid()

    def forked(self) -> bool:
        """True in any process other than the one that made or last adopted the resources."""
        return self.pid != _getpid()

    def adopt(self) -> None:
        """The resources are this process's now (call after replacing the parent's)."""
        self.pid = _getpid()

    def __repr__(self) -> str:
        return f"<PidGuard pid={self.pid}>"


class ForkLocal(Generic[T]):
    """A value of this process: ``factory()`` runs on the first ``get()`` in each process.

    A forked child's first ``get()`` builds its own value; the parent's stays the parent's (it is
    neither closed nor reused). Two threads of a new child may both build one; one of them wins.
    """

    __slots__ = ("_factory", "_pid", "_value")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._pid = 0  # no process has pid 0: the first get() builds
        self._value: T | None = None

    def get(self) -> T:
        """This process's value, built now if this process has none yet."""
        pid = _getpid()
        if self._pid != pid:
            self._value = self._factory()
            self._pid = pid
        return self._value  # type: ignore[return-value]  # set by the factory above

    def existing(self) -> T | None:
        """This process's value if one was built here already, else None (never builds)."""
        return self._value if self._pid == _getpid() else None

    def __repr__(self) -> str:
        return f"<ForkLocal of {getattr(self._factory, '__qualname__', self._factory)!r}>"
