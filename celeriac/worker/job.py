"""One fetched message the worker holds, from admission until it is settled: one record.

Layer: worker. The consumer keeps every held job in one table; the job itself says whether it
acks late, whether its early ack went out, and which pool runs it. Extensions see jobs
read-only (``before_run``, ``after_outcome``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ..transport.base import Delivery


def task_label(headers: Mapping[str, Any]) -> str:
    """``name[id]``, how the worker names a task message in logs and stored failures."""
    return f"{headers.get('task')}[{headers.get('id')}]"


def wants_result(header: Any, task: Any) -> bool:
    """Whether a task's caller asked for its result: the message's ``ignore_result`` header wins
    (the call's choice); a message without one (a Celery client's send_task sends null) follows
    the task (its attribute, then the task_ignore_result setting); an unknown task: yes."""
    if header is not None:
        return not header
    return task is None or not task.resolved_ignore_result()


@dataclass(slots=True, eq=False)
class Job:
    """A held delivery and what the worker knows about it."""

    id: int
    delivery: Delivery
    #: the registered task (admission checked it exists)
    task: Any
    #: acked after the outcome is recorded (``acks_late``) instead of before the task starts
    late: bool
    #: it runs in the worker's own process outside the prefetch window once started: an
    #: ``async def`` task on the event loop, a ``runs_outside_pool`` task on a waiting thread
    outside_window: bool
    #: the pool that runs it (chosen at admission)
    lane: Any = None
    #: the early ack went out: the message no longer holds a lease
    acked: bool = False
    #: its early ack is the pool process's to send, right before the task starts (prefork on a
    #: leasing broker): ``acked`` is set when it is handed over, before the ack is confirmed
    ack_in_pool: bool = False
    #: the pool running it, while it runs
    pool: Any = None
    #: Unix time it was first handed to its pool (``on_started`` ran); a job put back in front
    #: after a refused hand-over keeps it, so it is announced once
    started_at: float | None = None

    @property
    def task_id(self) -> str:
        return self.delivery.message.headers.get("id") or "?"

    @property
    def headers(self) -> dict[str, Any]:
        return self.delivery.message.headers

    @property
    def holds_lease(self) -> bool:
        """Whether the broker still holds the message for this worker (nothing acked it)."""
        return not self.acked
