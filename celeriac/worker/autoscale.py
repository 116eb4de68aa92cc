"""``--autoscale=MAX,MIN``: the pool grows while tasks wait for a slot and shrinks back when its
slots stay idle.

Layer: worker (main process). Celery's semantics: the pool starts with MIN slots; the demand is
the number of tasks the worker holds for the pool (running, plus waiting in the prefetch buffer);
the pool grows at once to ``min(demand, MAX)`` and, once the demand has stayed below its size for
``keepalive`` seconds (Celery's ``AUTOSCALE_KEEPALIVE`` environment variable, 30 by default), it
shrinks to ``max(demand, MIN)``. Shrinking retires idle threads or children only, never one that
runs a task. The prefetch window follows the size (multiplier x slots), with room for one more
message while the pool may still grow, so waiting work can be seen.

One thread decides, a few times a second; the pool does the growing and shrinking
(``grow(n)``, ``shrink(n)`` on the prefork and threads pools). ``worker_autoscaler`` may name a
subclass of ``Autoscaler`` (``"proj.scaling:MyAutoscaler"``) to decide differently.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from typing import Any, Callable, Mapping

from ..exceptions import ImproperlyConfigured

logger = logging.getLogger("celeriac.worker")

#: seconds the demand must stay below the pool's size before it shrinks (Celery's default)
DEFAULT_KEEPALIVE = 30.0
#: seconds between two looks at the demand
INTERVAL = 0.25
#: the ``worker_autoscaler`` values that mean this module's ``Autoscaler``
BUILT_IN_NAMES = frozenset({"celery.worker.autoscale:Autoscaler",
                            "celery.worker.autoscale.Autoscaler",
                            "celeriac.worker.autoscale:Autoscaler",
                            "celeriac.worker.autoscale.Autoscaler"})
#: the pools that can change size
SCALABLE_POOLS = ("prefork", "processes", "process", "threads")


def parse_autoscale(value: Any) -> tuple[int, int] | None:
    """``(max, min)`` from ``--autoscale``'s value, as Celery reads it: ``"10,3"`` (either order:
    the larger is the maximum), ``"10"`` (a minimum of 0), or a pair of ints. None: not asked."""
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        parts = [value]
    try:
        if not 1 <= len(parts) <= 2:
            raise ValueError
        numbers = [int(part) for part in parts]
        if any(isinstance(part, float) and part != int(part) for part in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"--autoscale={_shown(value)}: expected MAX,MIN (two whole numbers, e.g. "
            f"--autoscale=10,3) or MAX alone (a minimum of 0)") from None
    high, low = (max(numbers), min(numbers)) if len(numbers) == 2 else (numbers[0], 0)
    if low < 0 or high < 1:
        raise ImproperlyConfigured(
            f"--autoscale={_shown(value)}: the maximum must be at least 1 and the minimum at "
            f"least 0 (e.g. --autoscale=10,3)")
    return high, low


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(part) for part in value)
    return str(value)


def keepalive_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """Celery's ``AUTOSCALE_KEEPALIVE``: seconds of low demand before the pool shrinks."""
    raw = environ.get("AUTOSCALE_KEEPALIVE")
    if raw is None or not raw.strip():
        return DEFAULT_KEEPALIVE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ImproperlyConfigured(
            f"AUTOSCALE_KEEPALIVE={raw!r}: expected a number of seconds > 0 (how long the pool "
            f"keeps idle slots before it shrinks; unset it for {DEFAULT_KEEPALIVE:g})")
    return seconds


def plan(size: int, demand: int, low: int, high: int, surplus_for: float | None,
         keepalive: float) -> int:
    """How many slots to add (> 0) or retire (< 0) now, or 0.

    ``size``: the pool's slots; ``demand``: tasks running or waiting for it; ``surplus_for``:
    seconds the demand has stayed below ``size`` (None: it is not below).
    """
    wanted = max(min(demand, high), low)
    if wanted > size:
        return wanted - size
    if size > high:  # the maximum was lowered (update): no waiting for the keepalive
        return wanted - size
    if wanted < size and surplus_for is not None and surplus_for >= keepalive:
        return wanted - size
    return 0


