"""The beat: sends each periodic task when it is due, once, however many beats run.

Layer: beat. Any number of beats (``celeriac beat``, ``worker -B``) may run against one result
store; two mechanisms, both in the store, make each run fire once:

1. **One leader.** Beats compete for a lock (``LEADER_LOCK``) held for ``beat_leader_lease``
   seconds and renewed every third of that; only its holder fires. The others try to take it about
   once a second, so when the leader dies (even by SIGKILL) another fires within
   ``beat_leader_lease`` + 1 s of its last renewal. A leader that cannot renew stops firing when
   its lease runs out, by its own clock.
2. **One claim per run.** Before sending, the leader claims the run in the store with a key made
   of the entry's name and its last-run time (``FIRED_PREFIX``): a second beat that believes it
   leads (one paused past its lease) computes the same key and finds it taken.

Last-run times live in the store, written as each run fires: a restarted beat neither fires again
what fired nor skips what is due; a run missed while every beat was down fires once when one comes
back (not once per missed period, as Celery). A never-run entry counts from when a beat first sees
it (Celery's rule), so an interval of 10 s first fires 10 s after.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from .. import signals
from ..locks import Lock, lock_store
from .book import ScheduleBook
from .entries import Entry, config_entries

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.beat")

#: the lock beats compete for; its holder fires
LEADER_LOCK = "beat-leader"
#: + "<entry>@<last run>": a run's claim (a lock key with the same store semantics)
FIRED_PREFIX = "celeriac-beat-fired-"
#: the longest a leader sleeps between looks at the schedule when ``beat_max_loop_interval`` is
#: not set (Celery's default); edits are picked up sooner, see REFRESH
DEFAULT_MAX_INTERVAL = 300.0
#: seconds between a leader's reads of the stored schedule (how soon an edit takes effect)
REFRESH = 1.0


class Beat:
    """One beat process's scheduler: ``run()`` in the foreground (``celeriac beat``), or
    ``start()``/``stop()`` as a thread (``worker -B``)."""

    def __init__(self, app: Celery, *, max_interval: float | None = None,
                 lease: float | None = None, hostname: str | None = None,
                 embedded: bool = False, clock: Callable[[], datetime] | None = None) -> None:
        self.app = app
        #: what "now" is for the schedules (aware; the app's clock in its time zone)
        self.clock = clock or app.now
        self._own_clock = clock is not None
        app.finalize()  # beat_schedule is complete once on_after_configure handlers have run
        self.book = ScheduleBook(app)
        self.store = lock_store(app, "celeriac beat")
        self.lease = float(lease or app.conf.get("beat_leader_lease") or 10.0)
        configured = max_interval or app.conf.get("beat_max_loop_interval") or 0
        self.max_interval = float(configured) if configured else DEFAULT_MAX_INTERVAL
        self.refresh = min(REFRESH, self.max_interval)
        self.hostname = hostname or socket.gethostname()
        self.embedded = embedded
        self.token = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = Lock(self.store, LEADER_LOCK, self.lease, token=self.token)
        self._renewed_at = 0.0
        self._valid_until = 0.0
        #: beat_schedule's entries as objects (a user's own schedule class lives only here)
        self.config = config_entries(app)
        self._warned: set[str] = set()
        self._set_up = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- running --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Write ``beat_schedule`` into the stored schedule and announce the beat (once)."""
        if self._set_up:
            return
        for change in self.book.sync_config(self.config):
            logger.info("beat: %s", change)
        signal = signals.beat_embedded_init if self.embedded else signals.beat_init
        if signal.receivers:
            signal.send(sender=self)
        logger.info("beat %s: %d periodic task(s) in the schedule; leader lease %.1f s",
                    self.token, len(self.book.entries()), self.lease)
        self._set_up = True

    def run(self) -> None:
        """Fire due entries until ``stop()`` (or SIGTERM/SIGINT in ``celeriac beat``)."""
        self.setup()  # (done already by a worker's -B, which runs it before consuming)
        try:
            while not self._stop.is_set():
                try:
                    wait = self.tick()
                except Exception:
                    logger.exception("beat: the schedule could not be read or fired; trying "
                                     "again in 1 s")
                    wait = 1.0
                self._stop.wait(wait)
        finally:
            self._step_down()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="celeriac-beat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_leader(self) -> bool:
        return self.leader.acquired and time.monotonic() < self._valid_until

    # ---- one pass -------------------------------------------------------------------------------
    def tick(self) -> float:
        """Take or keep the lead; as leader, fire what is due. Seconds until the next pass."""
        follow = min(1.0, self.lease / 3)
        if not self._lead():
            return follow
        now = self.clock()
        entries = [entry for entry in self.book.entries().values() if entry.enabled]
        states = self.book.states([entry.name for entry in entries])
        wait = self.max_interval
        for entry in entries:
            schedule = self._schedule_of(entry)
            if schedule is None:
                continue
            last_run_at, count = states.get(entry.name, (None, 0))
            if last_run_at is None:  # first seen: it counts from now
                self.book.record_run(entry.name, now, 0)
                wait = min(wait, _seconds(schedule.is_due(now)[1]))
                continue
            due, next_check = schedule.is_due(last_run_at.astimezone(self.app.timezone))
            if due:
                self._fire(entry, last_run_at, count, now, _seconds(next_check))
            wait = min(wait, _seconds(next_check))
        until_renewal = self._renewed_at + self.lease / 3 - time.monotonic()
        return max(0.01, min(wait, self.refresh, until_renewal))

    def _lead(self) -> bool:
        now = time.monotonic()
        if self.leader.acquired:
            if now - self._renewed_at >= self.lease / 3:
                try:
                    if self.leader.extend():
                        self._renewed_at, self._valid_until = now, now + self.lease
                    else:
                        logger.warning("beat %s: lost the lead (its lease ran out): another beat "
                                       "fires now", self.token)
                except Exception:
                    logger.exception("beat %s: could not renew the lead", self.token)
                    if now >= self._valid_until:
                        self.leader.acquired = False
            return self.is_leader
        try:
            taken = self.leader.acquire()
        except Exception:
            logger.exception("beat %s: could not reach the result store to take the lead",
                             self.token)
            return False
        if taken:
            self._renewed_at, self._valid_until = now, now + self.lease
            logger.info("beat %s: leads now, and fires the schedule", self.token)
        return taken

    def _step_down(self) -> None:
        if self.leader.acquired:
            try:
                self.leader.release()
                logger.info("beat %s: stepped down", self.token)
            except Exception:
                logger.exception("beat %s: could not release the lead (it expires in %.0f s)",
                                 self.token, self.lease)

    def _schedule_of(self, entry: Entry) -> Any:
        schedule = entry.schedule
        if schedule is None:
            own = self.config.get(entry.name)
            if own is not None and own.digest == entry.digest:
                schedule = own.schedule
        if schedule is not None:
            if self._own_clock and getattr(schedule, "nowfun", False) is None:
                schedule.nowfun = self.clock  # the beat's clock is the schedules' too
            return schedule
        if entry.name not in self._warned:
            self._warned.add(entry.name)
            logger.warning("beat %s: periodic task %r has a schedule of its own class, which "
                           "only a beat with it in beat_schedule can fire: this one skips it",
                           self.token, entry.name)
        return None

    def _fire(self, entry: Entry, last_run_at: datetime, count: int, now: datetime,
              next_check: float) -> None:
        claim = f"{FIRED_PREFIX}{entry.name}@{last_run_at.timestamp():.6f}"
        ttl = min(86400.0, max(60.0, 10 * next_check))
        if not self.store.lock_acquire(claim, self.token, ttl):
            logger.debug("beat: %s was fired by another beat", entry.name)
            return
        if not self.is_leader:  # the lease ran out while this pass ran: leave it to the next
            self.store.lock_release(claim, self.token)
            return
        try:
            result = self._send(entry)
        except Exception:
            self.store.lock_release(claim, self.token)  # not sent: the next pass tries again
            logger.exception("beat: could not send periodic task %r (%s); trying again",
                             entry.name, entry.task)
            return
        logger.info("Scheduler: Sending due task %s (%s) [%s]", entry.name, entry.task,
                    result.id)
        self.book.record_run(entry.name, now, count + 1)

    def _send(self, entry: Entry) -> Any:
        options = dict(entry.options)
        headers = {**dict(options.pop("headers", None) or {}), "celery_beat_task": True,
                   "periodic_task_name": entry.name}
        task = self.app.tasks.get(entry.task)
        if task is not None:
            return task.apply_async(entry.args, dict(entry.kwargs), headers=headers, **options)
        return self.app.send_task(entry.task, entry.args, dict(entry.kwargs), headers=headers,
                                  **options)


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    return max(0.0, float(value))
