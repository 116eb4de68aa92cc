"""How the worker settles messages with the broker: one policy, chosen once per worker.

Layer: worker. ``choose`` picks the policy from the broker's declared capabilities and the pool:

- ``Settlement`` (any broker): an early ack is sent, and confirmed, before the task starts; the
  acks of finished ``acks_late`` tasks go out in batches from one thread.
- ``InlineSettlement`` (thread pool, on a broker that shares each thread's connection with the
  result store): the pool thread that ran the task stages its result write on that connection
  and acks right after it, so result and ack travel in one round trip, in that order.
- ``InlineSoloSettlement`` (solo pool, same brokers): the round trip before task *n* starts
  carries task *n-1*'s result (and its ack, with ``acks_late``), task *n*'s early ack, a revoke
  check and, when half the window is free, the fetch that refills the buffer. A batch's results
  and acks ride the same way, as one transaction (``ack_with_writes_later``): the acks take
  effect only with the results.

A crash before a batched or staged ack is sent means the message is delivered again:
at-least-once holds. An early ack is confirmed before its task starts, so an early-acked task
never runs twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..backends.base import StagedWrites
from ..transport.base import Leases, SharedConnectionSettling

if TYPE_CHECKING:
    from ..transport.base import Delivery
    from .consumer import Consumer
    from .job import Job
    from .pending import PendingWrites

logger = logging.getLogger("celeriac.worker")

#: seconds between attempts to send staged results while the broker cannot be reached
IDLE_FLUSH_RETRY = 1.0
#: tries a pool thread still makes to send a staged result once the worker is stopping
STOPPING_FLUSH_ATTEMPTS = 3


class Settlement:
    """Batched acks from one thread; early acks confirmed before the task starts."""

    #: whether the pool's runner hands a success's writes back in ``Outcome.pending``
    collects_writes = False
    #: whether each sync task's revoke check rides with its start (then ``_receive`` skips it)
    checks_revokes_at_start = False
    #: whether a task's start refills the buffer (then the fetch thread waits for it to run dry)
    refills_at_start = False
    #: whether a job may start from a thread other than the dispatch thread (a pool's own)
    starts_from_any_thread = True

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.transport = consumer.transport
        self._cond = threading.Condition()
        self._pending: list[Delivery] = []
        self._done = False
        self._acker: threading.Thread | None = None
        #: the pool's processes send early acks themselves: a broker whose acks are fenced by a
        #: lease token work from any connection (not AMQP's, bound to the consuming channel)
        self.pool_acks = (isinstance(self.transport, Leases)
                          and getattr(consumer.pool, "acks_before_start", False))

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._acker = threading.Thread(target=self._ack_loop, name="celeriac-acks", daemon=True)
        self._acker.start()

    def close(self) -> None:
        """Every settled message is acked before the worker exits."""
        with self._cond:
            self._done = True
            self._cond.notify()
        if self._acker is not None:
            self._acker.join(timeout=10)

    # ---- acks -----------------------------------------------------------------------------------
    def ack(self, delivery: Delivery) -> None:
        """Ack soon, together with others: one broker round trip for many tasks."""
        with self._cond:
            self._pending.append(delivery)
            self._cond.notify()

    def ack_all(self, deliveries: list[Delivery], writes: PendingWrites | None = None) -> None:
        """``ack`` for the requests of a batch whose outcomes are recorded: one wake-up of the
        acking thread for all of them, not one per request. ``writes``: the batch's results,
        left to the policy (``collects_writes``): stored first, now; if they cannot be, the
        requests are given back to run again instead of acked."""
        if writes:
            try:
                writes.send(self.consumer.app)
            except Exception:
                logger.exception("could not store the results of a batch of %d; its requests "
                                 "are given back to run again", len(deliveries))
                for delivery in deliveries:
                    try:
                        self.transport.reject(delivery, requeue=True)
                    except Exception:
                        logger.exception("could not give back message %s",
                                         delivery.message.headers.get("id"))
                return
        if deliveries:
            with self._cond:
                self._pending.extend(deliveries)
                self._cond.notify()

    def _ack_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._done:
                    self._cond.wait(0.5)
                batch, self._pending = self._pending, []
                finished = self._done and not batch
            if finished:
                return
            try:
                self.transport.ack(batch)
            except Exception:
                logger.exception("could not ack %d message(s); they will be delivered again",
                                 len(batch))

    # ---- the points the consumer calls ----------------------------------------------------------
    def before_run(self, job: Job) -> bool:
        """Early ack, confirmed before the task starts: a crash from here on loses this task but
        never runs it twice (Celery's at-most-once for early acks). False: it must not run here."""
        if job.late or job.acked:  # acked already: it was put back after its pool slot vanished
            return True
        job.acked = True
        if self.pool_acks and job.lane is self.consumer.pool:
            # the child sends and checks it before the task starts, on its own connection:
            # no broker round trip on the parent's hot path (Outcome NOT_STARTED if refused)
            job.ack_in_pool = True
            return True
        try:
            confirmed: list[bool] | None = self.transport.ack([job.delivery])
        except Exception:
            logger.exception("could not ack task %s before it starts", job.task_id)
            confirmed = None
        if confirmed and confirmed[0]:
            return True
        return self.consumer.unconfirmed_ack(job, confirmed)

    def put(self, pending: PendingWrites) -> None:
        """Writes a finished task left for the consumer: sent now."""
        pending.send(self.consumer.app)

    def finished(self, job: Job) -> None:
        """The task's outcome is recorded: ack it if it still holds its lease."""
        if not job.acked:
            self.ack(job.delivery)
        else:
            self.after_acked(job)

    def after_acked(self, job: Job) -> None:
        """A job that was acked early ended: nothing left to send."""

    def wants_flush(self) -> bool:
        """Whether the idle dispatch thread has staged writes to send."""
        return False

    def flush(self) -> None:
        """Send what this thread staged (inline policies)."""


class InlineSettlement(Settlement):
    """Thread pool on a shared connection: result and ack in one round trip from the pool
    thread."""

    collects_writes = True

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer)
        backend = consumer.app.backend
        assert isinstance(backend, StagedWrites)
        self.backend: StagedWrites = backend
        self.wire: SharedConnectionSettling = consumer.transport  # type: ignore[assignment]

    def put(self, pending: PendingWrites) -> None:
        pending.stage(self.consumer.app, self.backend)

    def finished(self, job: Job) -> None:
        if job.outside_window:
            self._finished_async(job)
        elif not job.acked:
            try:  # one round trip: the staged result write goes out just before the ack
                self.transport.ack([job.delivery])
            except Exception:
                logger.exception("could not ack message %s; it will be delivered again",
                                 job.task_id)
        else:
            self.after_acked(job)

    def _finished_async(self, job: Job) -> None:
        """An ``async def`` task ended on the event loop's thread, which stages nothing and whose
        connection nobody flushes: its ack goes out batched, as with any broker."""
        if not job.acked:
            self.ack(job.delivery)

    def ack_all(self, deliveries: list[Delivery], writes: PendingWrites | None = None) -> None:
        """A batch's results and acks go out from the pool thread at once, in one round trip
        and one transaction (``_stage_batch``)."""
        if not writes:
            super().ack_all(deliveries)
            return
        self._stage_batch(deliveries, writes)
        self._flush_own(f"a batch of {len(deliveries)}")

    def _stage_batch(self, deliveries: list[Delivery], writes: PendingWrites) -> None:
        """Stage a batch's results with its acks after them, all or nothing (the requests of
        a batch are acked only with their results stored, as with ``acks_late``). ``writes``
        holds results only: a batch whose requests count in a chord is written by ``run_batch``
        itself (a chord count's reply is read as it comes, never inside a transaction)."""
        results = writes.results
        self.wire.ack_with_writes_later(deliveries, lambda: self.backend.stage_results(results))

    def after_acked(self, job: Job) -> None:
        self._flush_own(f"task {job.task_id}")

    def _flush_own(self, what: str) -> None:
        """Send what this pool thread staged: it rides only on its own connection, which
        nothing else flushes, so it keeps trying itself (the idle dispatch loop cannot do it for
        it)."""
        attempts_left = STOPPING_FLUSH_ATTEMPTS
        while True:
            try:
                self.wire.flush()
                return
            except Exception:
                if self.consumer.stopping:
                    attempts_left -= 1
                    if attempts_left <= 0:
                        logger.error("could not store the result of %s before the worker "
                                     "stopped; it is lost", what)
                        return
                logger.exception("could not store the result of %s; trying again in %.0f s",
                                 what, IDLE_FLUSH_RETRY)
                time.sleep(IDLE_FLUSH_RETRY)

