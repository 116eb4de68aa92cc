"""Batches in the worker: buffering a batch task's requests, and running them as one call.

Layer: worker. Consumer side (``BatchBuffers``): a request of a ``collects_requests`` task
(celeriac.batches.Batches) is held in its task's buffer instead of the prefetch buffer, keeping
its lease (renewed with every held message) but no window slot. The buffer becomes one
``BatchJob`` as soon as ``flush_every`` requests are in it, or ``flush_interval`` seconds after
its first; the job takes one slot of the pool like any task. While buffered requests reach the
bound (``limit``) nothing more is fetched, so a deep queue never floods the worker.

Pool side (``run_batch``): the member messages are decoded into requests, the task is called
once with the list, and each request then ends like a task of its own (``_Run`` in
worker/executor.py: result, chain, chord, errbacks, signals), with the outcome the task marked
for it, else ``None`` (the call returned) or the call's exception. Every member is acked only
after that (requests are never acked early), so a worker killed mid-batch gets the whole batch
delivered again.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _context, states
from ..backends.base import ResultBackend
from ..batches import SimpleRequest, current_marks
from ..canvas import chords
from ..exceptions import ContentDisallowed, DecodeError, InvalidTaskError, Retry
from ..protocol import v2
from .executor import _Run, context_from_body, in_task_code, internal_error
from .job import Job
from .limits import task_code_ended, task_code_started
from .outcome import Ending, Outcome
from .pending import PendingWrites
from .request import undecodable_failure

if TYPE_CHECKING:
    from ..app import Celery
    from ..protocol.message import Message

logger = logging.getLogger("celeriac.worker")

_batch_ids = itertools.count(1)


class BatchMessages:
    """What a pool runs for one batch: its members' messages (picklable, for prefork)."""

    def __init__(self, task_name: str, members: list[tuple[int, Message, dict]]) -> None:
        self.task_name = task_name
        self.members = members
        self.batch_id = f"batch-{uuid.uuid4()}"
        #: the pools read a message's id and task (limits, logs); a batch answers for itself
        self.headers: dict[str, Any] = {"id": self.batch_id, "task": task_name}
        self.properties: dict[str, Any] = {}


@dataclass(slots=True, eq=False)
class BatchJob(Job):
    """A batch of held requests that runs as one pool job; ``delivery`` is its first member's
    (members hold their own leases)."""

    members: list[Job] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        return f"batch of {len(self.members)}"

    @property
    def holds_lease(self) -> bool:
        return False  # its members do, each in the held table


class BatchBuffers:
    """The requests of batch tasks waiting for their batch (the consumer holds ``_cond``)."""

    def __init__(self, limit: int, *, collecting: bool = True) -> None:
        #: most requests buffered at once across batch tasks (none fetched past it)
        self.limit = limit
        #: whether any batch task is registered (fetches then also fill the buffers' room)
        self.collecting = collecting
        self._buffers: dict[str, list[Job]] = {}
        self._first_at: dict[str, float] = {}
        self.held = 0

    def add(self, job: Job, next_id: Any) -> BatchJob | None:
        """Buffer ``job``; a batch (numbered by ``next_id()``) when its task's buffer is now
        full."""
        name = job.task.name
        buffer = self._buffers.setdefault(name, [])
        if not buffer:
            self._first_at[name] = time.monotonic()
        buffer.append(job)
        self.held += 1
        if len(buffer) >= max(1, int(job.task.flush_every)):
            return self._take(name, next_id())
        return None

    def due(self, next_id: Any) -> list[BatchJob]:
        """The batches whose first request has waited ``flush_interval`` seconds."""
        now = time.monotonic()
        names = [name for name, jobs in self._buffers.items() if jobs and
                 now - self._first_at[name] >= float(jobs[0].task.flush_interval)]
        return [self._take(name, next_id()) for name in names]

    def next_due_in(self) -> float | None:
        """Seconds until the next interval flush (None: nothing buffered)."""
        now = time.monotonic()
        waits = [self._first_at[name] + float(jobs[0].task.flush_interval) - now
                 for name, jobs in self._buffers.items() if jobs]
        return max(0.0, min(waits)) if waits else None

    def _take(self, name: str, job_id: int) -> BatchJob:
        members = self._buffers.pop(name)
        self._first_at.pop(name, None)
        self.held -= len(members)
        first = members[0]
        return BatchJob(job_id, first.delivery, first.task, True, False, first.lane,
                        members=members)

    def drain(self) -> list[Job]:
        """Every buffered request (the worker is stopping: they go back to the broker)."""
        jobs = [job for buffer in self._buffers.values() for job in buffer]
        self._buffers.clear()
        self._first_at.clear()
        self.held = 0
        return jobs


