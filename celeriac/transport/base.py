"""The transport interface every broker implements, and the types that cross it.

Layer: transport. Deliberately small: batched publish, batched leasing fetch, ack, reject/requeue,
lease renewal, deferral (delayed delivery outside the lease clock), a dead-letter store, and admin.
Everything richer (routing, retries, canvas) lives above it.

Delivery model: ``fetch`` atomically *leases* messages (never delete-on-fetch). A lease that is not
renewed expires, and the message becomes fetchable again by anyone: that is how a killed worker's
messages come back. ``ack`` with a stale lease (the lease expired and someone else took the message)
returns False and does nothing (fencing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from ..protocol.message import Message


@dataclass(slots=True)
class Outgoing:
    """A message to publish to ``queue``, optionally held back until ``not_before`` (Unix time)."""

    queue: str
    message: Message
    not_before: float | None = None


@dataclass(slots=True)
class Delivery:
    """A leased message. ``receipt`` is transport-private (row id + lease token, delivery tag...)."""

    message: Message
    queue: str
    receipt: Any
    delivery_count: int = 1
    redelivered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DeadLetter:
    """A message that can never run, kept byte for byte with the reason it was set aside."""

    id: str
    queue: str
    reason: str
    message: Message
    created_at: float


@runtime_checkable
class Transport(Protocol):
    """What the producer and the worker need from a broker. Sync; callers may use threads."""

    #: default lease length in seconds (``broker_transport_options['visibility_timeout']``)
    visibility_timeout: float

    def declare(self, queue: str) -> None:
        """Make sure ``queue`` exists (a no-op where queues need no declaration)."""

    def publish(self, items: Sequence[Outgoing]) -> None:
        """Durably enqueue every item; returns only once they are stored (one round trip)."""

    def fetch(self, queues: Sequence[str], max_n: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_n`` due messages from ``queues``, waiting up to ``timeout`` seconds.

        Queues are served round robin (one further on each call, as Celery rotates them); within a
        queue, higher-priority messages come first, then the oldest. Returns [] on timeout.
        """

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove the messages for good; False for any whose lease was lost (fencing).

        A transport that can share each thread's connection with the result store (Redis) has
        ``shares_wire_with(backend)``, ``ack_later(deliveries, on_reply=None)`` (the ack travels
        with the thread's next round trip, after what came before it), ``fetch_later`` and
        ``flush()``: the worker then settles tasks inline (see worker/consumer.py).
        """

    def reject(self, delivery: Delivery, requeue: bool) -> bool:
        """Give a message back (``requeue``) or drop it. Callers dead-letter before dropping."""

    def extend_lease(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> None:
        """Renew leases so a long healthy task is never redelivered."""

    def defer(self, delivery: Delivery, not_before: float) -> bool:
        """Release a leased message to become due at ``not_before`` (ETA), holding no lease meanwhile."""

    def dead_letter(self, queue: str, message: Message, reason: str,
                    delivery: Delivery | None = None) -> str:
        """Keep ``message`` in the dead-letter store with ``reason``; returns its id.

        With ``delivery``, the leased message is removed in the same step. If that lease was
        lost to another holder, nothing is stored and "" is returned (the new holder settles it).
        """

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    def dead_letter_get(self, dead_letter_id: str) -> DeadLetter | None: ...

    def dead_letter_delete(self, dead_letter_ids: Sequence[str] | None = None) -> int:
        """Remove the given dead letters (all when None); returns how many went."""

    def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``; returns how many."""

    def qsize(self, queue: str) -> int:
        """Messages waiting in ``queue`` (ready or leased)."""

    def close(self) -> None: ...


def check_queue_names(queues: Sequence[str]) -> None:
    if not queues:
        raise ValueError("fetch needs at least one queue name")
    for q in queues:
        if not isinstance(q, str) or not q:
            raise ValueError(f"queue names must be non-empty strings, got {q!r}")
