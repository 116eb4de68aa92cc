"""One fetched message the worker holds, from admission until it is settled: one record.

Layer: worker. The consumer keeps every held job in one table; the job itself says whether it
acks late, whether its early ack went out, and which pool runs it. Extensions see jobs
read-only (``before_run``, ``after_outcome``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..transport.base import Delivery


@dataclass(slots=True, eq=False)
class Job:
    """A held delivery and what the worker knows about it."""

    id: int
    delivery: Delivery
    #: the registered task (admission checked it exists)
    task: Any
    #: acked after the outcome is recorded (``acks_late``) instead of before the task starts
    late: bool
    #: an ``async def`` task that runs on the event loop, outside the prefetch window
    runs_async: bool
    #: the early ack went out: the message no longer holds a lease
    acked: bool = False
    #: the pool running it, while it runs
    pool: Any = None

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
