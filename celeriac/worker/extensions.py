"""Named extension points of the worker, and the built-in features that use them.

Layer: worker. A feature plugs in by subclassing ``WorkerExtension`` and overriding the points it
needs; the consumer calls only the points an extension overrides, so an unused point costs
nothing on the hot path. The points, in the order a message meets them:

- ``on_worker_start(consumer)`` / ``on_worker_stop(consumer)``: start and stop a service
  (a thread, a subscription), e.g. heartbeats, remote control, beat.
- ``on_worker_shutdown(consumer)``: the last point: every task has ended (or was abandoned by a
  cold shutdown) and the consumer's threads are done, e.g. the ``worker-offline`` event.
- ``before_admission(arrival)``: one more admission step (see worker/admission.py); return a
  ``Decision`` to end admission (defer, dead-letter, drop), None to let it through.
- ``on_received(job)``: the delivery passed admission and is held to run (a batch task's
  request too, before its batch forms).
- ``before_run(job)``: just before a held job goes to the pool; return a ``Decision`` to drop
  it instead (REVOKED, EXPIRED) or to defer it (DEFER: its message goes back to the broker
  until ``not_before``, e.g. task locks).
- ``on_started(job)``: the job is being handed to its pool (every request of a batch); sent
  before the hand-over, since the solo pool runs the task inside it.
- ``after_outcome(job, outcome)``: the job ended (before its message is settled).
- ``on_dropped(dropped)``: a message that will not run, or was stopped: revoked, expired (at
  admission or while waiting), terminated, or dead-lettered (``Dropped`` says which).
- ``revoked_with(job)``: ids besides its own whose revoke also revokes the job (a dispatch's
  subtasks go with their main task), so a revoke with ``terminate`` stops it where it runs.

Extensions run in the consumer's threads: they must not block for long.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import signals
from .admission import Arrival, Decision, Verdict, is_expired, not_expired

if TYPE_CHECKING:
    from ..transport.base import Delivery
    from .consumer import Consumer
    from .job import Job
    from .outcome import Outcome

logger = logging.getLogger("celeriac.worker")

POINTS = ("on_worker_start", "on_worker_stop", "on_worker_shutdown", "before_admission",
          "on_received", "before_run", "on_started", "after_outcome", "on_dropped",
          "revoked_with")


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message the worker will not run (or stopped running), for ``on_dropped``."""

    delivery: Delivery
    #: the registered task, when known
    task: Any
    #: "revoked", "expired", "terminated" or "dead_letter"
    reason: str
    #: "terminated": the signal that stopped it, when one was used
    signum: int | None = None
    #: "dead_letter": the failure stored for its caller, when there is one
    failure: BaseException | None = None


class WorkerExtension:
    """Base class: every point does nothing."""

    def on_worker_start(self, consumer: Consumer) -> None:
        """The consumer is about to fetch its first message."""

    def on_worker_stop(self, consumer: Consumer) -> None:
        """The consumer stopped fetching (running tasks may still finish)."""

    def on_worker_shutdown(self, consumer: Consumer) -> None:
        """The worker is about to exit: nothing runs any more."""

    def before_admission(self, arrival: Arrival) -> Decision | None:
        """An admission step; None lets the delivery through."""
        return None

    def on_received(self, job: Job) -> None:
        """The delivery passed admission: the worker holds it to run."""

    def before_run(self, job: Job) -> Decision | None:
        """Last look before the job runs; None lets it run."""
        return None

    def on_started(self, job: Job) -> None:
        """The job is being handed to its pool now."""

    def after_outcome(self, job: Job, outcome: Outcome) -> None:
        """The job ended; its message is settled right after."""

    def on_dropped(self, dropped: Dropped) -> None:
        """A message will not run, or was stopped (``dropped.reason``)."""

    def revoked_with(self, job: Job) -> tuple[str, ...]:
        """Other task ids whose revoke revokes this job too."""
        return ()


class Hooks:
    """The extensions that override each point, in registration order."""

    def __init__(self, extensions: Sequence[WorkerExtension]) -> None:
        self.extensions = tuple(extensions)
        for point in POINTS:
            base = getattr(WorkerExtension, point)
            setattr(self, point, tuple(getattr(ext, point) for ext in self.extensions
                                       if getattr(type(ext), point) is not base))

    on_worker_start: tuple[Any, ...]
    on_worker_stop: tuple[Any, ...]
    on_worker_shutdown: tuple[Any, ...]
    before_admission: tuple[Any, ...]
    on_received: tuple[Any, ...]
    before_run: tuple[Any, ...]
    on_started: tuple[Any, ...]
    after_outcome: tuple[Any, ...]
    on_dropped: tuple[Any, ...]
    revoked_with: tuple[Any, ...]


# ---- built-in extensions ------------------------------------------------------------------------
class Expiry(WorkerExtension):
    """``expires``: a task past it is not run but stored as REVOKED (Celery's behaviour), both
    when it arrives and when it has expired while waiting in the prefetch buffer."""

    def before_admission(self, arrival: Arrival) -> Decision | None:
        return not_expired(arrival)

    def before_run(self, job: Job) -> Decision | None:
        return Decision(Verdict.EXPIRED) if is_expired(job.headers) else None


class Heartbeat(WorkerExtension):
    """Every ``worker_heartbeat_interval`` seconds, record this node as alive in the result
    store (``celeriac-worker-<node>``, expiring after three missed beats), and send Celery's
    ``heartbeat_sent`` signal."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_worker_start(self, consumer: Consumer) -> None:
        self._thread = threading.Thread(target=self._beat, args=(consumer,),
                                        name="celeriac-heartbeat", daemon=True)
        self._thread.start()

    def on_worker_stop(self, consumer: Consumer) -> None:
        self._stop.set()

    def _beat(self, consumer: Consumer) -> None:
        key = f"celeriac-worker-{consumer.hostname}"
        while not self._stop.is_set():
            try:
                consumer.app.backend.set_value(key, {
                    "hostname": consumer.hostname, "pid": os.getpid(), "freq": self.interval,
                    "active": consumer.active, "processed": consumer.processed,
                    "timestamp": time.time(), "queues": list(consumer.queues)},
                    ttl=self.interval * 3)
            except Exception:
                logger.exception("could not record a heartbeat")
            else:
                if signals.heartbeat_sent.receivers:
                    signals.heartbeat_sent.send(sender=consumer)
            self._stop.wait(self.interval)