class Autoscaler:
    """Grows and shrinks one pool by its demand; Celery's names (``max_concurrency``,
    ``min_concurrency``, ``keepalive``, ``qty``, ``processes``, ``maybe_scale``, ``update``,
    ``info``) so a subclass reads as one written for Celery would."""

    def __init__(self, pool: Any, consumer: Any, max_concurrency: int,
                 min_concurrency: int = 0, *, keepalive: float | None = None,
                 interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.consumer = consumer
        self.max_concurrency = max_concurrency
        self.min_concurrency = min_concurrency
        self.keepalive = keepalive_from_env() if keepalive is None else keepalive
        self.interval = interval
        self.clock = clock
        self.mutex = threading.Lock()
        self._surplus_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what it looks at ------------------------------------------------------------------------
    @property
    def qty(self) -> int:
        """Tasks for the pool: running in it or waiting for a slot."""
        return int(self.consumer.pool_demand())

    @property
    def processes(self) -> int:
        """The pool's current size (threads or child processes taking tasks)."""
        return int(self.pool.limit)

    # ---- deciding --------------------------------------------------------------------------------
    def maybe_scale(self) -> bool:
        """Look at the demand once and grow or shrink the pool; True when its size changed."""
        with self.mutex:
            size, demand = self.processes, self.qty
            now = self.clock()
            if demand >= size:
                self._surplus_since = None
            elif self._surplus_since is None:
                self._surplus_since = now
            surplus_for = None if self._surplus_since is None else now - self._surplus_since
            change = plan(size, demand, self.min_concurrency, self.max_concurrency,
                          surplus_for, self.keepalive)
            if change > 0:
                return self.scale_up(change) > 0
            if change < 0:
                return self.scale_down(-change) > 0
            return False

    def scale_up(self, n: int) -> int:
        added = int(self.pool.grow(n))
        if added:
            self._changed()
            logger.info("Autoscale: pool grown by %d to %d (%d task(s) running or waiting; "
                        "max %d)", added, self.processes, self.qty, self.max_concurrency)
        return added

    def scale_down(self, n: int) -> int:
        retired = int(self.pool.shrink(n))
        if retired:
            self._changed()
            logger.info("Autoscale: pool shrunk by %d to %d (idle slots for %gs or more; min %d)",
                        retired, self.processes, self.keepalive, self.min_concurrency)
        return retired

    def _changed(self) -> None:
        self._surplus_since = None
        self.follow_size()

    def follow_size(self) -> None:
        """The prefetch window follows the pool's size (room for one more while it may grow)."""
        size = self.processes
        self.consumer.resize_window(size, room_to_grow=size < self.max_concurrency)

    def update(self, max: int | None = None, min: int | None = None) -> tuple[int, int]:
        """New bounds (Celery's ``autoscaler.update``); the pool follows at the next look."""
        with self.mutex:
            if max is not None:
                self.max_concurrency = max
            if min is not None:
                self.min_concurrency = min
            self.follow_size()
            return self.max_concurrency, self.min_concurrency

    def info(self) -> dict[str, int | float]:
        return {"max": self.max_concurrency, "min": self.min_concurrency,
                "current": self.processes, "qty": self.qty, "keepalive": self.keepalive}

    # ---- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self.follow_size()
        self._thread = threading.Thread(target=self._run, name="celeriac-autoscale", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.maybe_scale()
            except Exception:
                logger.exception("autoscale: could not resize the pool; trying again")


def autoscaler_class(conf: Mapping[str, Any]) -> type[Autoscaler]:
    """The class ``worker_autoscaler`` names: Celery's default means ``Autoscaler``; anything
    else must be a subclass of it, as ``"module:Class"``."""
    name = conf.get("worker_autoscaler")
    if not name or name in BUILT_IN_NAMES:
        return Autoscaler
    if isinstance(name, type):
        found: Any = name
    else:
        module_name, _, attr = str(name).replace(":", ".").rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"worker_autoscaler={name!r}: cannot import it ({exc}); name a subclass of "
                f"celeriac.worker.autoscale.Autoscaler as 'module:Class'") from None
    if not (isinstance(found, type) and issubclass(found, Autoscaler)):
        raise ImproperlyConfigured(
            f"worker_autoscaler={name!r} is not a subclass of "
            f"celeriac.worker.autoscale.Autoscaler (celeriac's pools grow and shrink through it)")
    return found
