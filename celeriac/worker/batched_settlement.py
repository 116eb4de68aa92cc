"""The solo pool on a broker that shares no connection with the result store (RabbitMQ; any
broker with a store elsewhere): results sent in batches, revokes checked for every waiting job
at once.

Layer: worker (a policy of worker/settlement.py, chosen by its ``choose``). Under the general
``Settlement`` a solo worker on RabbitMQ with Redis results waited, in the only thread that runs
tasks, for a result round trip per task (the ``SET``) and, in the fetch thread, for a revoke
round trip per fetch (the ``MGET``). Here:

- a success's result write and chord count are kept when the task ends (early-acked tasks only:
  with ``acks_late`` the executor writes the result itself, before the ack), and sent together,
  in one call to the store, when the dispatch thread has nothing to run, or, once a job starts
  while results are kept, ``FLUSH_AFTER`` seconds after the first of them was kept, by a flusher
  thread (so a long task never holds back the results of the tasks before it, and a lone task's
  result goes out at once, with no other thread woken);
- the revoke check before a job starts reads the stored revokes of that job and of every job
  still waiting in the buffer, in one round trip; a job a previous start checked starts with no
  round trip. Every check still comes after its job was fetched, so a revoke stored before the
  fetch (and, for most jobs, a while after it) stops the task, as the check at fetch did before;
- that check carries the results kept so far, written before its read in the same round trip
  (``write_results_then_mget``; chord counts are left to the flusher), so in a drain results
  mostly need no round trip of their own and the flusher is rarely woken; and while jobs wait
  behind the one starting, it blocks for its reply instead of polling for it
  (``redis_wire.blocking_replies``): on a busy machine the poll cost ~40 µs of CPU a check, a
  fifth of them the whole ``busy_poll``, CPU the jobs behind it (and Redis) need. A lone task's
  check still polls;
- on a broker that pushes deliveries ahead (RabbitMQ: ``PushedDeliveries``) a job's start,
  when half the window is free, first takes into the buffer what the broker pushed meanwhile,
  with a fetch that does not wait (a read of the socket), so that start's revoke check covers
  those jobs too; the fetch thread fetches only when the buffer ran dry. Handing the messages
  over from the fetch thread, one or two a fetch, cost more CPU (wake-ups, GIL hand-offs)
  than reading them.

Crash windows: a result kept but not sent when the worker is killed is lost; its message was
acked before the task ran (at most once, as a crash during the task would lose it too). A warm
shutdown sends everything kept. A flush that fails is tried again, whole (result writes and
chord counts are safe to repeat), ``IDLE_FLUSH_RETRY`` seconds later; results whose ride with
a check failed go to the flusher, and the check is made again on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..transport.base import PushedDeliveries
from ..utils import redis_wire
from .batching import BatchJob
from .pending import PendingWrites
from .settlement import IDLE_FLUSH_RETRY, Settlement

if TYPE_CHECKING:
    from .consumer import Consumer
    from .job import Job

logger = logging.getLogger("celeriac.worker")

#: seconds a kept result waits at most for the dispatch thread to go idle before the flusher
#: thread sends it (with every other result kept meanwhile)
FLUSH_AFTER = 0.002


class BatchedSoloSettlement(Settlement):
    """Solo pool, no connection shared with the store: kept results go out in batches; one
    revoke check covers the buffer."""

    collects_writes = True
    checks_revokes_at_start = True
    starts_from_any_thread = False

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer)
        self._kept: list[PendingWrites] = []
        self._kept_since = 0.0  # monotonic time the oldest kept batch was kept
        self._retry_at = 0.0  # after a failed flush, not before this (monotonic)
        self._kept_cond = threading.Condition(threading.Lock())
        #: the flusher thread is counting down to a flush (a job started while results were
        #: kept); left alone when the dispatch thread is about to go idle and flush them itself
        self._armed = False
        self._closing = False
        self._flusher: threading.Thread | None = None
        #: ids of waiting jobs whose revokes an earlier start read (after they were fetched)
        self._checked: set[int] = set()
        #: a broker that pushes deliveries ahead (RabbitMQ): a job's start takes what arrived
        #: (``_refill``), so the fetch thread works only when the buffer runs dry
        self.refills_at_start = isinstance(self.transport, PushedDeliveries)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self._flusher = threading.Thread(target=self._flush_loop, name="celeriac-results",
                                         daemon=True)
        self._flusher.start()

    def close(self) -> None:
        """Every kept result is sent (tried a few times) before the worker exits."""
        with self._kept_cond:
            self._closing = True
            self._kept_cond.notify()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        for _ in range(3):
            if not self._kept or self._send_kept():
                break
            time.sleep(IDLE_FLUSH_RETRY)
        if self._kept:
            logger.error("could not store the results of %d task(s) before the worker stopped; "
                         "they are lost", sum(len(p.results) for p in self._kept))
        super().close()

    # ---- the points the consumer calls ----------------------------------------------------------
    def before_run(self, job: Job) -> bool:
        if not job.outside_window:
            if self.refills_at_start:
                self._refill()  # first: the check below covers what it takes
            if not self._check_revokes(job):
                return False
        if self._kept and not self._armed:
            self._arm()  # this job holds the dispatch thread: the flusher sends them
        return super().before_run(job)

    def _arm(self) -> None:
        with self._kept_cond:
            if self._kept and not self._armed:
                self._armed = True
                self._kept_cond.notify()

    def _refill(self) -> None:
        """Take into the buffer what the broker pushed since the last fetch, with a fetch that
        does not wait (a read of the socket, no round trip), when half the window is free. On
        RabbitMQ the fetch thread took them a message or two at a time, each a hand-over
        between threads that cost more CPU than the message's own reading."""
        consumer = self.consumer
        room = consumer.claim_refill()
        if not room:
            return
        try:
            try:
                deliveries = self.transport.fetch(consumer.queues, room, 0.0)
            except Exception as exc:  # the fetch thread meets the broker's trouble and logs it
                logger.debug("could not refill the buffer: %r", exc)
                return
            if deliveries:
                consumer.receive(deliveries)
        finally:
            consumer.refill_done()

    def _check_revokes(self, job: Job) -> bool:
        """The revoke check of ``job`` (and of the jobs waiting behind it, when it is due). False
        when nothing of ``job`` is left to run."""
        consumer = self.consumer
        if consumer.revokes is None:
            return True
        if job.id in self._checked:
            self._checked.discard(job.id)
            return True
        waiting = consumer.waiting_jobs()
        ids = _task_ids(job) + [task_id for other in waiting for task_id in _task_ids(other)]
        try:
            if waiting:  # a drain: CPU for the jobs behind it, not for polling for the reply
                with redis_wire.blocking_replies():
                    revoked = self._check_with_kept(ids)
            else:  # a lone task: its reply as soon as it comes
                revoked = self._check_with_kept(ids)
        except Exception:
            logger.exception("could not read revokes; relying on the last sync")
            revoked = set()
        else:
            # the jobs behind it were checked now: their own start needs no round trip (a job
            # dropped before it starts leaves its id here until the next check replaces it)
            self._checked = {other.id for other in waiting}
        if revoked & set(_task_ids(job)):
            return consumer.drop_revoked(job, revoked)
        return True

    def _check_with_kept(self, ids: list[str]) -> set[str]:
        """The revoke check of ``ids``, carrying the kept results in its round trip where the
        store sends both in one (``writes_ride_with_reads``): no round trip of their own, and no
        flusher woken for them. Kept chord counts leave it to the flusher (a count may fire a
        chord body, which must find every result stored). If that round trip fails the results
        are kept again for the flusher, and the check is made once more on its own."""
        revokes = self.consumer.revokes
        assert revokes is not None
        if not revokes.backend.writes_ride_with_reads:
            return revokes.check_stored(ids)
        with self._kept_cond:
            batch = self._kept
            if any(pending.chord_counts for pending in batch):
                batch = []
            else:
                self._kept = []
        if not batch:
            return revokes.check_stored(ids)
        writes = [write for pending in batch for write in pending.results]
        try:
            return revokes.check_stored(ids, writes)
        except Exception:
            logger.warning("could not send %d kept result(s) with the revoke check; they are "
                           "sent on their own", len(writes), exc_info=True)
            self._keep_again(batch, retry=False)
        return revokes.check_stored(ids)

    def put(self, pending: PendingWrites) -> None:
        """A finished task's writes: kept for the next batch."""
        with self._kept_cond:
            if not self._kept:
                self._kept_since = time.monotonic()
            self._kept.append(pending)

    def wants_flush(self) -> bool:
        return bool(self._kept) and time.monotonic() >= self._retry_at

    def flush(self) -> None:
        """The idle dispatch thread sends what is kept."""
        self._send_kept()

    # ---- sending --------------------------------------------------------------------------------
    def _send_kept(self) -> bool:
        """Send every kept write in one call to the store (then the chord counts); on failure
        they are kept again, ahead of newer ones. False if that happened."""
        with self._kept_cond:
            batch, self._kept = self._kept, []
        if not batch:
            return True
        merged = PendingWrites()
        for pending in batch:
            merged.results.extend(pending.results)
            merged.chord_counts.extend(pending.chord_counts)
        try:
            merged.send(self.consumer.app)
        except Exception:
            logger.exception("could not store %d task result(s); trying again in %.0f s",
                             len(merged.results), IDLE_FLUSH_RETRY)
            self._keep_again(batch, retry=True)
            return False
        return True

    def _keep_again(self, batch: list[PendingWrites], *, retry: bool) -> None:
        """Writes whose sending failed are kept again, ahead of newer ones, and the flusher
        sends them (``retry``: not before ``IDLE_FLUSH_RETRY`` seconds, even while a long task
        runs)."""
        with self._kept_cond:
            if not self._kept:
                self._kept_since = time.monotonic()
            self._kept[:0] = batch
            if retry:
                self._retry_at = time.monotonic() + IDLE_FLUSH_RETRY
            self._armed = True
            self._kept_cond.notify()

    def _flush_loop(self) -> None:
        """Once armed, send kept results ``FLUSH_AFTER`` seconds after the first of them was
        kept, unless the idle dispatch thread sent them first."""
        cond = self._kept_cond
        while True:
            with cond:
                while not self._armed and not self._closing:
                    cond.wait()
                if self._closing:
                    return  # close() sends the rest
                while self._kept and not self._closing:
                    wait = max(self._kept_since + FLUSH_AFTER, self._retry_at) - time.monotonic()
                    if wait <= 0:
                        break
                    cond.wait(wait)
                self._armed = False
            self._send_kept()


def _task_ids(job: Job) -> list[str]:
    """The task ids a job runs (a batch's: its requests')."""
    return [m.task_id for m in job.members] if isinstance(job, BatchJob) else [job.task_id]
