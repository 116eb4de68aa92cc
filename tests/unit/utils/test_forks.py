"""Fork detection (utils/forks.py): a forked child sees that it forked, also when the fork skipped
Python's at-fork hooks (as servers that fork in C do), and builds its own per-process values."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
from typing import Any, Callable

import pytest

from celeriac.utils.forks import ForkLocal, PidGuard

# PyDLL keeps the GIL through the call (with CDLL, a thread of pytest-xdist may hold it at the
# fork, and the child would wait for it forever)
FORKS = {"os.fork": os.fork, "libc fork": lambda: ctypes.PyDLL(None, use_errno=True).fork()}


def _in_child(fork: Callable[[], int], probe: Callable[[], Any]) -> Any:
    """What ``probe()`` returns in a child made with ``fork`` (sent back as JSON)."""
    read, write = os.pipe()
    child = fork()
    if child == 0:  # the child reports, then leaves at once (no pytest teardown in here)
        try:
            os.close(read)
            os.write(write, json.dumps(probe()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as reader:
        text = reader.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text, "the child reported nothing"
    return json.loads(text)


@pytest.mark.parametrize("how", FORKS)
def test_a_guard_says_forked_in_the_child_until_the_child_adopts(how: str) -> None:
    guard = PidGuard()
    assert not guard.forked()

    def probe() -> list[bool]:
        before = guard.forked()
        guard.adopt()
        return [before, guard.forked(), guard.pid == os.getpid()]

    assert _in_child(FORKS[how], probe) == [True, False, True]
    assert not guard.forked() and guard.pid == os.getpid()  # the parent's guard is untouched


@pytest.mark.parametrize("how", FORKS)
def test_a_fork_local_value_is_built_again_in_the_child(how: str) -> None:
    counter = itertools.count(1)
    value: ForkLocal[int] = ForkLocal(lambda: next(counter))
    assert value.existing() is None  # built lazily, on the first get()
    assert value.get() == 1 and value.get() == 1 and value.existing() == 1

    def probe() -> list[Any]:
        return [value.existing(), value.get(), value.get(), value.existing()]

    assert _in_child(FORKS[how], probe) == [None, 2, 2, 2]
    assert value.get() == 1  # the parent keeps its own