def batch_message(job: BatchJob) -> BatchMessages:
    return BatchMessages(job.task.name, [(m.id, m.delivery.message, m.delivery.delivery_info)
                                         for m in job.members])


# ---- pool side --------------------------------------------------------------------------------
def run_batch(app: Celery, batch: BatchMessages, hostname: str,
              accept: frozenset[str], *, collect_writes: bool = False) -> Outcome:
    """Call the batch task once with every decodable member; one outcome per member.
    ``collect_writes`` (inline settling): the successes' results come back in the batch's
    ``Outcome.pending`` for the consumer to send with the acks, in one transaction, instead of
    being written here (unless a chord counts one of them: then all are written here)."""
    started = time.monotonic()
    task = app.tasks[batch.task_name]
    endings: list[tuple[int, Outcome]] = []
    runs: list[tuple[int, _Run]] = []
    # the members' successes are written together once the call's requests have all ended
    writes = PendingWrites()
    for member_id, message, delivery_info in batch.members:
        try:
            body = v2.decode_task(message, accept)
        except (ContentDisallowed, DecodeError, InvalidTaskError) as exc:
            endings.append((member_id, Outcome.undecodable(
                message.headers.get("id") or "?", f"{type(exc).__name__}: {exc}",
                undecodable_failure(message, exc))))
            continue
        ctx = context_from_body(body, hostname=hostname, delivery_info=delivery_info,
                                properties=message.properties)
        run = _Run(task, ctx, eager=False, pending=writes)
        run.pending = writes  # acks_late or not: every request is acked after the writes
        runs.append((member_id, run))
    if not runs:
        return Outcome(batch.batch_id, states.SUCCESS, Ending.SUCCEEDED, members=endings)
    marks: dict[str, tuple[str, Any, float | None]] = {}
    raised: BaseException | None = None
    try:
        for _, run in runs:
            run.before()  # task_prerun and STARTED for each request
        requests = [SimpleRequest(run.ctx) for _, run in runs]
        marks_token = current_marks.set(marks)
        task_token = _context.current_task_var.set(task)
        store_before = ResultBackend.last_store
        try:
            in_task_code[0] = True  # the prefork soft time limit (SIGALRM) may stop the call
            task_code_started()  # a pool thread's hard time limit may give the call up
            try:
                task.run(requests)
            finally:
                in_task_code[0] = False
                task_code_ended()
        except Exception as exc:  # noqa: BLE001 - the batch's failure is its requests' failure
            raised = exc
        finally:
            _context.current_task_var.reset(task_token)
            current_marks.reset(marks_token)
        logger.info("Batch of %d %s request(s) %s in %.6fs", len(runs), task.name,
                    f"raised {raised!r}" if raised is not None else "ran",
                    time.monotonic() - started)
        stored = _stored_marks(app, [run.task_id for _, run in runs], marks,
                               {run.task_id for _, run in runs if run.ctx.retries}
                               ) if ResultBackend.last_store != store_before else {}
        for member_id, run in runs:
            outcome = _end_request(task, run, marks.get(run.task_id) or stored.get(run.task_id),
                                   raised)
            outcome.retval = None  # what crosses the pipe stays small (results are stored)
            endings.append((member_id, outcome))
    except Exception as exc:  # our own bookkeeping failed: nothing is acked as done
        done = {member_id for member_id, _ in endings}
        for member_id, run in runs:
            if member_id not in done:
                endings.append((member_id, internal_error(task, run.ctx, exc)))
    if collect_writes and not writes.chord_counts:
        for _, outcome in endings:
            outcome.pending = None  # the batch's outcome carries them all
        return Outcome(batch.batch_id, states.SUCCESS, Ending.SUCCEEDED,
                       runtime=time.monotonic() - started, members=endings,
                       pending=writes or None)
    endings = _send_writes(app, task, writes, endings, dict(runs))
    return Outcome(batch.batch_id, states.SUCCESS, Ending.SUCCEEDED,
                   runtime=time.monotonic() - started, members=endings)


