"""The consumer: fetch, admit, hold, dispatch to the pool, settle, renew leases.

Layer: worker (main process). The pipeline for one message: ``fetch`` -> admission
(worker/admission.py: ordered steps, extensions' steps among them) -> a ``Job`` in the held
table and the prefetch buffer -> the last look before it runs (revokes, ``before_run``
extensions) -> the settlement policy's ``before_run`` (early ack) -> a pool -> an ``Outcome``
-> ``after_outcome`` extensions -> settled by the policy (worker/settlement.py).

Prefetch: the worker holds at most ``concurrency * worker_prefetch_multiplier`` messages
(running + waiting) in ONE shared buffer; whichever pool slot frees first takes the next message,
so a long task never holds fetched work hostage. Waiting messages keep their broker lease
(renewed here when the broker leases), so they are never lost; ETA messages are handed back to
the broker until due and hold no slot.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .. import signals, states
from ..canvas import followups
from ..exceptions import (
    DecodeError,
    InvalidTaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from ..protocol import serialization
from ..transport.base import DeadLetterStore, Deferral, Leases, PushedDeliveries
from .admission import Admission, Decision, Verdict, standard_steps
from .batching import BatchBuffers, BatchJob, batch_message
from .extensions import Dropped, Hooks, WorkerExtension
from .job import Job, task_label, wants_result
from .outcome import LEASE_LOST, SETTLED_BY_ACK, Ending, Outcome
from .request import ReceivedRequest, request_from_message
from .revokes import RevokedSet
from .settlement import Settlement

if TYPE_CHECKING:
    from ..app import Celery
    from ..protocol.message import Message
    from ..transport.base import Delivery

logger = logging.getLogger("celeriac.worker")

#: endings a pool reports for a task its process stopped running from outside (the task's own
#: code did not end it): a child that sends its own early ack may have ended before sending it
ENDED_OUTSIDE_THE_TASK = frozenset({Ending.WORKER_LOST, Ending.TIME_LIMIT, Ending.TERMINATED,
                                    Ending.ABANDONED})

#: a delivery leased this many times without finishing is a poison message: dead-lettered
DEFAULT_MAX_DELIVERIES = 10
#: seconds a main task waits on the broker when this worker already runs as many as it may
LANE_RETRY = 1.0
#: seconds a terminate's reply still names a task the revoke sync stopped first (its client
#: stored the revoke, then broadcast it)
TERMINATED_MEMORY = 10.0


class Consumer:
    """Moves messages from the transport to the pool and settles them afterwards."""

    def __init__(self, app: Celery, *, queues: list[str], pool: Any, hostname: str,
                 prefetch_multiplier: int, async_pool: Any = None, waiting_pool: Any = None,
                 waiting_async_pool: Any = None,
                 settlement: type[Settlement] = Settlement,
                 extensions: Sequence[WorkerExtension] = (), app_spec: str | None = None) -> None:
        self.app = app
        #: how the CLI names this worker's app (``-A``), for the commands its messages suggest;
        #: the app's main module name when not started from the CLI
        self.app_spec = app_spec or app.main
        self.transport = app.transport
        self.queues = queues
        self.pool = pool
        self.async_pool = async_pool
        #: threads for ``runs_outside_pool`` tasks (dispatch main tasks), when any is registered
        self.waiting_pool = waiting_pool
        #: an event loop for ``async def`` ``runs_outside_pool`` tasks, when any is registered
        self.waiting_async_pool = waiting_async_pool
        self.hostname = hostname
        conf = app.conf
        self.accept = serialization.normalize_accept(conf.accept_content)
        self.acks_late_default = bool(conf.task_acks_late)
        self.reject_on_worker_lost = bool(conf.task_reject_on_worker_lost)
        # The window counts messages held for the pool (waiting + running). ``async def`` tasks
        # and ``runs_outside_pool`` tasks leave the window once they start: they run on the
        # event loop or a waiting thread, not in a slot.
        # A multiplier of 0 means "no limit", as in Celery (bounded here to stay sane).
        multiplier = prefetch_multiplier if prefetch_multiplier > 0 else 1000
        self.prefetch_multiplier = multiplier
        self.prefetch_limit = pool.limit * multiplier
        # Fetch once half the window is free, not whenever one slot frees: fewer, fuller fetches.
        self.fetch_at = max(1, self.prefetch_limit // 2)
        transport = self.transport
        self.leases: Leases | None = transport if isinstance(transport, Leases) else None
        self.renew_every = (max(0.05, self.leases.visibility_timeout / 3.0)
                            if self.leases is not None else 0.0)
        self.revokes = (RevokedSet(app.backend, on_terminate=self._terminate)
                        if app.backend.persistent else None)
        #: task id -> when (``time.monotonic``) a terminate last stopped it here, kept
        #: ``TERMINATED_MEMORY`` seconds: a terminate's reply names the tasks the revoke sync
        #: stopped a moment before its broadcast arrived (``recently_terminated``)
        self._terminated: dict[str, float] = {}
        self.hooks = Hooks(extensions)
        self.admission = Admission(standard_steps(
            accept=self.accept, tasks=app.tasks,
            max_deliveries=int(conf.get("worker_max_deliveries") or DEFAULT_MAX_DELIVERIES),
            revokes=self.revokes, extra=self.hooks.before_admission))
        self.settlement = settlement(self)
        #: jobs may wait ahead in a busy pool process (prefork, which sends their early acks)
        self._pool_acks_ahead = self.settlement.pool_acks and hasattr(pool, "ahead_slots")
        #: a pool process that sends a job's early ack looks up its revoke in the same round
        #: trip (prefork): such jobs are not looked up here as they arrive
        self._pool_checks_revokes = (self.revokes is not None and self.settlement.pool_acks
                                     and hasattr(pool, "check_revokes"))
        if self._pool_checks_revokes:
            pool.check_revokes = True
        self._fetching = False  # a fetch is on its way (one at a time keeps the window honest)
        self._buffer: collections.deque[Job] = collections.deque()
        # requests of batch tasks wait here for their batch, outside the window; bounded by
        # the flush sizes of the batch tasks (nothing more is fetched while it is full)
        batch_tasks = [t for t in app.tasks.values() if t.collects_requests]
        self.batches = BatchBuffers(sum(max(1, int(t.flush_every)) for t in batch_tasks) or 1,
                                    collecting=bool(batch_tasks))
        self._jobs: dict[int, Job] = {}  # every held job, waiting or running
        #: job id -> signal of a terminate that came while its job was on its way to its pool
        #: (or before the pool could stop it): tried again once it has started (``_start``)
        #: and at each revoke sync, until the pool takes it or the job is gone
        self._terminates: dict[int, int] = {}
        self._running = 0
        self._running_outside = 0
        self._ids = itertools.count(1)
        # One lock, two conditions: the dispatch thread (and shutdown's wait_idle) wait on
        # ``_cond``, the fetch thread on ``_fetch_cond``, so a task's end wakes only the thread
        # that has something to do (each needless wake-up is a GIL hand-off).
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._fetch_cond = threading.Condition(lock)
        #: the pool starts the next job itself as a slot frees (``start_next_here``)
        self._pool_starts_next = (hasattr(pool, "start_next")
                                  and self.settlement.starts_from_any_thread)
        if self._pool_starts_next:
            pool.start_next = self.start_next_here
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.processed = 0
        self.failed = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.settlement.start()
        loops = [(self._fetch_loop, "celeriac-fetch"), (self._dispatch_loop, "celeriac-dispatch")]
        if self.leases is not None:
            loops.append((self._renew_loop, "celeriac-leases"))
        if self.revokes is not None:
            self.revokes.sync()  # revokes made before this worker started still count
            loops.append((self._revoke_loop, "celeriac-revokes"))
        for hook in self.hooks.on_worker_start:
            hook(self)
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_consuming(self) -> None:
        """Warm shutdown, step 1: fetch nothing more and give unstarted messages back at once:
        the buffer's, and those the broker pushed to the transport that no fetch took."""
        self._stop.set()
        for hook in self.hooks.on_worker_stop:
            hook(self)
        if isinstance(self.transport, PushedDeliveries):
            try:
                pushed = self.transport.stop_consuming()
            except Exception:
                logger.exception("could not give back the messages the broker pushed ahead; "
                                 "they go back when the connection closes")
            else:
                if pushed:
                    logger.info("Returned %d message(s) the broker had pushed ahead", pushed)
        with self._cond:
            # A job acked early that went back to the buffer (its pool slot vanished) cannot be
            # given back any more: it stays, and the dispatch loop runs it before it ends.
            waiting = [job for job in self._buffer if not job.acked]
            kept = [job for job in self._buffer if job.acked]
            self._buffer.clear()
            self._buffer.extend(kept)
            # a batch not started gives its requests back, as do requests still buffered
            waiting = [member for job in waiting
                       for member in (job.members if isinstance(job, BatchJob) else [job])]
            waiting.extend(self.batches.drain())
            for job in waiting:
                self._jobs.pop(job.id, None)
            self._wake_all()
        for job in waiting:
            self._requeue(job.delivery)
        if waiting:
            logger.info("Returned %d unstarted message(s) to the broker", len(waiting))

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.1 if remaining is None else min(0.1, remaining))
        return True

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=5)
        self.settlement.close()
        if self.hooks.on_worker_shutdown:
            self._call_hooks(self.hooks.on_worker_shutdown, self)

    @property
    def stopping(self) -> bool:
        """Whether shutdown has begun (nothing more is fetched)."""
        return self._stop.is_set()

    @property
    def active(self) -> int:
        return self._running

    def jobs(self) -> list[Job]:
        """A snapshot of the held jobs (for remote control and extensions)."""
        with self._cond:
            return list(self._jobs.values())

    def pool_demand(self) -> int:
        """Jobs for the pool: running in it, and waiting in the buffer for one of its slots
        (what ``--autoscale`` sizes the pool by)."""
        with self._cond:
            return (self._running - self._running_outside
                    + sum(1 for job in self._buffer if job.lane is self.pool))

    def resize_window(self, slots: int, *, room_to_grow: bool = False) -> None:
        """The pool now has ``slots`` slots (``--autoscale``): the prefetch window follows, as
        multiplier x slots. ``room_to_grow``: at least one message more than the slots, so a job
        can wait in the buffer and show that the pool may grow (with a multiplier of 1, or 0
        slots, none could)."""
        limit = slots * self.prefetch_multiplier
        if room_to_grow:
            limit = max(limit, slots + 1)
        with self._cond:
            self.prefetch_limit = max(1, limit)
            self.fetch_at = max(1, self.prefetch_limit // 2)
            self._wake_all()

    # ---- fetching -------------------------------------------------------------------------------
    def _room(self) -> int:
        return self.prefetch_limit - len(self._buffer) - (self._running - self._running_outside)

    def _fetch_size(self) -> int:
        """Hold ``_cond``. How many messages one fetch may take: the free room of the window,
        plus, when batch tasks are registered, the free room of their buffers (a batch of 100
        is not filled four messages at a time; plain tasks fetched with it wait in the buffer,
        so the window may run over by at most that much)."""
        room = self._room()
        if self.batches.collecting:
            room += max(0, self.batches.limit - self.batches.held)
        return room

    def _may_fetch(self) -> bool:
        """Hold ``_cond``. Room for a fetch, nobody fetching; when each task's start refills the
        buffer (inline solo), this thread waits for the buffer to run dry."""
        return (self._room() >= self.fetch_at and not self._fetching
                and self.batches.held < self.batches.limit
                and not (self.settlement.refills_at_start and self._buffer))

    def claim_refill(self) -> int:
        """How many messages a fetch riding along with a task's start may take (0: none), and
        the fetch counts as on its way until ``refill_done``."""
        with self._cond:
            if (self._room() < self.fetch_at or self._fetching or self._stop.is_set()
                    or self.batches.held >= self.batches.limit):
                return 0
            self._fetching = True
            return self._fetch_size()

    def refill_done(self) -> None:
        with self._cond:
            self._fetching = False
            self._cond.notify_all()
            if self._may_fetch():  # the buffer ran dry: the fetch thread waits for more
                self._fetch_cond.notify()

    def _fetch_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            with self._cond:
                while not self._may_fetch() and not self._stop.is_set():
                    self._fetch_cond.wait(0.5)
                room = self._fetch_size()
                self._fetching = True
            try:
                if self._stop.is_set():
                    return
                try:
                    deliveries = self.transport.fetch(self.queues, room, 1.0)
                    backoff = 0.1
                except Exception as exc:  # broker trouble: log, back off, carry on
                    logger.error("fetch failed: %r; retrying in %.1fs", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                self.receive(deliveries)
            finally:
                with self._cond:
                    self._fetching = False

    def receive(self, deliveries: list[Delivery]) -> None:
        """Take fetched deliveries in: admitted, then held (or settled at once)."""
        if self._stop.is_set():  # shutdown began during the fetch: give them back now
            for delivery in deliveries:
                self._requeue(delivery)
            return
        # One round trip per batch: revokes made a moment ago count too. When each sync task's
        # start carries its own check (inline solo, or the early ack a pool process sends),
        # only the others are checked here.
        if self.revokes is not None:
            checked: list[str] = [
                d.message.headers["id"] for d in deliveries if d.message.headers.get("id")
                and (not self.settlement.checks_revokes_at_start or self._outside_window(d))
                and not self._checked_in_pool(d)]
            if checked:
                try:
                    self.revokes.check_stored(checked)
                except Exception:
                    logger.exception("could not read revokes; relying on the last sync")
        for delivery in deliveries:
            try:
                self._admit(delivery)
            except Exception as exc:
                logger.exception("could not handle message %r; dead-lettering it",
                                 delivery.message.headers.get("id"))
                failure = InvalidTaskError(
                    f"task {task_label(delivery.message.headers)}: the worker could not take "
                    f"the message in ({exc!r}); see the worker's log.")
                failure.replayable = True  # type: ignore[attr-defined]  # the worker's fault
                self._dead_letter_failed(
                    delivery, "internal error while receiving the message", failure)
        if self._pool_starts_next:  # no hand-over to the dispatch thread: sooner, and cheaper
            self.start_next_here()  # never raises: a job it cannot start stays buffered

    def _acks_late(self, task: Any) -> bool:
        """The task's ``acks_late``, else the worker's ``task_acks_late``."""
        return task.acks_late if task.acks_late is not None else self.acks_late_default

    def _lane(self, task: Any) -> tuple[Any, bool]:
        """The pool that runs ``task``, and whether it runs outside the prefetch window."""
        if task.runs_outside_pool and task.is_coroutine and self.waiting_async_pool is not None:
            return self.waiting_async_pool, True
        if task.is_coroutine and self.async_pool is not None:
            return self.async_pool, True
        if task.runs_outside_pool and self.waiting_pool is not None and not task.is_coroutine:
            return self.waiting_pool, True
        return self.pool, False

    def _lane_full(self, lane: Any) -> bool:
        """Whether ``lane`` has no slot left for one more job (counting those waiting for it)."""
        with self._cond:
            waiting = sum(1 for job in self._buffer if job.lane is lane)
            return lane.free_slots() - waiting <= 0

    def _checked_in_pool(self, delivery: Delivery) -> bool:
        """Whether the pool process that will run ``delivery`` sends its early ack, and looks up
        its revoke with it (``Settlement.before_run`` hands such acks to the pool)."""
        if not self._pool_checks_revokes:
            return False
        task = self.app.tasks.get(delivery.message.headers.get("task"))
        if task is None or task.collects_requests:
            return False
        return not self._acks_late(task) and self._lane(task)[0] is self.pool

    def _outside_window(self, delivery: Delivery) -> bool:
        task = self.app.tasks.get(delivery.message.headers.get("task"))
        return task is not None and self._lane(task)[1]

    # ---- admission ------------------------------------------------------------------------------
    def _admit(self, delivery: Delivery) -> None:
        decision, arrival = self.admission.admit(delivery)
        if decision.verdict is not Verdict.RUN:
            self._enact(delivery, decision, arrival.task)
            return
        task = arrival.task
        logger.info("Task %s received", arrival.label)
        if signals.task_received.receivers:
            signals.task_received.send(sender=self, request=ReceivedRequest(
                delivery, self.hostname, self.accept))
        late = self._acks_late(task)
        lane, outside_window = self._lane(task)
        if task.runs_outside_pool and lane is not self.pool and self._lane_full(lane):
            # As many main tasks as this worker runs at once are here already: this one goes
            # back to the broker for a moment instead of waiting in the prefetch buffer, where
            # it would hold the room the running ones need to fetch their subtasks.
            self._enact(delivery, Decision(Verdict.DEFER, not_before=time.time() + LANE_RETRY),
                        task)
            return
        if task.collects_requests:  # acked only once its batch has run
            late, outside_window = True, False
        job = Job(next(self._ids), delivery, task, bool(late), outside_window, lane)
        if self.hooks.on_received:  # before it is in the buffer: it cannot have started yet
            self._call_hooks(self.hooks.on_received, job)
        with self._cond:
            self._jobs[job.id] = job
            if task.collects_requests:
                # a request joining its batch's buffer makes nothing runnable: the dispatch
                # thread is woken only when the batch is full (not once per request)
                batch = self.batches.add(job, self._ids.__next__)
                if batch is not None:
                    self._jobs[batch.id] = batch
                    self._buffer.append(batch)
                    self._cond.notify_all()
            else:
                self._buffer.append(job)
                # the dispatch thread only: a fuller buffer never lets the fetch thread fetch
                if not (self._pool_starts_next and lane is self.pool):
                    self._cond.notify_all()
                # else the fetch thread starts it itself once the fetch is admitted (receive)

    def _call_hooks(self, hooks: tuple[Any, ...], *args: Any) -> None:
        """Call each extension's hook; one that fails is logged and never stops the task."""
        for hook in hooks:
            try:
                hook(*args)
            except Exception:
                logger.exception("extension %r failed", hook)

    def _enact(self, delivery: Delivery, decision: Decision, task: Any) -> None:
        """Carry out an admission decision other than RUN."""
        verdict = decision.verdict
        if verdict is Verdict.DEFER:
            assert decision.not_before is not None
            if isinstance(self.transport, Deferral):
                self.transport.defer(delivery, decision.not_before)
            else:
                logger.error("Task %s has an ETA, but broker %r cannot defer messages; it "
                             "is given back", delivery.message.headers.get("id"),
                             type(self.transport).__name__)
                self._requeue(delivery)
        elif verdict is Verdict.DEAD_LETTER:
            if not decision.store_failure:  # an extension's quarantine: nothing is stored
                self._dead_letter(delivery, decision.reason)
                return
            failure = decision.failure
            if failure is None:  # an extension's step may give none: its reason may go away
                failure = InvalidTaskError(f"task {task_label(delivery.message.headers)} was "
                                           f"dead-lettered: {decision.reason}.")
                failure.replayable = True  # type: ignore[attr-defined]
            self._dead_letter_failed(delivery, decision.reason, failure, task=task)
        else:
            self._drop(delivery, task, expired=verdict is Verdict.EXPIRED)
            self.settlement.ack(delivery)

    def _drop(self, delivery: Delivery, task: Any, *, expired: bool = False,
              terminated: bool = False, signum: int | None = None) -> None:
        """A task that will not run (revoked, expired, terminated): stored as REVOKED."""
        headers = delivery.message.headers
        logger.info("Discarding %s task %s[%s]", "expired" if expired else "revoked",
                    headers.get("task"), headers.get("id"))
        reason = "expired" if expired else "terminated" if terminated else "revoked"
        request = self._request_of(delivery.message)
        try:  # stored as REVOKED, and counted (as failed) by the chord it belongs to, if any
            followups.on_failure(self.app, request, TaskRevokedError(reason), None,
                                 store=not headers.get("ignore_result"), state=states.REVOKED)
        except Exception:
            logger.exception("could not store the revoke of task %s", request.id)
        if signals.task_revoked.receivers:
            signals.task_revoked.send(sender=task, request=request, terminated=terminated,
                                      signum=signum, expired=expired)
        if self.hooks.on_dropped:
            self._call_hooks(self.hooks.on_dropped, Dropped(
                delivery, task, "expired" if expired else "terminated" if terminated
                else "revoked", signum=signum))

    def _request_of(self, message: Message) -> Any:
        """The request of a message that ends without running (decoded, so its chord, chain and
        errbacks are known; from the headers alone if the body cannot be decoded)."""
        request = request_from_message(message, self.accept, self.hostname)
        if request is None:
            from ..task import Context

            headers = message.headers
            request = Context(id=headers.get("id"), task=headers.get("task"),
                              group=headers.get("group"), parent_id=headers.get("parent_id"),
                              root_id=headers.get("root_id"), called_directly=False)
        return request

    # ---- dispatching ----------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        try:
            self._dispatch()
        finally:
            self.settlement.flush()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                job = None
                while job is None:
                    if self._stop.is_set() and not self._buffer:
                        return
                    if self.batches.held:
                        for batch in self.batches.due(self._ids.__next__):  # flush_interval
                            self._jobs[batch.id] = batch
                            self._buffer.append(batch)
                    job = self._next_runnable()
                    if job is None:
                        if self.settlement.wants_flush():
                            break  # idle: send staged result writes first
                        self._cond.wait(0.05)
            if job is None:
                self.settlement.flush()
                continue
            if not self._start_or_keep(job):
                with self._cond:
                    self._cond.wait(0.05)  # never spin: the pool needs a moment to replace it

    def start_next_here(self) -> None:
        """Start what waits for a slot from the calling thread, without waking the dispatch
        thread: a pool that reports outcomes on a thread of its own (prefork's collector) calls
        this right after a slot frees, saving a thread hand-off per task. Only jobs of lanes
        that settle from any thread, never under the solo policy's dispatch-thread staging."""
        while True:
            with self._cond:
                job = self._next_runnable()
            if job is None or not self._start_or_keep(job):
                return

    def _start_or_keep(self, job: Job) -> bool:
        """``_start``, from whichever thread: one that fails (the broker or the store failing a
        deferral, a lock or a rate step in the last look) leaves the job at the front of the
        buffer and the calling thread alive; the dispatch thread tries it again shortly."""
        try:
            return self._start(job)
        except Exception:
            logger.exception("could not start task %s; it waits to be tried again",
                             job.task_id)
            with self._cond:
                if job.pool is None and job.id in self._jobs and job not in self._buffer:
                    self._buffer.appendleft(job)
            return False

    def _start(self, job: Job) -> bool:
        """The last look, the early ack and the hand-over to the job's lane. False when its
        slot vanished (a child died) and the job went back to the front of the buffer."""
        if isinstance(job, BatchJob):
            if self._trim_batch(job) is not None:
                return True  # every request in it was revoked or expired (each one settled)
            decision = None
        else:
            decision = self._last_look(job)
        if decision is not None:  # revoked or expired while it waited, or deferred
            self._set_aside(job, decision)
            return True
        with self._cond:
            self._running += 1
            if job.outside_window:
                self._running_outside += 1
                self._wake_all()  # it left the window: the fetcher may fetch more
        if not self.settlement.before_run(job):
            return True
        pool = job.lane
        with self._cond:
            job.pool = pool
            first_start = job.started_at is None
            if first_start:
                job.started_at = time.time()
                if isinstance(job, BatchJob):
                    for member in job.members:
                        member.started_at = job.started_at
        if first_start and self.hooks.on_started:
            for started in job.members if isinstance(job, BatchJob) else (job,):
                self._call_hooks(self.hooks.on_started, started)
        delivery = job.delivery
        if isinstance(job, BatchJob):
            submitted = pool.submit(job.id, batch_message(job), {})
        elif job.ack_in_pool:
            submitted = pool.submit(job.id, delivery.message, delivery.delivery_info,
                                    ack_first=delivery)
        else:
            submitted = pool.submit(job.id, delivery.message, delivery.delivery_info)
        if not submitted:
            with self._cond:  # the slot vanished (a child died): put it back in front
                self._put_back(job)
            return False
        if self._terminates:
            self._retry_terminates()
        return True

    def _last_look(self, job: Job) -> Decision | None:
        if self.revokes is not None and job.task_id in self.revokes:
            return Decision(Verdict.REVOKED)
        for hook in self.hooks.before_run:
            decision = hook(job)
            if decision is not None:
                return decision
        return None

    def _set_aside(self, job: Job, decision: Decision) -> None:
        """A held job the last look stopped: deferred (its message goes back to the broker
        until ``not_before``, holding no slot), or dropped as revoked or expired."""
        self._forget(job, running=False)
        if decision.verdict is Verdict.DEFER:
            self._enact(job.delivery, decision, job.task)
            return
        self._drop(job.delivery, job.task, expired=decision.verdict is Verdict.EXPIRED)
        self.settlement.ack(job.delivery)

    def _trim_batch(self, batch: BatchJob) -> Decision | None:
        """The last look for each request of a batch: revoked and expired ones are dropped and
        never passed to the task. A Decision when none is left."""
        kept: list[Job] = []
        for member in batch.members:
            decision = self._last_look(member)
            if decision is None:
                kept.append(member)
                continue
            self._set_aside(member, decision)
        batch.members = kept
        if kept:
            batch.delivery = kept[0].delivery
            return None
        with self._cond:
            self._jobs.pop(batch.id, None)
        return Decision(Verdict.REVOKED)

    def _next_runnable(self) -> Job | None:
        ahead: bool | None = None  # whether the pool takes a job ahead: asked once a scan
        for index, job in enumerate(self._buffer):
            if job.lane.free_slots() <= 0:
                if not self._goes_ahead(job):
                    continue
                if ahead is None:
                    ahead = self.pool.ahead_slots() > 0
                if not ahead:
                    continue
            del self._buffer[index]
            return job
        return None

    def _goes_ahead(self, job: Job) -> bool:
        """Whether ``job`` may be sent ahead to a busy pool process (``ahead_slots``): only one
        whose early ack that process sends as it starts it (prefork on a leasing broker), so
        a process that ends before starting it leaves it unacked or finds out (NOT_STARTED)."""
        return (self._pool_acks_ahead and job.lane is self.pool and not job.late
                and not job.acked and not isinstance(job, BatchJob))

    def waiting_jobs(self) -> list[Job]:
        """The jobs waiting in the buffer for their turn (a snapshot)."""
        with self._cond:
            return list(self._buffer)

    def revoked_now(self, job: Job) -> set[str]:
        """Which of ``job``'s task ids (a batch's: its requests') were revoked a moment ago,
        read from the store now in one round trip."""
        if self.revokes is None:
            return set()
        ids = [m.task_id for m in job.members] if isinstance(job, BatchJob) else [job.task_id]
        return self.revokes.check_stored(ids)

    def drop_revoked(self, job: Job, revoked: set[str]) -> bool:
        """``job``, found revoked as it was about to start, is dropped (stored as REVOKED, acked
        if its early ack had not gone out); of a batch, only its revoked requests, never passed
        to the task. True when something is left to run."""
        if isinstance(job, BatchJob):
            for member in [m for m in job.members if m.task_id in revoked]:
                self._set_aside(member, Decision(Verdict.REVOKED))
            job.members = [m for m in job.members if m.task_id not in revoked]
            if job.members:
                job.delivery = job.members[0].delivery
                return True
            self._forget(job)
            return False
        self._forget(job)
        self._drop(job.delivery, job.task)
        if not job.acked:
            self.settlement.ack(job.delivery)
        return False

    def unconfirmed_ack(self, job: Job, reply: list[bool] | None) -> bool:
        """An early ack that was not confirmed. True: run the task all the same (the ack did
        happen); False: it will not run here (given back, or held by another worker now)."""
        if reply is not None:  # the broker answered: this worker's lease had been lost
            logger.warning("Task %s: the lease ran out before it started; another worker has it",
                           job.task_id)
            self._forget(job)
            return False
        try:  # no answer: find out whether the ack went through, by giving the message back
            requeued = self.transport.reject(job.delivery, requeue=True)
        except Exception:
            logger.exception("Task %s: broker unreachable; it waits in the buffer", job.task_id)
            with self._cond:  # still leased, still ours: try again in a moment
                job.acked = False
                self._put_back(job)
                self._cond.wait(0.5)
            return False
        if requeued:
            self._forget(job)
            return False
        return True  # the lease was gone: the ack had gone through, so this worker runs it

    def _forget(self, job: Job, *, running: bool = True) -> None:
        with self._cond:
            if running:
                self._leave_running(job)
            self._jobs.pop(job.id, None)
            self._wake_all()

    def _wake_all(self) -> None:
        """Hold ``_cond``. Something changed that any waiting thread may act on."""
        self._cond.notify_all()
        self._fetch_cond.notify_all()

    def _put_back(self, job: Job) -> None:
        """Hold ``_cond``. A job that was to start did not: first in line again, not running."""
        self._leave_running(job)
        job.pool = None
        self._buffer.appendleft(job)

    def _leave_running(self, job: Job) -> None:
        """Hold ``_cond``. The job stops counting as running (it ended, or it goes back)."""
        self._running -= 1
        if job.outside_window:
            self._running_outside -= 1

    # ---- outcomes -------------------------------------------------------------------------------
    def on_done(self, job_id: int, outcome: Outcome) -> None:
        """Pool callback: settle the message per the outcome (the result is already recorded)."""
        if outcome.ending is Ending.NOT_STARTED:
            self._not_started(job_id, outcome)
            return
        if outcome.ending is Ending.REVOKED:
            self._revoked_in_pool(job_id)
            return
        with self._cond:
            job = self._jobs.pop(job_id, None)
            starts_next = False
            if job is not None:
                self._leave_running(job)
                starts_next = self._pool_starts_next and job.pool is self.pool
                job.pool = None
            self.processed += 1
            if outcome.state == states.FAILURE:
                self.failed += 1
            if not starts_next or self._stop.is_set():
                self._cond.notify_all()  # a slot freed: the dispatch thread starts what waits
            if self._may_fetch():
                self._fetch_cond.notify()
        if job is None:
            logger.error("outcome for unknown job %s (task %s)", job_id, outcome.task_id)
            return
        if isinstance(job, BatchJob):
            self._settle_batch(job, outcome)
            return
        for hook in self.hooks.after_outcome:
            try:
                hook(job, outcome)
            except Exception:
                logger.exception("extension %r failed after task %s", hook, job.task_id)
        self._settle(job, outcome)

    def _not_started(self, job_id: int, outcome: Outcome) -> None:
        """The pool process's early ack was not confirmed, so the task did not start: the same
        choice as for an early ack the consumer sends itself (``unconfirmed_ack``)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                logger.error("outcome for unknown job %s (task %s)", job_id, outcome.task_id)
                return
            job.pool = None
            job.ack_in_pool = False
        reply = [False] if outcome.reason == LEASE_LOST else None
        if self.unconfirmed_ack(job, reply):  # the ack had gone through: it runs, acked
            with self._cond:
                self._put_back(job)
                self._cond.notify_all()

    def _revoked_in_pool(self, job_id: int) -> None:
        """The pool process acked the job and found it revoked: it never started, and is
        dropped as a job found revoked at its start is."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                logger.error("outcome for unknown job %s (revoked)", job_id)
                return
            job.pool = None
        if self.revokes is not None:
            self.revokes.add([job.task_id])
        self.drop_revoked(job, {job.task_id})

    def _gave_back_unstarted(self, job: Job) -> bool:
        """A job whose pool process was to send its early ack ended outside the task's code
        (the process died or was killed: hard limit, terminate, cold shutdown). If that ack never
        went out, the task never started: its message goes back to the queue and nothing is
        stored. Giving it back is how to tell: the broker refuses when the ack had gone through
        (the lease is gone), and then the ending is recorded as for any started task."""
        try:
            requeued = self.transport.reject(job.delivery, requeue=True)
        except Exception:
            logger.exception("Task %s: could not find out whether it started", job.task_id)
            return False
        if requeued:
            logger.warning("Task %s never started (its pool process ended before its early ack "
                           "went out): it goes back to the queue", job.task_id)
        return requeued

    def _settle_batch(self, batch: BatchJob, outcome: Outcome) -> None:
        """Each request of a batch is settled as a task of its own: with its own outcome, or,
        when the batch call itself was cut short (time limit, lost process, terminate), with
        that ending. Acks go out together."""
        ended = dict(outcome.members or ())
        with self._cond:  # one wake-up for the whole batch
            for member in batch.members:
                self._jobs.pop(member.id, None)
            self._wake_all()
        acks: list[Delivery] = []
        for member in batch.members:
            own = ended.get(member.id)
            if own is None:  # the batch did not run to its end
                own = dataclasses.replace(outcome, task_id=member.task_id, members=None,
                                          pending=None)
            elif own.state == states.FAILURE:
                self.failed += 1
            for hook in self.hooks.after_outcome:
                try:
                    hook(member, own)
                except Exception:
                    logger.exception("extension %r failed after task %s", hook, member.task_id)
            if own.ending in SETTLED_BY_ACK and not own.pending:
                acks.append(member.delivery)
            else:
                self._settle(member, own)
        # the batch's results (when its pool side left them to the policy), then its acks
        self.settlement.ack_all(acks, outcome.pending)
        self.processed += max(0, len(batch.members) - 1)  # on_done counted the batch once

    def _settle(self, job: Job, outcome: Outcome) -> None:
        settlement, delivery, ending = self.settlement, job.delivery, outcome.ending
        if outcome.pending:
            settlement.put(outcome.pending)
        if ending in SETTLED_BY_ACK:
            settlement.finished(job)
        elif (job.ack_in_pool and ending in ENDED_OUTSIDE_THE_TASK
              and self._gave_back_unstarted(job)):
            return
        elif ending is Ending.UNDECODABLE:
            reason = outcome.reason or "undecodable message"
            failure = outcome.failure or DecodeError(
                f"task {task_label(delivery.message.headers)}: the message cannot be decoded "
                f"({reason}); check the client's serializer and compression settings.")
            # already acked: keep a copy all the same, so nothing is lost
            self._dead_letter_failed(delivery, reason, failure, held=not job.acked,
                                     task=job.task)
        elif ending is Ending.WORKER_LOST:
            if job.holds_lease and self.reject_on_worker_lost:
                self._requeue(delivery)
                return
            self._store_failure(WorkerLostError(outcome.reason or "worker lost"),
                                delivery.message)
            if job.holds_lease:
                settlement.ack(delivery)
        elif ending is Ending.TERMINATED:
            self._drop(delivery, job.task, terminated=True, signum=outcome.signum)
            if job.holds_lease:
                settlement.ack(delivery)
        elif ending is Ending.TIME_LIMIT:
            self._store_failure(TimeLimitExceeded(outcome.limit), delivery.message)
            if job.holds_lease:
                settlement.ack(delivery)
        elif job.acked:  # requeue, drop or internal error after an early ack: nothing to give back
            settlement.after_acked(job)
        elif ending is Ending.REJECTED_DROP:
            self._dead_letter(delivery, "rejected by the task (Reject, requeue=False)")
        else:  # REJECTED_REQUEUE, ABANDONED, and INTERNAL_ERROR: the outcome was not recorded,
            self._requeue(delivery)  # so it runs again (at-least-once)

    # ---- broker actions -------------------------------------------------------------------------
    def _requeue(self, delivery: Delivery) -> None:
        try:
            self.transport.reject(delivery, requeue=True)
        except Exception:
            logger.exception("could not requeue message %s", delivery.message.headers.get("id"))

    def _dead_letter(self, delivery: Delivery, reason: str, *, held: bool = True) -> str | None:
        """Set the message aside with ``reason`` (``held``: removing the held delivery in the
        same step; else a copy of a message already acked). Returns the dead letter's id, ""
        when the lease had gone to another holder (who settles it), None when the broker keeps
        no dead letters (the message is rejected)."""
        transport = self.transport
        if not isinstance(transport, DeadLetterStore):
            logger.error("Message %s can never run (%s), and broker %r keeps no dead letters: "
                         "it is rejected", delivery.message.headers.get("id"), reason,
                         type(transport).__name__)
            if held:
                transport.reject(delivery, requeue=False)
            return None
        return transport.dead_letter(delivery.queue, delivery.message, reason,
                                     delivery=delivery if held else None)

    def _dead_letter_failed(self, delivery: Delivery, reason: str, failure: BaseException, *,
                            held: bool = True, task: Any = None) -> None:
        """Every dead-lettering of a message that can no longer run: the dead letter is kept
        first, then ``failure`` is stored as the task's result (when the message has an id, a
        result store is configured and the result is not ignored), saying where the message is,
        so its caller learns at once instead of waiting forever. Not its chord, chain or
        errbacks: the dead letter can still be replayed."""
        letter_id = self._dead_letter(delivery, reason, held=held)
        if self.hooks.on_dropped and letter_id != "":
            self._call_hooks(self.hooks.on_dropped, Dropped(
                delivery, task, "dead_letter", failure=failure))
        message = delivery.message
        if letter_id == "" or not message.headers.get("id") or not self.app.backend.persistent:
            return
        if not wants_result(message.headers.get("ignore_result"), task or self.app.tasks.get(
                message.headers.get("task"))):
            return
        app_option = f"-A {self.app_spec} " if self.app_spec else ""
        if not letter_id:
            where = ("The broker keeps no dead letters: the message was discarded; send it "
                     "again after fixing.")
        elif replay_can_fix(failure):
            where = (f"The message is in the dead-letter store: `celeriac {app_option}dlq replay "
                     f"{letter_id}` after fixing.")
        else:  # the same bytes would fail the same way: only a new message can run
            where = (f"The sender must send it again; the original is kept in the dead-letter "
                     f"store ({letter_id}) for inspection: `celeriac {app_option}dlq show "
                     f"{letter_id}`.")
        self._store_failure(_with_note(failure, where), message, followups_too=False)

    def _store_failure(self, exc: BaseException, message: Message, *,
                       followups_too: bool = True) -> None:
        """Record a task that failed outside the task's own code (time limit, lost worker, unknown
        task): its state and, unless told otherwise, its chord, chain and errbacks."""
        request = self._request_of(message)
        headers = message.headers
        store = wants_result(headers.get("ignore_result"), self.app.tasks.get(headers.get("task")))
        try:
            if followups_too:
                followups.on_failure(self.app, request, exc, None, store=store)
            elif store:
                self.app.backend.mark_as_failure(request.id, exc, None, request=request)
        except Exception:
            logger.exception("could not store the failure of task %s", request.id)

    # ---- revokes --------------------------------------------------------------------------------
    def _revoke_loop(self) -> None:
        assert self.revokes is not None
        while not self._stop.wait(0.2):
            try:
                self.revokes.sync()
            except Exception:
                logger.exception("could not sync revokes")
            if self._terminates:
                self._retry_terminates()

    def _terminate(self, task_id: str, signum: int) -> None:
        """A revoke with terminate=True: stop the task if it is running here."""
        with self._cond:
            held = [job for job in self._jobs.values() if
                    job.task_id == task_id or any(task_id in hook(job)
                                                  for hook in self.hooks.revoked_with)]
            running = [job for job in held if job.pool is not None]
            for job in held:
                if job.pool is None and job.task_id == task_id:
                    # it may be past its last look, on its way to its pool: the terminate
                    # waits for it there (one the last look drops is forgotten)
                    self._terminates[job.id] = signum
        for job in running:
            self._terminate_job(job, signum, task_id)

    def _terminate_job(self, job: Job, signum: int, task_id: str) -> None:
        pool = job.pool
        if pool is not None and pool.terminate(job.id, signum):
            logger.info("Terminating task %s (signal %s)%s", job.task_id, signum,
                        "" if job.task_id == task_id else f": {task_id} was revoked")
            with self._cond:
                self._note_terminated(job.task_id)
            return
        with self._cond:  # handed to its pool a moment ago, not yet where it can be stopped
            if job.id in self._jobs:
                self._terminates[job.id] = signum

    def _retry_terminates(self) -> None:
        """Try again the terminates whose job has reached its pool since; forget those whose
        job is gone (ended, or dropped by its last look)."""
        with self._cond:
            due = []
            for job_id in list(self._terminates):
                job = self._jobs.get(job_id)
                if job is None or job.pool is not None:
                    due.append((job, self._terminates.pop(job_id)))
        for job, signum in due:
            if job is not None:
                self._terminate_job(job, signum, job.task_id)

    def _note_terminated(self, task_id: str) -> None:
        """Hold ``_cond``. ``task_id`` was just stopped by a terminate (and the old ones are
        forgotten)."""
        now = time.monotonic()
        horizon = now - TERMINATED_MEMORY
        terminated = self._terminated
        for old in [t for t, when in terminated.items() if when < horizon]:
            del terminated[old]
        terminated[task_id] = now

    def recently_terminated(self, task_ids: Iterable[str]) -> set[str]:
        """Those of ``task_ids`` a terminate stopped here in the last
        ``TERMINATED_MEMORY`` seconds."""
        horizon = time.monotonic() - TERMINATED_MEMORY
        with self._cond:
            return {t for t in task_ids if self._terminated.get(t, horizon - 1) >= horizon}

    # ---- leases ---------------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        """Renew the lease of every held message each ``renew_every`` seconds, until the worker
        has stopped and holds nothing (running tasks keep their leases through a warm shutdown)."""
        assert self.leases is not None
        next_renewal = time.monotonic() + self.renew_every
        while True:
            stopping = self._stop.is_set()
            if stopping and not self._jobs:
                return
            now = time.monotonic()
            if now >= next_renewal:
                with self._cond:
                    held = [job.delivery for job in self._jobs.values() if job.holds_lease]
                if held:
                    try:
                        self.leases.extend_lease(held)
                    except Exception:
                        logger.exception("lease renewal failed")
                next_renewal = now + self.renew_every
            wait = next_renewal - now
            if stopping:  # _stop is set, so waiting on it would return at once: sleep instead
                time.sleep(min(wait, 0.1))
            else:
                self._stop.wait(wait)




def replay_can_fix(failure: BaseException) -> bool:
    """Whether replaying a dead letter byte for byte can succeed once something is fixed on the
    worker side (content type accepted, task registered, delivery limit, a package installed).
    A malformed body (DecodeError) or a wrong shape (InvalidTaskError) stays so: the sender must
    send it again. A failure may say otherwise with a ``replayable`` attribute."""
    replayable = getattr(failure, "replayable", None)
    if replayable is not None:
        return bool(replayable)
    return not isinstance(failure, (DecodeError, InvalidTaskError))


def _with_note(exc: BaseException, note: str) -> BaseException:
    """``exc`` with ``note`` added to its message (an exception of the same class); ``exc``
    itself when its message is not one text (``NotRegistered(name)`` stays as Celery has it)."""
    if isinstance(exc, KeyError) or len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return exc
    try:
        noted = type(exc)(f"{exc.args[0]} {note}")
    except Exception:  # noqa: BLE001 - a class that takes other arguments: keep it as it is
        return exc
    noted.__cause__ = exc.__cause__
    return noted
