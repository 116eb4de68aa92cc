"""The worker's events (``-E``): ``TaskEvents``, a built-in extension.

Layer: worker. Every worker has one (``Worker.extensions()``), so remote control's
``enable_events`` / ``disable_events`` can switch task events on and off while it runs. As a
Celery worker does, it sends two groups of events (wire spec section 5):

- ``worker-online`` at start, ``worker-heartbeat`` every ``worker_heartbeat_interval`` seconds
  (``freq``, 2.0 by default) and ``worker-offline`` at shutdown, unless started with
  ``--without-heartbeat``: monitors see the worker alive until ``freq * 2`` seconds after its
  last heartbeat;
- with ``-E`` (``worker_send_task_events``) or after ``enable_events``, the ``task-*`` events,
  at these points of the consumer (worker/extensions.py):

  ================  ==========================================================================
  task-received     ``on_received``: admitted and held to run (an ETA task once it is due:
                    celeriac holds no task before its ETA)
  task-started      ``on_started``: sent by the worker's main process as it hands the job to
                    the pool (Celery's prefork worker sends it from its main process too, when
                    a child accepts the job); the prefork child sends nothing, and the
                    outcome it reports carries the runtime it measured
  task-succeeded,   ``after_outcome``: the outcome's result repr and runtime, or exception repr
  -failed, -retried and traceback (a time limit or a lost process is ``task-failed`` with
                    ``TimeLimitExceeded`` / ``WorkerLostError``)
  task-rejected     ``after_outcome``: the task raised ``Reject`` (``requeue`` says which)
  task-revoked      ``on_dropped``: revoked or expired (at arrival or while waiting), or
                    terminated while it ran
  task-failed       ``on_dropped``: a message dead-lettered without running (an unknown task,
                    a body that cannot be decoded), with the failure its caller reads
  ================  ==========================================================================

Task events are batched (``EventDispatcher``'s ``buffer_group``): a background thread publishes
them as ``task.multi`` lists every 50 ms, so the hot path pays a tuple and an append per event
(``send_values``: the group is known to be on and the event's shape fixed, so ``send``'s
look-ups are skipped and no map is built). On prefork every task event is sent by the main
process (the child sends none), from the thread at that point (fetch, dispatch or the pool's
collector); the ``celeriac-events`` thread encodes and publishes them. With task events off,
each point returns at its first line.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from typing import TYPE_CHECKING, Any, Callable

from .._version import __version__
from ..events.dispatcher import EventDispatcher, Shape
from ..exceptions import TimeLimitExceeded, WorkerLostError
from .extensions import Dropped, WorkerExtension
from .outcome import Ending

if TYPE_CHECKING:
    from ..app import Celery
    from .consumer import Consumer
    from .job import Job
    from .outcome import Outcome

logger = logging.getLogger("celeriac.worker")

#: what ``sw_ident`` says: neither Flower nor Celery's ``events.state`` reads its value, so the
#: worker names itself truthfully (with celeriac's version in ``sw_ver``)
SW_IDENT = "py-celeriac"

#: the endings besides success that send their exception and traceback
_TASK_ENDINGS = {Ending.FAILED: "task-failed", Ending.RETRIED: "task-retried"}

#: the shapes of the three events every task sends, their fields in Celery's order
#: (``EventDispatcher.send_values``: each event is then a tuple of values)
RECEIVED: Shape = ("task-received", ("uuid", "name", "args", "kwargs", "root_id", "parent_id",
                                     "retries", "eta", "expires"))
STARTED: Shape = ("task-started", ("uuid",))
SUCCEEDED: Shape = ("task-succeeded", ("uuid", "result", "runtime"))


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded as Celery sends them ([0, 0, 0] where the
    system has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return [0.0, 0.0, 0.0]


class TaskEvents(WorkerExtension):
    """Celery's worker events (module docstring). ``task_events``: send ``task-*`` events from
    the start (``-E``); ``heartbeat``: send the ``worker-*`` events (off with
    ``--without-heartbeat``); ``freq``: seconds between heartbeats."""

    def __init__(self, app: Celery, hostname: str, *, task_events: bool = False,
                 heartbeat: bool = True, freq: float = 2.0) -> None:
        self.app = app
        self.hostname = hostname
        self.heartbeat = heartbeat
        self.freq = float(freq)
        self.dispatcher: EventDispatcher | None = None
        self._task_events = bool(task_events)
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the dispatcher's ``send`` once the worker started (one call less per event)
        self._send: Callable[..., Any] = self._not_started
        #: the dispatcher's ``send_values`` once the worker started, for the hot path's events
        self._buffered: Callable[[str, Shape, tuple[Any, ...]], None] = (
            self._not_started_buffered)

    @property
    def task_events(self) -> bool:
        """Whether ``task-*`` events are being sent."""
        return self._task_events

    # ---- switching -----------------------------------------------------------------------------
    def enable(self) -> bool:
        """Send ``task-*`` events from now on (remote control's ``enable_events``); False when
        they were on already."""
        with self._lock:
            if self._task_events:
                return False
            self._task_events = True
            if self.dispatcher is not None:
                self._groups_changed()
        logger.info("Events of group {task} enabled by remote.")
        return True

    def disable(self) -> bool:
        """Stop sending ``task-*`` events (``disable_events``); what is buffered still goes.
        False when they were off already."""
        with self._lock:
            if not self._task_events:
                return False
            self._task_events = False
            if self.dispatcher is not None:
                self._groups_changed()
                self.dispatcher.flush()
        logger.info("Events of group {task} disabled by remote.")
        return True

    def _groups(self) -> set[str]:
        return {*(("worker",) if self.heartbeat else ()), *(("task",) if self._task_events
                                                            else ())}

    def _groups_changed(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.groups = self._groups()

    # ---- the worker's own events -----------------------------------------------------------------
    def on_worker_start(self, consumer: Consumer) -> None:
        self._consumer = consumer
        with self._lock:
            self.dispatcher = EventDispatcher(self.app, self.hostname, groups=self._groups(),
                                              buffer_group=("task",))
            self._send = self.dispatcher.send
            self._buffered = self.dispatcher.send_values
        if self.heartbeat:
            self.dispatcher.send("worker-online", **self.worker_fields())
            self._thread = threading.Thread(target=self._beat, name="celeriac-event-heartbeat",
                                            daemon=True)
            self._thread.start()

    def worker_fields(self) -> dict[str, Any]:
        """What each ``worker-*`` event carries besides the common fields (Celery's order)."""
        consumer = self._consumer
        return {"freq": self.freq, "active": consumer.active if consumer else 0,
                "processed": consumer.processed if consumer else 0,
                "loadavg": load_average(), "sw_ident": SW_IDENT, "sw_ver": __version__,
                "sw_sys": platform.system()}

    def send_heartbeat(self) -> None:
        """A ``worker-heartbeat`` now (the pidbox ``heartbeat`` command monitors send)."""
        if self.dispatcher is not None and self.heartbeat:
            self.dispatcher.send("worker-heartbeat", **self.worker_fields())

    def _beat(self) -> None:
        while not self._stop.wait(self.freq):
            self.send_heartbeat()

    def on_worker_shutdown(self, consumer: Consumer) -> None:
        """After the last task: what is buffered, then ``worker-offline``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        dispatcher.flush()
        if self.heartbeat:
            dispatcher.send("worker-offline", **self.worker_fields())
        dispatcher.close()

    # ---- task events ---------------------------------------------------------------------------
    @staticmethod
    def _not_started(event_type: str, **fields: Any) -> None:
        """``_send`` until the worker starts: nothing to send with yet."""

    @staticmethod
    def _not_started_buffered(group: str, shape: Shape, values: tuple[Any, ...]) -> None:
        """``_buffered`` until the worker starts."""

    # The three events every task sends go through ``_buffered`` as tuples of their values in
    # their shape's order; the rarer ones through ``_send``.
    def on_received(self, job: Job) -> None:
        if not self._task_events:
            return
        get = job.headers.get
        self._buffered("task", RECEIVED, (
            job.task_id, get("shadow") or get("task"), get("argsrepr"), get("kwargsrepr"),
            get("root_id"), get("parent_id"), get("retries") or 0, get("eta"), get("expires")))

    def on_started(self, job: Job) -> None:
        if not self._task_events:
            return
        self._buffered("task", STARTED, (job.task_id,))

    def after_outcome(self, job: Job, outcome: Outcome) -> None:
        if not self._task_events:
            return
        ending = outcome.ending
        if ending is Ending.SUCCEEDED:
            self._buffered("task", SUCCEEDED, (job.task_id, outcome.retval_repr, outcome.runtime))
            return
        event_type = _TASK_ENDINGS.get(ending)
        if event_type is not None:
            self._send(event_type, uuid=job.task_id, exception=outcome.exc_repr,
                       traceback=outcome.traceback)
        elif ending in (Ending.REJECTED_REQUEUE, Ending.REJECTED_DROP):
            self._send("task-rejected", uuid=job.task_id,
                       requeue=ending is Ending.REJECTED_REQUEUE)
        elif ending is Ending.TIME_LIMIT:
            self._send("task-failed", uuid=job.task_id,
                       exception=repr(TimeLimitExceeded(outcome.limit)), traceback=None)
        elif ending is Ending.WORKER_LOST:
            self._send("task-failed", uuid=job.task_id,
                       exception=repr(WorkerLostError(outcome.reason or "worker lost")),
                       traceback=None)
        # TERMINATED and UNDECODABLE: on_dropped says it; IGNORED, ABANDONED and
        # INTERNAL_ERROR send nothing (the message runs again, or the task asked for silence)

    def on_dropped(self, dropped: Dropped) -> None:
        if not self._task_events:
            return
        task_id = dropped.delivery.message.headers.get("id")
        if not task_id:
            return
        if dropped.reason == "dead_letter":
            failure = dropped.failure
            self._send("task-failed", uuid=task_id,
                       exception=repr(failure) if failure is not None else None, traceback=None)
            return
        self._send("task-revoked", uuid=task_id, terminated=dropped.reason == "terminated",
                   signum=dropped.signum, expired=dropped.reason == "expired")