def _send_writes(app: Celery, task: Any, writes: PendingWrites,
                 endings: list[tuple[int, Outcome]], runs: dict[int, _Run]
                 ) -> list[tuple[int, Outcome]]:
    """Store the successes' results before any member is acked, together (on Redis one round
    trip: one write per request cost 90% of a batch's time), then the chord counts. Members
    whose result could not be stored end as internal errors (never acked as done)."""
    try:
        if writes.results:
            app.backend.write_results(writes.results)  # one round trip on Redis
        for part in writes.chord_counts:
            chords.count(app, part)
    except Exception as exc:
        endings = [(member_id, internal_error(task, runs[member_id].ctx, exc)
                    if outcome.pending is writes else outcome)
                   for member_id, outcome in endings]
    for _, outcome in endings:
        outcome.pending = None  # sent here, not by the consumer
    return endings


def _stored_marks(app: Celery, task_ids: list[str],
                  marks: dict[str, tuple[str, Any, float | None]],
                  reruns: set[str]) -> dict[str, tuple]:
    """Outcomes the task stored itself (``app.backend.mark_as_done(request.id, ...)``, as
    celery-batches users write), read back in one round trip; called only when a result was
    stored in this process during the call (``ResultBackend.last_store``), as the read cost a
    quarter of a solo batch's time. A RETRY stored for a request that is itself a retry
    (``reruns``) is its previous attempt's, not a mark."""
    backend = app.backend
    unmarked = [t for t in task_ids if t not in marks]
    if not unmarked or not backend.persistent:
        return {}
    found: dict[str, tuple] = {}
    for task_id, meta in backend.stored_metas(unmarked).items():
        status = meta.get("status")
        if status == states.SUCCESS:
            found[task_id] = (states.SUCCESS, meta.get("result"), None)
        elif status in states.PROPAGATE_STATES or (status == states.RETRY
                                                   and task_id not in reruns):
            found[task_id] = (status if status == states.RETRY else states.FAILURE,
                              backend.exception_from_meta(meta), None)
    return found


def _end_request(task: Any, run: _Run, mark: tuple | None, raised: BaseException | None
                 ) -> Outcome:
    """End one request as its own task would have ended."""
    token = _context.current_request_var.set(run.ctx)
    try:
        if mark is None:
            if raised is not None:
                return run.failed(raised, autoretry=False)
            return run.succeeded(None)
        state, value, countdown = mark
        if state == states.SUCCESS:
            return run.succeeded(value)
        if state == states.RETRY:
            try:
                retry = task.retry(exc=value, countdown=countdown, throw=False)
            except Retry as exc:  # pragma: no cover - throw=False returns it
                retry = exc
            except Exception as exc:  # past max_retries: the request fails
                return run.failed(exc, autoretry=False)
            return run.retried(retry)
        failure = value if isinstance(value, BaseException) else RuntimeError(repr(value))
        return run.failed(failure, autoretry=False)
    finally:
        _context.current_request_var.reset(token)
