"""How one task run ended, as a typed value a pool hands back to the consumer.

Layer: worker. Made where the task ran (a pool thread, a prefork child, the event loop) and read
by the consumer, which settles the message from ``ending`` alone; crossing a process pipe it is
pickled, so it stays small (the child drops ``retval`` and ``pending`` before sending it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pending import PendingWrites


class Ending(enum.Enum):
    """How a run ended, and so what happens to its message."""

    #: the task returned; its result is stored (or waits in ``Outcome.pending``)
    SUCCEEDED = "succeeded"
    #: the task raised; the failure is stored
    FAILED = "failed"
    #: the task asked for a retry; a new message was sent
    RETRIED = "retried"
    #: the task raised ``Ignore``: nothing is stored
    IGNORED = "ignored"
    #: the task raised ``Reject(requeue=True)``: the message goes back to the queue
    REJECTED_REQUEUE = "rejected_requeue"
    #: the task raised ``Reject(requeue=False)``: the message goes to the dead-letter store
    REJECTED_DROP = "rejected_drop"
    #: the message could not be decoded or names no registered task: dead-lettered, and
    #: ``failure`` stored for its caller
    UNDECODABLE = "undecodable"
    #: the process running it died (``reason`` says how)
    WORKER_LOST = "worker_lost"
    #: killed at its hard time limit (``limit`` seconds)
    TIME_LIMIT = "time_limit"
    #: stopped by a revoke with ``terminate=True`` (``signum``, when a signal was used)
    TERMINATED = "terminated"
    #: killed by a cold shutdown before it ended: the message goes back if still held
    ABANDONED = "abandoned"
    #: it may have run, but its outcome could not be recorded: never acked as done
    INTERNAL_ERROR = "internal_error"
    #: it never started: the early ack its pool process sends first was not confirmed
    #: (``reason``: ``LEASE_LOST`` when the broker answered that another holder has it, else
    #: the broker did not answer); the consumer decides what happens to the message
    NOT_STARTED = "not_started"
    #: it never started: its pool process found it revoked in the store as it sent its early
    #: ack (confirmed); the consumer drops it (stored as REVOKED)
    REVOKED = "revoked"


#: ``Outcome.reason`` of a NOT_STARTED outcome whose early ack the broker refused
LEASE_LOST = "lease lost"

#: endings whose message is simply acked (what the task did is already recorded)
SETTLED_BY_ACK = frozenset({Ending.SUCCEEDED, Ending.FAILED, Ending.RETRIED, Ending.IGNORED})


@dataclass(slots=True)
class Outcome:
    """What happened to one task."""

    task_id: str
    state: str
    ending: Ending = Ending.SUCCEEDED
    runtime: float = 0.0
    retval_repr: str | None = None
    exc_repr: str | None = None
    traceback: str | None = None
    retval: Any = None
    #: why it ended outside the task's code (a dead letter's reason, how a process died)
    reason: str | None = None
    #: the signal that stopped it (``TERMINATED``)
    signum: int | None = None
    #: the hard time limit it ran into, in seconds (``TIME_LIMIT``)
    limit: float | None = None
    #: writes the run recorded for the consumer to send (inline settling only)
    pending: PendingWrites | None = None
    #: UNDECODABLE: the failure stored for the caller once the message is dead-lettered (the
    #: consumer makes a ``DecodeError`` from ``reason`` when there is none)
    failure: BaseException | None = None
    #: a batch (worker/batching.py): ``(member job id, its outcome)`` for each request in it
    members: list[tuple[int, Outcome]] | None = None

    @classmethod
    def undecodable(cls, task_id: str, reason: str,
                    failure: BaseException | None = None) -> Outcome:
        return cls(task_id, "REJECTED", Ending.UNDECODABLE, reason=reason, exc_repr=reason,
                   failure=failure)

    @classmethod
    def terminated(cls, task_id: str, signum: int | None = None) -> Outcome:
        return cls(task_id, "REVOKED", Ending.TERMINATED, signum=signum, exc_repr="terminated")
