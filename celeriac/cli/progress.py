"""``celeriac dispatch progress``: a live progress bar for one dispatch, drawn from the ``PROGRESS``
meta its main task stores, until the main task is ready.

Layer: cli. Reads only the app's result store (the main task's own result document), polling it
every ``interval`` seconds: the main task stores its progress at most a few times a second, so
nothing faster is needed. On a terminal the bar is redrawn in place; otherwise (a pipe, a log)
each change is printed on a line of its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import states
from ..dispatch import PROGRESS

BAR_WIDTH = 30


def remaining_text(seconds: Any) -> str:
    """``time_remaining`` as people read it (``-1``, its "not known yet", included)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return "? left"
    if value < 0 or not math.isfinite(value):
        return "? left"
    whole = int(round(value))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d} left"


def progress_line(meta: dict[str, Any]) -> str:
    """One line for a main task's stored meta: the bar while it reports ``PROGRESS``, else what
    state it is in."""
    state = meta.get("status")
    info = meta.get("result")
    if state != PROGRESS or not isinstance(info, dict):
        if state == states.PENDING:
            return "PENDING (not started, or no such task in this result store)"
        return str(state)
    done = int(info.get("completed_count") or 0)
    total = int(info.get("total_count") or 0)
    percent = float(info.get("progress_percent") or 0.0)
    filled = min(BAR_WIDTH, int(BAR_WIDTH * percent / 100))
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return (f"[{bar}] {done}/{total} {percent:5.1f}%  "
            f"{remaining_text(info.get('time_remaining'))}")


@dataclass
class Watch:
    """Draws one dispatch's progress until its main task is ready."""

    read: Callable[[], dict[str, Any]]  # the main task's meta, fresh from the store
    echo: Callable[[str, bool], None]  # (text, newline)
    interactive: bool  # a terminal: redraw in place
    interval: float = 0.5
    timeout: float | None = None

    def run(self) -> dict[str, Any] | None:
        """The main task's final meta, or None when ``timeout`` passed first."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        shown = ""
        width = 0
        while True:
            meta = self.read()
            if meta.get("status") in states.READY_STATES:
                if self.interactive and width:
                    self.echo("", True)  # leave the last bar on screen
                return meta
            line = progress_line(meta)
            if line != shown:
                if self.interactive:
                    self.echo("\r" + line.ljust(width), False)
                    width = max(width, len(line))
                else:
                    self.echo(line, True)
                shown = line
            if deadline is not None and time.monotonic() >= deadline:
                if self.interactive and width:
                    self.echo("", True)
                return None
            pause = self.interval if deadline is None else min(
                self.interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
