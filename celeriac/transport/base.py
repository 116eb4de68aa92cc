"""The broker interface: a small core every broker has, plus capabilities a broker declares.

Layer: transport (imports ``protocol``, ``exceptions`` and ``utils`` only). The core is what
RabbitMQ, Redis and SQLite all do: declare a queue, publish, fetch, ack, reject (requeue or
drop), purge, count. Everything else is a *capability*, a ``typing.Protocol`` checked once with
``isinstance`` when a worker starts (see ``capabilities_of``), never probed with ``getattr``:

- ``Leases``: fetched messages are leased and the lease must be renewed (SQLite, Redis, memory).
  A broker whose channel is the lease (RabbitMQ) simply lacks it, and the worker renews nothing.
- ``Deferral``: a not-yet-due message is handed back to wait outside the lease clock.
- ``DeadLetterStore``: messages that can never run are kept byte for byte with a reason.
- ``Broadcast``: fanout to every subscriber (remote control, events, revokes).
- ``SharedConnectionSettling``: the broker shares each thread's connection with the result
  store, so a result write, an ack and the next fetch travel in one round trip.

``PushedDeliveries`` is a hook, not a capability: a transport the broker pushes deliveries to
ahead of ``fetch`` gives back what it holds unfetched when the worker stops consuming.

Delivery model for leasing brokers: ``fetch`` atomically *leases* messages (never
delete-on-fetch). A lease that is not renewed expires, and the message becomes fetchable again:
that is how a killed worker's messages come back. ``ack`` with a stale lease returns False and
does nothing (fencing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

from ..protocol.entities import Queue
from ..protocol.message import Message

if TYPE_CHECKING:
    from ..protocol.v2 import Likes

#: seconds a fetch that waits for messages polls for them before it sleeps, when its last wait
#: was over within that long (``broker_transport_options["wait_spin"]`` of the brokers that
#: wait for a change: Redis, SQLite; ``utils/spin.py``). Off by default, as ``get()``'s
#: (``backends.base.DEFAULT_WAIT_SPIN``).
DEFAULT_FETCH_SPIN = 0.0


@dataclass(slots=True)
class Outgoing:
    """A message published as ``exchange``/``routing_key`` say, optionally held back until
    ``not_before`` (Unix time).

    With a ``queue``, the message goes to that queue (already routed: Celery publishes a plain
    task to the default exchange ``""`` with the queue's name as the routing key; ``routing_key``
    None means exactly that), and ``exchange``/``routing_key`` are only recorded. With ``queue``
    empty, the transport routes it: to every queue bound to ``exchange`` whose binding takes
    ``routing_key`` (``transport.bindings.route``; a fanout exchange broadcasts).
    ``exchange_type`` says the exchange's type where the bindings do not record it (Redis).
    """

    queue: str
    message: Message
    not_before: float | None = None
    exchange: str = ""
    routing_key: str | None = None
    exchange_type: str | None = None

    @property
    def key(self) -> str:
        return self.queue if self.routing_key is None else self.routing_key

    @property
    def routed(self) -> bool:
        """Whether the transport must find the queues through its bindings."""
        return not self.queue and bool(self.exchange)


@dataclass(slots=True)
class Delivery:
    """A fetched message. ``receipt`` is transport-private (row id + lease token, delivery tag...).

    ``exchange`` and ``routing_key`` say how it was published, as Celery's ``delivery_info``
    reports them.
    """

    message: Message
    queue: str
    receipt: Any
    delivery_count: int = 1
    redelivered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str | None = None

    @property
    def delivery_info(self) -> dict[str, Any]:
        """What a task sees as ``self.request.delivery_info``: Celery's four keys, the exchange
        and routing key the message was published with, its priority and whether it was
        delivered before."""
        return {"exchange": self.exchange,
                "routing_key": self.queue if self.routing_key is None else self.routing_key,
                "priority": self.message.properties.get("priority"),
                "redelivered": self.redelivered}


@dataclass(slots=True)
class DeadLetter:
    """A message that can never run, kept byte for byte with the reason it was set aside."""

    id: str
    queue: str
    reason: str
    message: Message
    created_at: float


# ---- the core -----------------------------------------------------------------------------------
@runtime_checkable
class Transport(Protocol):
    """What every broker does. Sync; callers may use threads."""

    #: errors worth retrying a publish for (a connection lost, a database locked); OSError,
    #: ConnectionError and TimeoutError always are
    transient_errors: tuple[type[BaseException], ...]

    def declare(self, queue: Queue | str) -> None:
        """Make sure ``queue`` exists with its exchange, binding and arguments (a bare name is
        ``Queue(name)``), and record its binding (``transport.bindings.binding_of``) where every
        producer's publish finds it, in any process. A consumer that declares a queue bound to a
        fanout exchange receives that exchange's broadcasts into the queue from then on."""

    def publish(self, items: Sequence[Outgoing]) -> None:
        """Durably enqueue every item (to its ``queue``, or where the bindings of its exchange
        route it); returns only once they are stored (one round trip where it can)."""

    def fetch(self, queues: Sequence[str], max_n: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_n`` due messages from ``queues``, waiting up to ``timeout`` seconds.

        Queues are served round robin (one further on each call, as Celery rotates them); within a
        queue, higher-priority messages come first, then the oldest. Returns [] on timeout.
        """

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove the messages for good; False for any this holder no longer holds (fencing)."""

    def reject(self, delivery: Delivery, requeue: bool) -> bool:
        """Give a message back (``requeue``) or drop it. Callers dead-letter before dropping."""

    def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``; returns how many."""

    def qsize(self, queue: str) -> int:
        """Messages waiting in ``queue`` (ready or held)."""

    def close(self) -> None: ...


# ---- capabilities -------------------------------------------------------------------------------
@runtime_checkable
class Leases(Protocol):
    """Fetched messages are leased for ``visibility_timeout`` seconds unless renewed."""

    #: default lease length in seconds (``broker_transport_options['visibility_timeout']``)
    visibility_timeout: float

    def extend_lease(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> None:
        """Renew leases so a long healthy task is never redelivered."""


@runtime_checkable
class Deferral(Protocol):
    """A held message can wait for its ETA outside the lease clock, holding no prefetch slot."""

    def defer(self, delivery: Delivery, not_before: float) -> bool:
        """Release ``delivery`` to become due at ``not_before``; False if no longer held."""


@runtime_checkable
class DeadLetterStore(Protocol):
    """Messages that can never run, kept with the reason (``celeriac dlq``)."""

    def dead_letter(self, queue: str, message: Message, reason: str,
                    delivery: Delivery | None = None) -> str:
        """Keep ``message`` with ``reason``; returns its id.

        With ``delivery``, the held message is removed in the same step. If that lease was lost
        to another holder, nothing is stored and "" is returned (the new holder settles it).
        """

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    def dead_letter_get(self, dead_letter_id: str) -> DeadLetter | None: ...

    def dead_letter_delete(self, dead_letter_ids: Sequence[str] | None = None) -> int:
        """Remove the given dead letters (all when None); returns how many went."""


class Subscription(Protocol):
    """Broadcast messages published after ``subscribe`` returned, in publish order."""

    def get(self, timeout: float) -> list[Message]:
        """What arrived since the last call, waiting up to ``timeout`` seconds for the first."""

    def close(self) -> None: ...


@runtime_checkable
class Broadcast(Protocol):
    """Fanout: every current subscriber of an exchange gets its own copy; nobody subscribed,
    nobody gets it (kombu's fanout semantics; Redis: PUBLISH ``/<db>.<exchange>/<key>``)."""

    def broadcast(self, exchange: str, message: Message, routing_key: str = "") -> int | None:
        """Send ``message`` to every subscriber of ``exchange`` whose binding matches. Returns
        how many got it where the broker says (Redis's PUBLISH, the in-memory broker), else
        None. A count may be too high, never too low: 0 means nobody got it, and the event
        dispatcher then stops encoding task events until a probe is heard again."""

    def subscribe(self, exchange: str, binding: str = "#") -> Subscription:
        """Receive what ``exchange`` broadcasts from now on. ``binding`` is an AMQP topic
        pattern on the routing key (``#`` all, ``*`` one word)."""


@runtime_checkable
class SharedConnectionSettling(Protocol):
    """The broker reaches its server through the same per-thread connection as the result
    store, so writes nobody waits for can ride along with the thread's next round trip."""

    def shares_connection_with(self, backend: Any) -> bool:
        """Whether ``backend`` uses this transport's connection in each thread."""

    def ack_later(self, deliveries: Sequence[Delivery],
                  on_reply: Callable[[list[bool] | None], None] | None = None) -> None:
        """Queue the ack on this thread's connection, after what was queued before it.
        ``on_reply`` gets what ``ack`` would return, or None if the round trip failed."""

    def ack_with_writes_later(self, deliveries: Sequence[Delivery],
                              stage_writes: Callable[[], None]) -> None:
        """Queue the writes ``stage_writes()`` stages on this thread's connection (a result
        store's), then the ack, all or nothing: the ack takes effect only if the writes do."""

    def fetch_later(self, queues: Sequence[str], max_n: int,
                    on_fetched: Callable[[list[Delivery]], None]) -> None:
        """A fetch (without waiting) that rides along with the thread's next round trip."""

    def flush(self) -> None:
        """Send what this thread queued now (one round trip)."""


@runtime_checkable
class PushedDeliveries(Protocol):
    """Not a capability (``capabilities_of`` leaves it out: it changes nothing a contract suite
    sees), a hook: the broker pushes deliveries to this transport ahead of ``fetch`` (RabbitMQ's
    consumer prefetch), so it may hold some that no fetch has handed out yet, and a ``fetch``
    with a zero timeout takes those without a round trip (the solo worker's refill at a task's
    start, worker/batched_settlement.py). A broker whose ``fetch`` takes only what it returns
    (Redis, SQLite) lacks it: it holds nothing."""

    def stop_consuming(self) -> int:
        """Warm shutdown: cancel this transport's consumers and give back (requeue) every
        delivery it holds that ``fetch`` has not handed out; returns how many. Later fetches
        return nothing until ``close``; handed-out deliveries are settled as before."""


@runtime_checkable
class PublishesRuns(Protocol):
    """Not a capability either, a hook: the transport writes messages made like one model
    (``v2.Likes``: a group's members, a ``send_many`` batch) from text spliced into its own
    envelope, without a ``Message`` object for each. The producer uses it when nothing needs
    those objects (publish signals, ``task-sent`` events, publish hooks)."""

    def publish_runs(self, runs: Sequence[tuple[Outgoing, Likes | None]]) -> None:
        """``publish`` of each run's item followed by the messages like it, all or nothing."""


@runtime_checkable
class SendsLikes(Protocol):
    """A hook like ``PublishesRuns`` for one message at a time: the producer sends a task
    called alone again and again (``delay()`` in a loop) from the message of its first call."""

    def sender_like(self, model: Outgoing) -> Callable[[str, str, str, bytes], None] | None:
        """``send(task_id, tag, headers, body)``, the ``publish`` of one message like
        ``model``'s (published already) with that id, headers JSON text and body
        (``v2.Likes.one``); ``tag`` is a second fresh uuid for the transport's own use (Redis:
        the delivery tag). None when ``model`` is not one the transport can splice."""


@runtime_checkable
class SendsAhead(Protocol):
    """A hook with ``PublishesRuns``: a batch of runs sent now whose replies are read later,
    while the producer builds the next (a group's batches on Redis). Until ``settle_ahead``
    returns, the batch is not known to be stored."""

    def send_runs_ahead(self, runs: Sequence[tuple[Outgoing, Likes | None]]) -> None:
        """Settle what is in flight, then send ``runs`` without reading their replies."""

    def settle_ahead(self) -> None:
        """Read the replies of what is in flight; raise its error."""

    def drop_ahead(self) -> None:
        """Forget what is in flight (its publish failed or gave up)."""


def capabilities_of(transport: Any) -> frozenset[str]:
    """The names of the capabilities ``transport`` declares (for logs and the contract suite)."""
    return frozenset(cap.__name__ for cap in ALL_CAPABILITIES if isinstance(transport, cap))


ALL_CAPABILITIES: tuple[type, ...] = (Leases, Deferral, DeadLetterStore, Broadcast,
                                      SharedConnectionSettling)


def topic_matches(binding: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on ``.``, ``*`` is one word, ``#`` zero or more."""
    if binding in ("#", ""):
        return True if binding == "#" else routing_key == ""
    return _match(binding.split("."), routing_key.split(".") if routing_key else [])


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def check_queue_names(queues: Sequence[str]) -> None:
    if not queues:
        raise ValueError("fetch needs at least one queue name")
    for q in queues:
        if not isinstance(q, str) or not q:
            raise ValueError(f"queue names must be non-empty strings, got {q!r}")
