"""The consumer: fetch leased messages, check them, hand them to the pool, ack, renew leases.

Layer: worker (main process). Prefetch policy: the worker holds at most
``concurrency * worker_prefetch_multiplier`` messages (running + waiting), in ONE shared buffer;
whichever pool slot frees first takes the next message, so a long task never holds fetched work
hostage while other slots are idle. Waiting messages keep their broker lease (renewed here), so
they are never lost; ETA messages are handed back to the broker until due and hold no slot.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .. import signals, states
from ..canvas import followups
from ..exceptions import NotRegistered, TaskRevokedError
from ..protocol import serialization
from .executor import ACK, DROP, INTERNAL_ERROR, REQUEUE, Outcome
from .request import DEAD_LETTER, ReceivedRequest, parse_time, request_from_message
from .revokes import RevokedSet

if TYPE_CHECKING:
    from ..app import Celery
    from ..protocol.message import Message
    from ..transport.base import Delivery

logger = logging.getLogger("celeriac.worker")

#: a delivery leased this many times without finishing is a poison message: dead-lettered
DEFAULT_MAX_DELIVERIES = 10
#: seconds between attempts to send deferred results while the broker cannot be reached
IDLE_FLUSH_RETRY = 1.0


class Consumer:
    """Moves messages from the transport to the pool and settles them afterwards."""

    def __init__(self, app: "Celery", *, queues: list[str], pool: Any, hostname: str,
                 prefetch_multiplier: int, async_pool: Any = None, inline: bool = False) -> None:
        self.app = app
        self.transport = app.transport
        self.queues = queues
        self.pool = pool
        self.async_pool = async_pool
        self.hostname = hostname
        conf = app.conf
        self.accept = serialization.normalize_accept(conf.accept_content)
        self.acks_late_default = bool(conf.task_acks_late)
        self.reject_on_worker_lost = bool(conf.task_reject_on_worker_lost)
        self.max_deliveries = int(conf.get("worker_max_deliveries") or DEFAULT_MAX_DELIVERIES)
        # The window counts messages held for the sync pool (waiting + running). ``async def``
        # tasks leave the window once they start: they run on the event loop, not in a slot.
        # A multiplier of 0 means "no limit", as in Celery (bounded here to stay sane).
        self.prefetch_limit = pool.limit * (prefetch_multiplier if prefetch_multiplier > 0 else 1000)
        # Fetch once half the window is free, not whenever one slot frees: fewer, fuller fetches.
        self.fetch_at = max(1, self.prefetch_limit // 2)
        self.renew_every = max(0.05, self.transport.visibility_timeout / 3.0)
        # Inline settling (the worker decides: the task runs in this process and the broker
        # shares each thread's connection with the result store, as Redis on one database
        # does): the thread that ran the task settles it itself, and what it deferred (an
        # early-acked task's result, an acks_late ack) travels with its next round trip (see
        # utils/redis_wire.py).
        self.inline = inline
        self.inline_early_ack = self.inline and getattr(pool, "runs_in_dispatcher", False)
        self._unflushed = False  # the dispatch thread may hold deferred result writes
        self._flush_retry_at = 0.0  # after a failed idle flush, not before this (monotonic)
        self._fetching = False  # a fetch is on its way (one at a time keeps the window honest)
        self._buffer: collections.deque[tuple[int, "Delivery", bool]] = collections.deque()
        self._jobs: dict[int, "Delivery"] = {}  # job id -> delivery, waiting or running
        self._late: dict[int, bool] = {}
        self._acked: set[int] = set()  # jobs acked early (their message no longer holds a lease)
        self._running = 0
        self._running_async = 0
        self._ack_cond = threading.Condition()
        self._ack_pending: list["Delivery"] = []
        self._acks_done = False
        self._acker: threading.Thread | None = None
        self._async_jobs: set[int] = set()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool_of: dict[int, Any] = {}  # running job id -> the pool running it
        self.revokes = (RevokedSet(app.backend, on_terminate=self._terminate)
                        if app.backend.persistent else None)
        self.processed = 0
        self.failed = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        loops = [(self._fetch_loop, "celeriac-fetch"), (self._dispatch_loop, "celeriac-dispatch"),
                 (self._renew_loop, "celeriac-leases")]
        self._acker = threading.Thread(target=self._ack_loop, name="celeriac-acks", daemon=True)
        self._acker.start()
        if self.revokes is not None:
            self.revokes.sync()  # revokes made before this worker started still count
            loops.append((self._revoke_loop, "celeriac-revokes"))
            loops.append((self._heartbeat_loop, "celeriac-heartbeat"))
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_consuming(self) -> None:
        """Warm shutdown, step 1: fetch nothing more and give unstarted messages back at once."""
        self._stop.set()
        with self._cond:
            waiting = list(self._buffer)
            self._buffer.clear()
            self._cond.notify_all()
        for job_id, delivery, _ in waiting:
            self._jobs.pop(job_id, None)
            self._late.pop(job_id, None)
            self._settle(delivery, REQUEUE)
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
        with self._ack_cond:  # every settled message is acked before the worker exits
            self._acks_done = True
            self._ack_cond.notify()
        if self._acker is not None:
            self._acker.join(timeout=10)

    @property
    def active(self) -> int:
        return self._running

    # ---- fetching -------------------------------------------------------------------------------
    def _room(self) -> int:
        return self.prefetch_limit - len(self._buffer) - (self._running - self._running_async)

    def _may_fetch(self) -> bool:
        """Hold ``_cond``. Room for a fetch, nobody fetching; with inline settling the dispatch
        thread refills the buffer itself while it works, so this thread waits for it to run dry."""
        return (self._room() >= self.fetch_at and not self._fetching
                and not (self.inline_early_ack and self._buffer))

    def _fetch_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            with self._cond:
                while not self._may_fetch() and not self._stop.is_set():
                    self._cond.wait(0.5)
                room = self._room()
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
                self._receive(deliveries)
            finally:
                with self._cond:
                    self._fetching = False

    def _receive(self, deliveries: list["Delivery"]) -> None:
        """Take fetched deliveries in: checked, then buffered (or settled at once)."""
        if self._stop.is_set():  # shutdown began during the fetch: give them back now
            for delivery in deliveries:
                self._settle(delivery, REQUEUE)
            return
        # One round trip per batch: revokes made a moment ago count too. With inline settling
        # each sync task is checked as it starts, in its ack's round trip; async ones are not.
        checked = [d for d in deliveries if not self.inline_early_ack or self._is_async(d)]
        if self.revokes is not None and checked:
            try:
                self.revokes.check_stored([d.message.headers.get("id") for d in checked
                                           if d.message.headers.get("id")])
            except Exception:
                logger.exception("could not read revokes; relying on the last sync")
        for delivery in deliveries:
                try:
                    self._accept_delivery(delivery)
                except Exception:
                    logger.exception("could not handle message %r; dead-lettering it",
                                     delivery.message.headers.get("id"))
                    self._dead_letter(delivery, "internal error while receiving the message")

    def _is_async(self, delivery: "Delivery") -> bool:
        task = self.app.tasks.get(delivery.message.headers.get("task"))
        return bool(task is not None and task.is_coroutine and self.async_pool is not None)

    def _accept_delivery(self, delivery: "Delivery") -> None:
        """Header-only checks; anything that can never run goes to the dead-letter store."""
        message = delivery.message
        headers = message.headers
        name, task_id = headers.get("task"), headers.get("id")
        if not name or not task_id:
            missing = "task" if not name else "id"
            logger.error("Received a message without a %r header (not a protocol 2 task message); "
                         "dead-lettered", missing)
            if signals.task_rejected.receivers:
                signals.task_rejected.send(sender=self, message=message, exc=None)
            self._dead_letter(delivery, f"invalid message: missing {missing!r} header")
            return
        if message.content_type not in self.accept:
            logger.error("Refusing task %s[%s]: content type %r is not in accept_content %s; "
                         "dead-lettered without deserializing", name, task_id,
                         message.content_type, sorted(self.accept))
            self._dead_letter(delivery, f"content type {message.content_type!r} not accepted")
            return
        task = self.app.tasks.get(name)
        if task is None:
            logger.error("Received unregistered task of type %r (id %s); dead-lettered. "
                         "Is the module that defines it imported by this worker?", name, task_id)
            if signals.task_unknown.receivers:
                signals.task_unknown.send(sender=self, name=name, id=task_id, message=message,
                                          exc=NotRegistered(name))
            # Dead-letter first: once the failure is visible, the message is already kept.
            self._dead_letter(delivery, f"unknown task name {name!r}")
            # Not its chord or errbacks: the dead letter can still be replayed once registered.
            self._store_failure(NotRegistered(name), message, followups_too=False)
            return
        if delivery.delivery_count > self.max_deliveries:
            logger.error("Task %s[%s] was delivered %d times without finishing; dead-lettered",
                         name, task_id, delivery.delivery_count)
            self._dead_letter(delivery, f"delivered {delivery.delivery_count} times (poison message)")
            return
        if self.revokes is not None and task_id in self.revokes:
            self._revoke(delivery, task, headers, terminated=False)
            return
        try:
            expires = parse_time(headers.get("expires"))
            eta = parse_time(headers.get("eta"))
        except (TypeError, ValueError) as exc:
            self._dead_letter(delivery, f"invalid eta/expires header: {exc}")
            return
        now = datetime.now(timezone.utc)
        if expires is not None and expires <= now:
            self._expire(delivery, task, task_id, headers)
            return
        if eta is not None and eta > now:
            logger.info("Task %s[%s] received, ETA %s", name, task_id, eta.isoformat())
            self.transport.defer(delivery, eta.timestamp())
            return
        logger.info("Task %s[%s] received", name, task_id)
        if signals.task_received.receivers:
            signals.task_received.send(sender=self, request=ReceivedRequest(
                delivery, self.hostname, self.accept))
        late = task.acks_late if task.acks_late is not None else self.acks_late_default
        job_id = next(self._ids)
        with self._cond:
            self._jobs[job_id] = delivery
            self._late[job_id] = late
            self._buffer.append((job_id, delivery, bool(task.is_coroutine)))
            self._cond.notify_all()

    def _expire(self, delivery: "Delivery", task: Any, task_id: str, headers: dict) -> None:
        logger.info("Discarding expired task %s[%s]", headers.get("task"), task_id)
        self._record_revoked(task, delivery.message, "expired", expired=True)
        self._settle(delivery, ACK)

    def _revoke(self, delivery: "Delivery", task: Any, headers: dict, *, terminated: bool,
                signum: int | None = None, settle: bool = True) -> None:
        logger.info("Discarding revoked task %s[%s]", headers.get("task"), headers.get("id"))
        self._record_revoked(task, delivery.message, "terminated" if terminated else "revoked",
                             terminated=terminated, signum=signum)
        if settle:
            self._settle(delivery, ACK)

    def _record_revoked(self, task: Any, message: "Message", reason: str, *,
                        expired: bool = False, terminated: bool = False,
                        signum: int | None = None) -> None:
        request = self._request_of(message)
        try:  # stored as REVOKED, and counted (as failed) by the chord it belongs to, if any
            followups.on_failure(self.app, request, TaskRevokedError(reason), None,
                                 store=not message.headers.get("ignore_result"),
                                 state=states.REVOKED)
        except Exception:
            logger.exception("could not store the revoke of task %s", request.id)
        if signals.task_revoked.receivers:
            signals.task_revoked.send(sender=task, request=request, terminated=terminated,
                                      signum=signum, expired=expired)

    def _request_of(self, message: "Message") -> Any:
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
            self.flush_results()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                item = None
                while item is None:
                    if self._stop.is_set() and not self._buffer:
                        return
                    item = self._next_runnable()
                    if item is None:
                        if self._unflushed and time.monotonic() >= self._flush_retry_at:
                            break  # idle: send deferred result writes first
                        self._cond.wait(0.05)
            if item is None:
                self.flush_results()
                continue
            with self._cond:
                job_id, delivery, is_async = item
                runs_async = is_async and self.async_pool is not None
                revoked = ((self.revokes is not None
                            and delivery.message.headers.get("id") in self.revokes)
                           or _expired(delivery.message.headers))
                if revoked:
                    self._jobs.pop(job_id, None)
                    self._late.pop(job_id, None)
                else:
                    self._running += 1
                    if runs_async:
                        self._running_async += 1
                        self._async_jobs.add(job_id)
                        self._cond.notify_all()  # it left the window: the fetcher may fetch more
                    late = self._late[job_id]
                    # a job put back after its early ack (its pool slot vanished) is not
                    # acked twice: the second ack would fail and give the task up
                    needs_ack = not late and job_id not in self._acked
                    if not late:
                        self._acked.add(job_id)
            if revoked:  # revoked, or expired, while it waited in the prefetch buffer
                headers = delivery.message.headers
                task = self.app.tasks.get(headers.get("task"))
                if _expired(headers):
                    self._expire(delivery, task, headers.get("id"), headers)
                else:
                    self._revoke(delivery, task, headers, terminated=False)
                continue
            if self.inline_early_ack and not runs_async:
                if self._start_inline(job_id, delivery, late):
                    continue
            elif needs_ack:
                # Early ack, confirmed before the task starts: a crash from here on loses this
                # task but never runs it twice (Celery's at-most-once for early acks).
                try:
                    confirmed: list[bool] | None = self.transport.ack([delivery])
                except Exception:
                    logger.exception("could not ack task %s before it starts",
                                     delivery.message.headers.get("id"))
                    confirmed = None
                if not (confirmed and confirmed[0]) and \
                        not self._unconfirmed(job_id, delivery, is_async, confirmed):
                    continue
            pool = self.async_pool if runs_async else self.pool
            with self._cond:
                self._pool_of[job_id] = pool
            delivery_info = {"routing_key": delivery.queue, "exchange": "",
                             "redelivered": delivery.redelivered,
                             "delivery_count": delivery.delivery_count}
            if not pool.submit(job_id, delivery.message, delivery_info):
                with self._cond:  # the slot vanished (a child died): put it back in front
                    self._leave_running(job_id)
                    self._pool_of.pop(job_id, None)
                    self._buffer.appendleft((job_id, delivery, is_async))
                    self._cond.wait(0.05)  # never spin: the pool needs a moment to replace it

    def _start_inline(self, job_id: int, delivery: "Delivery", late: bool) -> bool:
        """Solo pool, inline settling: one round trip before the task starts carries the previous
        task's result (and its ack, with acks_late), this task's early ack, and the check
        whether this task was revoked a moment ago. Returns True if it was (then it is done)."""
        task_id = delivery.message.headers.get("id")
        with self._cond:  # refill the buffer in the same round trip while there is room
            refill = self._room() if (self._room() >= self.fetch_at and not self._fetching
                                       and not self._stop.is_set()) else 0
            self._fetching = self._fetching or bool(refill)
        acked: list[list[bool] | None] = []
        try:
            if refill:
                self.transport.fetch_later(self.queues, refill, self._receive)
            if not late:
                self.transport.ack_later([delivery], on_reply=acked.append)
            revoked = self.revokes is not None and bool(self.revokes.check_stored([task_id]))
            self._flush_wires()  # a no-op when the check above carried everything
        except Exception:
            logger.exception("could not ack or check task %s before it starts", task_id)
            revoked = False
        finally:
            if refill:
                with self._cond:
                    self._fetching = False
                    self._cond.notify_all()
        if not late and not (acked and acked[0] and acked[0][0]):
            return not self._unconfirmed(job_id, delivery, False, acked[0] if acked else None)
        if not revoked:
            return False
        self._forget_job(job_id)
        headers = delivery.message.headers
        self._revoke(delivery, self.app.tasks.get(headers.get("task")), headers,
                     terminated=False, settle=late)
        return True

    def _unconfirmed(self, job_id: int, delivery: "Delivery", is_async: bool,
                     reply: list[bool] | None) -> bool:
        """An early ack that was not confirmed. True: run the task all the same (the ack did
        happen); False: it will not run here (given back, or held by another worker now)."""
        task_id = delivery.message.headers.get("id")
        if reply is not None:  # the broker answered: this worker's lease had been lost
            logger.warning("Task %s: the lease ran out before it started; another worker has it",
                           task_id)
            self._forget_job(job_id)
            return False
        try:  # no answer: find out whether the ack went through, by giving the message back
            requeued = self.transport.reject(delivery, requeue=True)
        except Exception:
            logger.exception("Task %s: broker unreachable; it waits in the buffer", task_id)
            with self._cond:  # still leased, still ours: try again in a moment
                self._leave_running(job_id)
                self._acked.discard(job_id)
                self._buffer.appendleft((job_id, delivery, is_async))
                self._cond.wait(0.5)
            return False
        if requeued:
            self._forget_job(job_id)
            return False
        return True  # the lease was gone: the ack had gone through, so this worker runs it

    def _forget_job(self, job_id: int) -> None:
        with self._cond:
            self._leave_running(job_id)
            self._jobs.pop(job_id, None)
            self._late.pop(job_id, None)
            self._acked.discard(job_id)
            self._cond.notify_all()

    def _leave_running(self, job_id: int) -> None:
        """Hold ``_cond``. The job stops counting as running (it ended, or it goes back)."""
        self._running -= 1
        if job_id in self._async_jobs:
            self._async_jobs.discard(job_id)
            self._running_async -= 1

    def _next_runnable(self) -> tuple[int, "Delivery", bool] | None:
        for index, item in enumerate(self._buffer):
            pool = self.async_pool if item[2] and self.async_pool is not None else self.pool
            if pool.free_slots() > 0:
                del self._buffer[index]
                return item
        return None

    def on_done(self, job_id: int, outcome: Outcome) -> None:
        """Pool callback: settle the message per the outcome (the result is already stored)."""
        with self._cond:
            delivery = self._jobs.pop(job_id, None)
            late = self._late.pop(job_id, False)
            self._pool_of.pop(job_id, None)
            acked = job_id in self._acked
            self._acked.discard(job_id)
            self._leave_running(job_id)
            self.processed += 1
            if outcome.state == states.FAILURE:
                self.failed += 1
            self._cond.notify_all()
        if delivery is None:
            logger.error("outcome for unknown job %s (task %s)", job_id, outcome.task_id)
            return
        if outcome.ack == DEAD_LETTER:
            reason = outcome.exc_repr or "undecodable message"
            if acked:  # already acked: keep a copy all the same, so nothing is lost
                self.transport.dead_letter(delivery.queue, delivery.message, reason)
            else:
                self._dead_letter(delivery, reason)
            return
        if outcome.ack == "lost":
            self._worker_lost(delivery, outcome, late and not acked)
            return
        headers = delivery.message.headers
        if outcome.ack == "terminated":
            signum = int(outcome.exc_repr) if (outcome.exc_repr or "").isdigit() else None
            self._revoke(delivery, self.app.tasks.get(headers.get("task")), headers,
                         terminated=True, signum=signum, settle=not acked)
            return
        if outcome.ack == INTERNAL_ERROR:
            if not acked:  # the outcome was not recorded: let it run again (at-least-once)
                self._settle(delivery, REQUEUE)
            elif self.inline:
                self.flush_results()  # a result deferred before the failure still goes out
            return
        if outcome.ack == "timeout":
            from ..exceptions import TimeLimitExceeded

            try:
                hard: Any = float(outcome.exc_repr or "")
            except ValueError:
                hard = outcome.exc_repr
            self._store_failure(TimeLimitExceeded(hard), delivery.message)
            if not acked:
                self._settle(delivery, ACK)
            return
        if not acked and outcome.ack == ACK and self.inline_early_ack:
            self.transport.ack_later([delivery])  # with the next task's round trip, or idle
            self._unflushed = True
        elif not acked:
            self._settle(delivery, outcome.ack, inline=self.inline)
        elif self.inline_early_ack:
            self._unflushed = True  # the result waits for the next round trip, or the idle flush
        elif self.inline:
            self.flush_results()  # a pool thread: nothing else will carry the result

    def flush_results(self) -> None:
        """Send the result writes (and acks) this thread deferred (inline settling only); if
        the broker cannot be reached, they stay queued and the idle loop tries again later."""
        if not self.inline:
            return
        try:
            self._flush_wires()
        except Exception:
            logger.exception("could not store deferred task results; trying again in %.0f s",
                             IDLE_FLUSH_RETRY)
            self._unflushed = True
            self._flush_retry_at = time.monotonic() + IDLE_FLUSH_RETRY

    def _flush_wires(self) -> None:
        # One flush covers the transport and the result store: inline settling means they
        # share this thread's connection.
        self.transport.flush()
        self._unflushed = False

    def _worker_lost(self, delivery: "Delivery", outcome: Outcome, holds_lease: bool) -> None:
        from ..exceptions import WorkerLostError

        if holds_lease and self.reject_on_worker_lost:
            self._settle(delivery, REQUEUE)
            return
        self._store_failure(WorkerLostError(outcome.exc_repr or "worker lost"), delivery.message)
        if holds_lease:
            self._settle(delivery, ACK)

    # ---- settling -------------------------------------------------------------------------------
    def _settle(self, delivery: "Delivery", action: str, *, inline: bool = False) -> None:
        if action == ACK and inline:  # one round trip, with the result write deferred before it
            try:
                self.transport.ack([delivery])
            except Exception:
                logger.exception("could not ack message %s; it will be delivered again",
                                 delivery.message.headers.get("id"))
            return
        if action == ACK:  # acks go out in batches: one broker round trip for many tasks
            with self._ack_cond:
                self._ack_pending.append(delivery)
                self._ack_cond.notify()
            return
        try:
            if action == REQUEUE:
                self.transport.reject(delivery, requeue=True)
            elif action == DROP:
                self._dead_letter(delivery, "rejected by the task (Reject, requeue=False)")
        except Exception:
            logger.exception("could not %s message %s", action, delivery.message.headers.get("id"))

    def _ack_loop(self) -> None:
        """Send pending acks together; after stop, flush what is left and end.

        A crash before a flush means those messages are delivered again: at-least-once holds.
        """
        while True:
            with self._ack_cond:
                while not self._ack_pending and not self._acks_done:
                    self._ack_cond.wait(0.5)
                batch, self._ack_pending = self._ack_pending, []
                finished = self._acks_done and not batch
            if finished:
                return
            try:
                self.transport.ack(batch)
            except Exception:
                logger.exception("could not ack %d message(s); they will be delivered again",
                                 len(batch))

    def _dead_letter(self, delivery: "Delivery", reason: str) -> None:
        self.transport.dead_letter(delivery.queue, delivery.message, reason, delivery=delivery)

    def _store_failure(self, exc: BaseException, message: "Message", *,
                       followups_too: bool = True) -> None:
        """Record a task that failed outside the task's own code (time limit, lost worker, unknown
        task): its state and, unless told otherwise, its chord, chain and errbacks."""
        request = self._request_of(message)
        try:
            if followups_too:
                followups.on_failure(self.app, request, exc, None,
                                     store=not message.headers.get("ignore_result"))
            elif not message.headers.get("ignore_result"):
                self.app.backend.mark_as_failure(request.id, exc, None, request=request)
        except Exception:
            logger.exception("could not store the failure of task %s", request.id)

    # ---- heartbeats -----------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        """Every ``worker_heartbeat_interval`` seconds, record this node as alive in the result
        store (``celeriac-worker-<node>``, expiring after three missed beats)."""
        freq = float(self.app.conf.get("worker_heartbeat_interval") or 2.0)
        key = f"celeriac-worker-{self.hostname}"
        while not self._stop.is_set():
            try:
                self.app.backend.set_value(key, {
                    "hostname": self.hostname, "pid": os.getpid(), "freq": freq,
                    "active": self._running, "processed": self.processed,
                    "timestamp": time.time(), "queues": list(self.queues)}, ttl=freq * 3)
            except Exception:
                logger.exception("could not record a heartbeat")
            else:
                if signals.heartbeat_sent.receivers:
                    signals.heartbeat_sent.send(sender=self)
            self._stop.wait(freq)

    # ---- revokes --------------------------------------------------------------------------------
    def _revoke_loop(self) -> None:
        assert self.revokes is not None
        while not self._stop.wait(0.2):
            try:
                self.revokes.sync()
            except Exception:
                logger.exception("could not sync revokes")

    def _terminate(self, task_id: str, signum: int) -> None:
        """A revoke with terminate=True: stop the task if it is running here."""
        with self._cond:
            running = [(job_id, self._pool_of.get(job_id)) for job_id, d in self._jobs.items()
                       if d.message.headers.get("id") == task_id and job_id in self._pool_of]
        for job_id, pool in running:
            if pool is not None and pool.terminate(job_id, signum):
                logger.info("Terminating task %s (signal %s)", task_id, signum)

    # ---- leases ---------------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        """Renew the leases of every held message each ``renew_every`` seconds, until the worker
        has stopped and holds nothing (running tasks keep their leases through a warm shutdown)."""
        next_renewal = time.monotonic() + self.renew_every
        while True:
            stopping = self._stop.is_set()
            if stopping and not self._jobs:
                return
            now = time.monotonic()
            if now >= next_renewal:
                with self._cond:
                    held = [d for job_id, d in self._jobs.items() if job_id not in self._acked]
                if held:
                    try:
                        self.transport.extend_lease(held)
                    except Exception:
                        logger.exception("lease renewal failed")
                next_renewal = now + self.renew_every
            wait = next_renewal - now
            if stopping:  # _stop is set, so waiting on it would return at once: sleep instead
                time.sleep(min(wait, 0.1))
            else:
                self._stop.wait(wait)

def _expired(headers: dict) -> bool:
    """Checked again just before a task starts (it may have expired while it waited)."""
    value = headers.get("expires")
    if not value:
        return False
    try:
        expires = parse_time(value)
    except (TypeError, ValueError):
        return False
    return expires is not None and expires <= datetime.now(timezone.utc)