class InlineSoloSettlement(InlineSettlement):
    """Solo pool on a shared connection: everything rides with the next task's round trip."""

    checks_revokes_at_start = True
    refills_at_start = True
    starts_from_any_thread = False  # what it stages rides on the dispatch thread's connection

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer)
        self._unflushed = False  # the dispatch thread holds staged writes
        self._retry_at = 0.0  # after a failed flush, not before this (monotonic)

    def before_run(self, job: Job) -> bool:
        if job.outside_window:
            return super().before_run(job)
        consumer = self.consumer
        refill = consumer.claim_refill()
        acked: list[list[bool] | None] = []
        first_ack = not job.late and not job.acked
        if first_ack:
            job.acked = True
        try:
            if refill:
                self.wire.fetch_later(consumer.queues, refill, consumer.receive)
            if first_ack:
                self.wire.ack_later([job.delivery], on_reply=acked.append)
            revoked = consumer.revoked_now(job)  # a batch: its requests' ids
            self.wire.flush()  # a no-op when the check above carried everything
            self._unflushed = False
        except Exception:
            logger.exception("could not ack or check task %s before it starts", job.task_id)
            revoked = set()
        finally:
            if refill:
                consumer.refill_done()
        if first_ack and not (acked and acked[0] and acked[0][0]):
            return consumer.unconfirmed_ack(job, acked[0] if acked else None)
        if revoked:
            return consumer.drop_revoked(job, revoked)
        return True

    def finished(self, job: Job) -> None:
        if job.outside_window:
            self._finished_async(job)
            return
        if not job.acked:
            self.wire.ack_later([job.delivery])  # with the next task's round trip, or idle
        self._unflushed = True

    def after_acked(self, job: Job) -> None:
        self._unflushed = True  # the result waits for the next round trip, or the idle flush

    def ack_all(self, deliveries: list[Delivery], writes: PendingWrites | None = None) -> None:
        """A batch's results (``writes``; none when its pool side stored them) and its acks,
        one transaction riding with this thread's next round trip (the next task's start), or
        the idle flush."""
        if writes:
            self._stage_batch(deliveries, writes)
        elif deliveries:
            self.wire.ack_later(deliveries)
        else:
            return
        self._unflushed = True

    def wants_flush(self) -> bool:
        return self._unflushed and time.monotonic() >= self._retry_at

    def flush(self) -> None:
        """Send the dispatch thread's staged writes; if the broker cannot be reached they stay
        staged and the idle dispatch loop tries again later."""
        try:
            self.wire.flush()
            self._unflushed = False
        except Exception:
            logger.exception("could not store staged task results; trying again in %.0f s",
                             IDLE_FLUSH_RETRY)
            self._unflushed = True
            self._retry_at = time.monotonic() + IDLE_FLUSH_RETRY


def choose(transport: Any, backend: Any, *, in_process: bool,
           in_dispatcher: bool) -> type[Settlement]:
    """The policy for a worker: inline only where tasks run in this process's own threads
    (``in_process``; ``in_dispatcher``: in the dispatching thread itself, the solo pool) and the
    broker declares a connection shared with a result store that can stage writes on it; the
    solo pool on any other broker sends results in batches (worker/batched_settlement.py)."""
    shared = (isinstance(transport, SharedConnectionSettling)
              and isinstance(backend, StagedWrites)
              and transport.shares_connection_with(backend))
    if not (shared and in_process):
        if in_process and in_dispatcher:
            from .batched_settlement import BatchedSoloSettlement  # it builds on this module

            return BatchedSoloSettlement
        return Settlement
    return InlineSoloSettlement if in_dispatcher else InlineSettlement
