"""The worker's side of dispatch: drop the subtasks of a revoked dispatch, report the ends that
happen outside the task's code, and let main tasks step aside at shutdown.

Layer: worker. Subtasks report their own outcome where they run (worker/executor.py calls
``dispatch.inbox.report``); what ends a subtask outside its code (a time limit, a lost
process, a terminate) is reported here, from the consumer's ``after_outcome``. A dispatch's
revoke is one stored tombstone, the main task's own revoke, checked here for every subtask at
admission and again just before it runs, and a revoke with ``terminate`` of the main task stops
its running subtasks too (``revoked_with``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import states
from ..dispatch import inbox
from ..dispatch.run import stopping_workers
from ..exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from .admission import Arrival, Decision, Verdict
from .extensions import WorkerExtension
from .outcome import Ending

if TYPE_CHECKING:
    from .consumer import Consumer
    from .job import Job
    from .outcome import Outcome

logger = logging.getLogger("celeriac.worker")


class DispatchSupport(WorkerExtension):
    """Built in: dispatch's tombstones, reports and shutdown."""

    def __init__(self) -> None:
        self.consumer: Consumer | None = None

    def on_worker_start(self, consumer: Consumer) -> None:
        self.consumer = consumer
        stopping_workers.discard(consumer.hostname)

    def on_worker_stop(self, consumer: Consumer) -> None:
        # running main tasks save a checkpoint and go back to the queue (they are acks_late):
        # another worker, or this one restarted, resumes them
        stopping_workers.add(consumer.hostname)

    def _revoked(self, headers: dict[str, Any]) -> bool:
        value = headers.get(inbox.HEADER)
        consumer = self.consumer
        if not value or consumer is None or consumer.revokes is None:
            return False
        return str(value[0]) in consumer.revokes

    def revoked_with(self, job: Job) -> tuple[str, ...]:
        value = job.headers.get(inbox.HEADER)
        return (str(value[0]),) if value else ()

    def before_admission(self, arrival: Arrival) -> Decision | None:
        return Decision(Verdict.REVOKED) if self._revoked(arrival.headers) else None

    def before_run(self, job: Job) -> Decision | None:
        return Decision(Verdict.REVOKED) if self._revoked(job.headers) else None

    def after_outcome(self, job: Job, outcome: Outcome) -> None:
        if inbox.HEADER not in job.headers or self.consumer is None:
            return
        ending = outcome.ending
        if ending is Ending.TIME_LIMIT:
            exc: BaseException = TimeLimitExceeded(outcome.limit)
        elif ending is Ending.TERMINATED:
            exc = TaskRevokedError("terminated")
        elif ending is Ending.WORKER_LOST and not (job.holds_lease
                                                    and self.consumer.reject_on_worker_lost):
            exc = WorkerLostError(outcome.reason or "worker lost")
        else:
            return  # reported where it ran, or it runs again
        consumer = self.consumer
        request = consumer._request_of(job.delivery.message)
        state = states.REVOKED if ending is Ending.TERMINATED else states.FAILURE
        try:
            inbox.report(consumer.app, request, state, exc)
        except Exception:
            logger.exception("could not report the end of subtask %s to its dispatch",
                             job.task_id)
