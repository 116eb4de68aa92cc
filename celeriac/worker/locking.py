"""The worker's side of the task options ``lock`` and ``unique``: a built-in extension.

Layer: worker. Just before a held job goes to the pool (``before_run``), a task with ``lock``
takes its key for the job; when another holder has it, the job does not run now: its message
goes back to the broker for ``LOCK_RETRY_DELAY`` seconds (deferred, like an ETA message), so it
holds neither a pool slot nor a prefetch slot. The lock is released when the job ends, however it
ends (``after_outcome``), and renewed while it runs, so ``lock_expire`` bounds only how long a
dead worker's lock outlives it. A call sent with ``unique`` frees its queued key as it starts.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..backends.base import Locks
from ..locks import (
    DEFAULT_LOCK_EXPIRE,
    UNIQUE_HEADER,
    UNIQUE_PREFIX,
    Lock,
    key_for,
    lock_store,
)
from ..protocol import v2
from .admission import Decision, Verdict
from .extensions import WorkerExtension

if TYPE_CHECKING:
    from .consumer import Consumer
    from .job import Job
    from .outcome import Outcome

logger = logging.getLogger("celeriac.worker")

#: seconds a call whose key is held waits before a worker tries it again (spread by +-25 %)
LOCK_RETRY_DELAY = 1.0


class TaskLocks(WorkerExtension):
    """Built in: ``lock`` (one running call per key) and ``unique`` (freed at start)."""

    def __init__(self) -> None:
        self.consumer: Consumer | None = None
        self.store: Locks | None = None
        #: job id -> the lock it holds (only this worker's running or about-to-run jobs)
        self._held: dict[int, Lock] = {}
        self._mutex = threading.Lock()
        self._stop = threading.Event()

    def on_worker_start(self, consumer: Consumer) -> None:
        self.consumer = consumer
        declared = sorted(name for name, task in consumer.app.tasks.items()
                          if getattr(task, "lock", None) or getattr(task, "unique", None))
        if not declared:
            return
        self.store = lock_store(consumer.app, f"task {declared[0]} (lock=/unique=)")
        if any(getattr(task, "lock", None) for task in consumer.app.tasks.values()):
            threading.Thread(target=self._renew_loop, name="celeriac-locks", daemon=True).start()

    def on_worker_stop(self, consumer: Consumer) -> None:
        self._stop.set()

    def before_run(self, job: Job) -> Decision | None:
        store = self.store
        if store is None:  # no task of this app declares lock or unique
            return None
        spec = getattr(job.task, "lock", None)
        queued = job.headers.get(UNIQUE_HEADER)
        if not (spec or queued):
            return None
        if spec and job.id not in self._held:  # (a job put back in front holds it already)
            lock = self._lock_for(job, spec, store)
            if lock is not None and not lock.acquire():
                delay = LOCK_RETRY_DELAY * random.uniform(0.75, 1.25)
                if logger.isEnabledFor(logging.INFO):
                    logger.info("Task %s: lock %r is held (by %s); trying again in %.1f s",
                                job.task_id, lock.name, lock.owner(), delay)
                return Decision(Verdict.DEFER, f"lock {lock.name!r} is held",
                                not_before=time.time() + delay)
            if lock is not None:
                with self._mutex:
                    self._held[job.id] = lock
        if queued:  # it starts: the same call may be queued again
            store.lock_release(UNIQUE_PREFIX + str(queued), job.task_id)
        return None

    def _lock_for(self, job: Job, spec: object, store: Locks) -> Lock | None:
        """The job's lock, its key from the message's arguments; None (and an error logged) if
        the key cannot be made, and the task runs unlocked (its sender's ``apply_async`` would
        have refused the same key: it was sent some other way)."""
        task = job.task
        try:
            body = v2.decode_task(job.delivery.message, self.consumer.accept
                                  if self.consumer is not None else frozenset())
            name = key_for(task, spec, body.args, body.kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            logger.error("Task %s: no lock key for lock=%r (%s); it runs without the lock",
                         job.task_id, spec, exc)
            return None
        expire = getattr(task, "lock_expire", None) or DEFAULT_LOCK_EXPIRE
        return Lock(store, name, expire, token=f"{job.task_id}:{uuid.uuid4().hex[:12]}")

    def after_outcome(self, job: Job, outcome: Outcome) -> None:
        if not self._held:  # the common case, without taking the mutex
            return
        with self._mutex:
            lock = self._held.pop(job.id, None)
        if lock is not None:
            lock.release()

    def _renew_loop(self) -> None:
        """Keep the locks of running jobs; free those of jobs that left without an outcome
        (dropped by a later extension, or lost their lease before starting)."""
        while not self._stop.is_set():
            with self._mutex:
                held = dict(self._held)
            shortest = min((lock.expire for lock in held.values()), default=3.0)
            if held and self.consumer is not None:
                live = {job.id for job in self.consumer.jobs()}
                for job_id, lock in held.items():
                    try:
                        self._renew(job_id, lock, job_id in live)
                    except Exception:
                        logger.exception("could not renew lock %r", lock.name)
            self._stop.wait(max(0.05, shortest / 3))

    def _renew(self, job_id: int, lock: Lock, live: bool) -> None:
        if not live:
            with self._mutex:
                gone = self._held.pop(job_id, None)
            if gone is not None:
                gone.release()
            return
        if not lock.extend():
            with self._mutex:
                still = self._held.get(job_id) is lock
            if still:
                logger.warning("Lock %r was lost while its task ran (the result store was out "
                               "of reach for longer than lock_expire=%ss)", lock.name,
                               lock.expire)
