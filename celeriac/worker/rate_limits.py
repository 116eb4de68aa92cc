"""The worker's side of ``rate_limit``: a built-in extension that holds a rate for every worker
together.

Layer: worker. Just before a held job goes to the pool (``before_run``), a call of a
rate-limited task asks the result store's bucket for its task (``RateLimits.rate_take``, one
atomic step on the store's clock). Granted, it runs. Otherwise the store has reserved a slot
for it under its task id, and its message goes back to the broker until then (deferred, like an
ETA message): waiting calls hold neither memory, nor a prefetch slot, nor a pool slot, and when
the message comes back at its slot the call runs without contending again.

A high rate would cost a store round trip per call even when it never binds, so the worker
asks for a block of slots at once: as many as the rate fits in ``RATE_HORIZON`` (50 ms; one
at 20/s or less, where nothing changes). The store grants the free ones among them (those
within the horizon), and the worker hands them out to its next calls of that task for at most
``RATE_HORIZON`` seconds, then drops what is left (only throughput lost). So across every
worker a task never starts more often than its rate allows over any window, give or take one
horizon's worth of slots, and a binding rate still defers each call to a slot reserved for it.

The rate of a task: a run-time override (``app.control.rate_limit``, read from the store every
``REFRESH_INTERVAL`` seconds by a background thread), else ``task.rate_limit``, else
``task_default_rate_limit``. A call of a task without a rate costs one dictionary look-up.
Batch tasks are left out (a batch runs many requests in one call); ``runs_outside_pool`` main
tasks are limited like any task (each start, a resume included, takes a slot).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping

from ..exceptions import ImproperlyConfigured
from ..rates import interval_of, rate_store, read_overrides
from .admission import Decision, Verdict
from .extensions import WorkerExtension

if TYPE_CHECKING:
    from ..app import Celery
    from ..backends.base import RateLimits
    from .consumer import Consumer
    from .job import Job

logger = logging.getLogger("celeriac.worker")

#: seconds between two reads of the run-time overrides
REFRESH_INTERVAL = 1.0
#: seconds a call waits before trying again when the result store could not be asked
STORE_RETRY_DELAY = 1.0
#: seconds of slots a worker takes from the store at once, and how long it may hand them out
RATE_HORIZON = 0.05


def block_size(interval: float) -> int:
    """How many slots to ask the store for at once: as many as ``RATE_HORIZON`` holds at one
    slot every ``interval`` seconds, at least 1."""
    return max(1, int(RATE_HORIZON / interval + 1e-9))


class _Block:
    """Slots this worker was granted for one task, handed out locally until ``until``
    (``time.monotonic()``) or until none is left."""

    __slots__ = ("interval", "left", "until")

    def __init__(self, interval: float, left: int, until: float) -> None:
        self.interval = interval
        self.left = left
        self.until = until


def declared_rates(app: Celery) -> dict[str, Any]:
    """Task name -> the rate it declares (``rate_limit``, else ``task_default_rate_limit``),
    for every task that has one, batch tasks included."""
    default = app.conf.get("task_default_rate_limit")
    rates = {}
    for name, task in app.tasks.items():
        rate = getattr(task, "rate_limit", None)
        rate = default if rate is None else rate
        if rate not in (None, "", 0):
            rates[name] = rate
    return rates


def check_rate_limits(app: Celery) -> None:
    """At worker start, before anything connects or forks: every declared rate parses, and the
    result store can keep them. One ImproperlyConfigured line otherwise."""
    if app.conf.get("worker_disable_rate_limits"):
        return
    default = app.conf.get("task_default_rate_limit")
    try:
        interval_of(default, "task_default_rate_limit")
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    limited = []
    for name, rate in sorted(declared_rates(app).items()):
        try:
            interval = interval_of(rate, f"task {name}: rate_limit")
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        if interval is not None and not getattr(app.tasks[name], "collects_requests", False):
            limited.append((name, rate))
    if limited:
        name, rate = limited[0]
        rate_store(app, f"task {name} (rate_limit={rate!r})")


def effective_intervals(app: Celery, overrides: Mapping[str, str]) -> dict[str, float]:
    """Task name -> seconds between two of its calls, for the tasks this worker limits: the
    override if there is one, else the declared rate; batch tasks never. A bad override (not
    written by ``app.control.rate_limit``) is logged and skipped."""
    intervals: dict[str, float] = {}
    declared = declared_rates(app)
    for name, task in app.tasks.items():
        if getattr(task, "collects_requests", False):
            continue
        rate = overrides.get(name, declared.get(name))
        try:
            interval = interval_of(rate, f"task {name}: rate_limit")
        except ValueError as exc:
            logger.error("%s (a run-time override: it is ignored)", exc)
            interval = interval_of(declared.get(name))
        if interval is not None:
            intervals[name] = interval
    return intervals


class RateLimiting(WorkerExtension):
    """Built in: ``rate_limit`` for every worker together, through the result store."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.store: RateLimits | None = None
        #: task name -> seconds between two calls; replaced whole, never changed in place
        self._intervals: dict[str, float] = {}
        self._overrides: dict[str, str] = {}
        #: task name -> the slots granted for it and not handed out yet
        self._blocks: dict[str, _Block] = {}
        self._blocks_lock = threading.Lock()
        self._stop = threading.Event()

    def on_worker_start(self, consumer: Consumer) -> None:
        app = self.app
        declared = declared_rates(app)
        if app.conf.get("worker_disable_rate_limits"):
            if declared:
                logger.info("worker_disable_rate_limits is on: rate limits are not applied")
            return
        skipped = sorted(name for name in declared
                         if getattr(app.tasks[name], "collects_requests", False))
        if skipped:
            logger.warning("rate_limit is not applied to batch tasks (a batch runs many "
                           "requests in one call; flush_every and flush_interval pace it): %s",
                           ", ".join(skipped))
        try:
            self.store = rate_store(app, "rate limits")
        except ImproperlyConfigured:
            return  # check_rate_limits refused any declared rate already; nothing to hold
        self._refresh(first=True)
        threading.Thread(target=self._refresh_loop, name="celeriac-rate-limits",
                         daemon=True).start()

    def on_worker_stop(self, consumer: Consumer) -> None:
        self._stop.set()

    def before_run(self, job: Job) -> Decision | None:
        intervals = self._intervals
        if not intervals:
            return None
        name = job.task.name
        interval = intervals.get(name)
        if interval is None or self.store is None:
            return None
        with self._blocks_lock:
            block = self._blocks.get(name)
            if block is not None and block.left and block.interval == interval and \
                    time.monotonic() < block.until:
                block.left -= 1
                return None
        count = block_size(interval)
        asked = time.monotonic()
        try:
            wait, slots = self.store.rate_take(name, interval, job.task_id, count)
        except Exception as exc:
            logger.error("Task %s: could not ask the result store for its rate limit (%s); "
                         "trying again in %.0f s", job.task_id, exc, STORE_RETRY_DELAY)
            return Decision(Verdict.DEFER, "rate limit: result store unreachable",
                            not_before=time.time() + STORE_RETRY_DELAY)
        if slots > 1:
            with self._blocks_lock:
                self._blocks[name] = _Block(interval, slots - 1, asked + RATE_HORIZON)
        if wait <= 0:
            return None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Task %s[%s]: rate limit, its slot comes in %.3f s", name,
                         job.task_id, wait)
        return Decision(Verdict.DEFER, "rate limit", not_before=time.time() + wait)

    # ---- the overrides ----------------------------------------------------------------------
    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            self._refresh()

    def _refresh(self, first: bool = False) -> None:
        assert self.store is not None
        try:
            overrides = read_overrides(self.app.backend)
        except Exception as exc:
            if first:
                logger.warning("could not read the run-time rate limits (%s); using the "
                               "declared ones until the result store answers", exc)
                self._intervals = effective_intervals(self.app, {})
            return
        if overrides == self._overrides and not first:
            return
        declared = declared_rates(self.app)
        for name in sorted(set(overrides) | set(self._overrides)):
            if name not in self.app.tasks or overrides.get(name) == self._overrides.get(name):
                continue
            if name in overrides:
                logger.info("Task %s: rate limit %s, set at run time (declared: %s)", name,
                            _shown(overrides[name]), _shown(declared.get(name)))
            else:
                logger.info("Task %s: rate limit back to the declared %s", name,
                            _shown(declared.get(name)))
        self._overrides = overrides
        self._intervals = effective_intervals(self.app, overrides)


def _shown(rate: Any) -> str:
    return "none" if rate in (None, "", 0, "0") else repr(rate)
