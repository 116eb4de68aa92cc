"""Waiting on a condition instead of sleeping a fixed time: the one polling helper the tests share.

A fixed ``time.sleep(n)`` followed by a look is both slow (it always waits ``n``) and flaky (on a
loaded machine ``n`` is sometimes too short). Wait for the condition itself, with a deadline:

    wait_for(lambda: path.exists(), 20, message=f"{path} was never written")

For something that must NOT happen, do not sleep either: make the system provably finish what
came before (a later marker task's result, a warm shutdown, the broker holding nothing), then
assert.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar, Union

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.02,
             message: Union[str, Callable[[], str]] = "condition not met") -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    The predicate is always evaluated once more at or after the deadline, so waiting never gives
    up earlier than ``time.sleep(timeout)`` followed by one look would. On timeout an
    ``AssertionError`` is raised with ``message`` (a string, or a callable evaluated only then,
    e.g. to include a log that is only worth reading on failure). An exception the predicate
    raises propagates at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout}s)")
        time.sleep(min(interval, remaining))
