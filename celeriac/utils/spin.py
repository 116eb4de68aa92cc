"""Looking before sleeping: a wait that polls for a short while before it blocks.

Layer: utils (imports nothing of ours). On a virtual machine a thread that blocked hands its CPU
back, and waking an idle CPU again takes longer than a short task takes to run (on the benchmark
machine, a few hundred microseconds a wake-up in its slow spells). A waiter that expects its
news soon polls its descriptor instead, yielding the CPU between looks, for a bounded time.

Three waits look so. A prefork child waiting for its next job looks by default (0.5 ms, while
its jobs come within 2 ms of each other: ``worker/pools/processes.py``). Two are off unless
asked for: ``get()`` waiting for a result (``result_backend_transport_options["wait_spin"]``)
and a worker's fetch waiting for messages (``broker_transport_options["wait_spin"]``), on Redis
and SQLite. Off, because a looking thread also takes CPU the other processes of a small machine
need: on the benchmark machine (2 cores) looking shortened noop round trips in one slow spell
and lengthened them in another.

``AdaptiveSpin`` keeps that CPU for waits that are short: a wait looks only if the previous one
was over within the spin, so a waiter whose news comes late (a long task, an idle queue) sleeps
at once after its first long wait, and looks again once a wait was short.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, TypeVar

__all__ = ["AdaptiveSpin", "look_until", "spin_seconds"]

T = TypeVar("T")

_clock = time.perf_counter
#: gives the CPU to another runnable thread now, if one waits for it
_pause = getattr(os, "sched_yield", lambda: time.sleep(0))


def spin_seconds(value: Any, option: str) -> float:
    """An option giving seconds to poll, as a float from 0 to 1 (a number, or numeric text as
    from an environment variable); anything else raises ValueError naming ``option``."""
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 <= seconds <= 1:  # also refuses NaN
        raise ValueError(f"{option} must be a number of seconds from 0 to 1, not {value!r}")
    return seconds


def look_until(ready: Callable[[], T], until: float) -> T | None:
    """Call ``ready()`` until it returns something truthy (returned) or the
    ``time.perf_counter`` time ``until`` has passed (None), yielding the CPU between calls."""
    while _clock() < until:
        found = ready()
        if found:
            return found
        _pause()
    return None


class AdaptiveSpin:
    """How long the next wait of one waiter polls before it sleeps: ``seconds``, if its last
    wait was over within ``within`` seconds (by default ``seconds``), else 0. Not locked:
    waiters that share one may each see the other's last wait, which only moves a look from
    one to the other."""

    __slots__ = ("seconds", "within", "_looks")

    def __init__(self, seconds: float, within: float | None = None) -> None:
        self.seconds = seconds
        self.within = seconds if within is None else within
        self._looks = True

    def begin(self) -> tuple[float, float]:
        """(the ``time.perf_counter`` time this wait may poll until, 0.0 for none; its start)."""
        began = _clock()
        return (began + self.seconds if self._looks and self.seconds else 0.0), began

    def end(self, began: float) -> None:
        """The wait that ``begin`` started is over."""
        self._looks = _clock() - began <= self.within
