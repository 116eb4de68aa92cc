"""The in-process broker (``memory://``): the full transport semantics without I/O.

Layer: transport. Used by tests and single-process apps. It keeps the same promises as the SQLite
broker (leases that expire, fencing, deferral, dead letters, priorities) so code tested against it
behaves the same on a real broker. Messages are stored as JSON text and rebuilt on every delivery,
like a real broker would, so a consumer mutating its copy never changes what is stored.
"""

from __future__ import annotations

import heapq
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..protocol.entities import Queue, as_queue
from ..protocol.message import Message
from ..utils import memory_wire
from ..utils.registry import NamedRegistry
from .base import DeadLetter, Delivery, Outgoing, check_queue_names
from .bindings import (
    Binding,
    FanoutFeed,
    binding_of,
    exchange_type_of,
    route,
    route_outgoing,
)
from .memory_broadcast import MemoryBroadcastMixin

READY, LEASED, DELAYED = 0, 1, 2


@dataclass(slots=True, eq=False)
class _Stored:
    """A message as kept by the broker: the bytes and JSON texts, never live objects."""

    body: bytes
    content_type: str
    content_encoding: str
    headers: str
    properties: str

    @classmethod
    def of(cls, message: Message, *, lenient: bool = False) -> "_Stored":
        return cls(bytes(message.body), message.content_type, message.content_encoding,
                   _dumps(message.headers, lenient), _dumps(message.properties, lenient))

    def message(self) -> Message:
        return Message(self.body, self.content_type, self.content_encoding,
                       json.loads(self.headers), json.loads(self.properties))


def _dumps(value: dict[str, Any], lenient: bool) -> str:
    # Dead letters must never fail to store, so odd header values degrade to their repr there.
    return json.dumps(value, separators=(",", ":"), default=repr if lenient else None)


@dataclass(slots=True, eq=False)
class _Entry:
    seq: int
    stored: _Stored
    priority: int
    state: int
    #: when a LEASED or DELAYED entry becomes fetchable again (Unix time)
    visible_at: float
    token: int | None = None
    delivery_count: int = 0
    exchange: str = ""
    routing_key: str | None = None
    #: bumped on every state change; heap items carrying an older version are stale
    version: int = 0


@dataclass(slots=True, eq=False)
class _Queue:
    entries: dict[int, _Entry] = field(default_factory=dict)
    ready: list[tuple[int, int, int]] = field(default_factory=list)  # (-priority, seq, version)
    #: (visible_at, seq, version)
    waiting: list[tuple[float, int, int]] = field(default_factory=list)

    def place(self, entry: _Entry) -> None:
        entry.version += 1
        if entry.state == READY:
            heapq.heappush(self.ready, (-entry.priority, entry.seq, entry.version))
        else:
            heapq.heappush(self.waiting, (entry.visible_at, entry.seq, entry.version))

    def promote(self, now: float) -> None:
        """Make due deferred messages and expired leases ready again, in their old place."""
        while self.waiting and self.waiting[0][0] <= now:
            _, seq, version = heapq.heappop(self.waiting)
            entry = self.entries.get(seq)
            if entry is not None and entry.version == version:
                entry.state = READY  # an expired lease keeps its token until someone re-leases
                self.place(entry)

    def take(self) -> _Entry | None:
        while self.ready:
            _, seq, version = heapq.heappop(self.ready)
            entry = self.entries.get(seq)
            if entry is not None and entry.version == version:
                return entry
        return None

    def next_due(self) -> float | None:
        return self.waiting[0][0] if self.waiting else None

    def compact(self) -> None:
        """Drop stale heap items once they outnumber live entries (acks leave them behind)."""
        if len(self.ready) + len(self.waiting) > 2 * len(self.entries) + 64:
            self.ready, self.waiting = [], []
            for entry in sorted(self.entries.values(), key=lambda e: e.seq):
                self.place(entry)


class _Broker:
    """The shared state behind every transport opened on one ``memory://`` name."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.dead: dict[str, tuple[str, str, _Stored, float]] = {}
        #: what ``declare`` bound, in declaration order
        self.bindings: dict[Binding, None] = {}
        self.seq = itertools.count(1)
        self.dead_seq = itertools.count(1)

    def queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue()
        return q


_REGISTRY: NamedRegistry[_Broker] = NamedRegistry(_Broker)
_shared_broker = _REGISTRY.get


def reset(name: str | None = None) -> None:
    """Forget the shared broker ``memory://name`` (every one when None) so tests start clean."""
    _REGISTRY.reset(name)


class MemoryTransport(MemoryBroadcastMixin):
    """A broker living in this process; thread-safe, waits without spinning.

    ``MemoryTransport.from_url("memory://name")`` shares its queues with every other transport
    opened on the same URL in this process (``memory://`` alone is one shared default), so a
    producer app and a worker app see the same messages. ``MemoryTransport()`` built directly
    without a ``name`` is private to that object.

    Options: ``visibility_timeout`` (seconds a lease lasts, default 3600). Other
    ``broker_transport_options`` keys are ignored, each with one warning line.

    Ordering, delivery counts, fencing and dead letters behave exactly as in ``SQLiteTransport``:
    see its docstring.
    """

    #: nothing in process memory fails transiently
    transient_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, name: str | None = None, *, visibility_timeout: float = 3600.0,
                 **options: Any) -> None:
        self.name = name
        self.visibility_timeout = float(visibility_timeout)
        self.options = options
        self._broker = _Broker() if name is None else _shared_broker(name)
        self._turn = 0
        self._feed = FanoutFeed()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "MemoryTransport":
        """``memory://name`` -> the shared broker ``name``; ``memory://`` -> the shared default."""
        rest = url.split("://", 1)[1] if "://" in url else ""
        return cls(rest.split("?", 1)[0].strip("/"), **options)

    def __repr__(self) -> str:
        where = "(private)" if self.name is None else f"memory://{self.name}"
        return f"<MemoryTransport {where}>"

    # ---- producing ------------------------------------------------------------------------
    def declare(self, queue: Queue | str) -> None:
        """Create the queue and record its binding, for every transport on this broker."""
        queue = as_queue(queue)
        binding = binding_of(queue)
        with self._broker.cond:
            self._broker.queue(queue.name)
            if binding is not None:
                self._broker.bindings[binding] = None
        self._feed.declare(self, queue)

    def _route(self, items: Sequence[Outgoing]) -> list[Outgoing]:
        """``items`` with each routed one replaced by a copy per bound queue; fanout ones are
        broadcast instead."""
        if not any(item.routed for item in items):
            return list(items)
        with self._broker.cond:
            bindings = list(self._broker.bindings)
        return route_outgoing(
            items, exchange_type=lambda exchange: exchange_type_of(bindings, exchange),
            queues=lambda exchange, key, kind: route(bindings, exchange, key,
                                                     exchange_type=kind),
            fanout=lambda item: self.broadcast(item.exchange, item.message,
                                               item.routing_key or ""))

    def publish(self, items: Sequence[Outgoing]) -> None:
        """Store every item at once (all or none); ``not_before`` holds an item until that time.
        Routed items go to every queue their exchange's bindings take them to."""
        now = time.time()
        stored_of = {id(item): _Stored.of(item.message) for item in items}  # all encode, or none
        prepared = [(item, stored_of.get(id(item)) or _Stored.of(item.message))
                    for item in self._route(items)]
        broker = self._broker
        with broker.cond:
            for item, stored in prepared:
                not_before = item.not_before
                if not_before is not None and not_before > now:
                    state, visible_at = DELAYED, not_before
                else:
                    state, visible_at = READY, 0.0
                entry = _Entry(next(broker.seq), stored, item.message.priority, state, visible_at,
                               exchange=item.exchange, routing_key=item.routing_key)
                q = broker.queue(item.queue)
                q.entries[entry.seq] = entry
                q.place(entry)
            if prepared:
                broker.cond.notify_all()

    # ---- consuming ------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_n: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_n`` due messages, waiting up to ``timeout`` seconds for the first.

        Queues are served in turn (round-robin, starting one queue further on each call, as
        Celery does), not as a strict priority; within a queue a higher ``Message.priority`` comes
        first, then the oldest. Wakes as soon as a message is published, becomes due, or a lease
        expires.
        """
        check_queue_names(queues)
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n!r}")
        deadline = time.monotonic() + max(timeout, 0.0)
        broker = self._broker
        with broker.cond:
            start = self._turn % len(queues)
            self._turn += 1
            order = list(dict.fromkeys([*queues[start:], *queues[:start]]))
            fed = self._feed.active(order)
            while True:
                if fed:
                    self._feed.drain(self, order)
                now = time.time()
                leased = self._lease(order, max_n, now)
                remaining = deadline - time.monotonic()
                if leased or remaining <= 0:
                    return leased
                dues = [d for d in (broker.queue(q).next_due() for q in order) if d is not None]
                # a broadcast does not wake this wait: look at the subscriptions now and then
                wait = min([remaining, *(d - now for d in dues), *([0.02] if fed else [])])
                broker.cond.wait(max(wait, 0.0005))

    def _lease(self, order: list[str], max_n: int, now: float) -> list[Delivery]:
        queues = [self._broker.queue(name) for name in order]
        for q in queues:
            q.promote(now)
        token = secrets.randbits(63)
        until = now + self.visibility_timeout
        out: list[Delivery] = []
        active = list(zip(order, queues))
        while active and len(out) < max_n:
            for pair in list(active):
                entry = pair[1].take()
                if entry is None:
                    active.remove(pair)
                    continue
                entry.state, entry.token, entry.visible_at = LEASED, token, until
                entry.delivery_count += 1
                pair[1].place(entry)
                out.append(Delivery(entry.stored.message(), pair[0], (entry.seq, token),
                                    entry.delivery_count, entry.delivery_count > 1,
                                    exchange=entry.exchange, routing_key=entry.routing_key))
                if len(out) == max_n:
                    break
        return out

    # ---- settling on a shared connection (see transport.base.SharedConnectionSettling) ------
    def memory_wire(self) -> memory_wire.MemoryWire:
        return memory_wire.wire_for(self.name or f"private-{id(self._broker)}")

    def shares_connection_with(self, backend: Any) -> bool:
        return (isinstance(backend, memory_wire.OnMemoryWire)
                and backend.memory_wire() is self.memory_wire())

    def ack_later(self, deliveries: Sequence[Delivery],
                  on_reply: Callable[[list[bool] | None], None] | None = None) -> None:
        batch = list(deliveries)

        def ack() -> None:
            reply = self.ack(batch)
            if on_reply is not None:
                on_reply(reply)

        self.memory_wire().stage(ack)

    def ack_with_writes_later(self, deliveries: Sequence[Delivery],
                              stage_writes: Callable[[], None]) -> None:
        # staged actions run in order, and one that raises stays staged with those after it:
        # the ack never runs before the writes have
        stage_writes()
        self.ack_later(deliveries)

    def fetch_later(self, queues: Sequence[str], max_n: int,
                    on_fetched: Callable[[list[Delivery]], None]) -> None:
        self.memory_wire().stage(lambda: on_fetched(self.fetch(queues, max_n, 0.0)))

    def flush(self) -> None:
        self.memory_wire().flush()

    def _owned(self, delivery: Delivery) -> tuple[_Queue, _Entry] | None:
        """The entry behind ``delivery`` if its lease token still matches (the fence)."""
        q = self._broker.queues.get(delivery.queue)
        seq, token = delivery.receipt
        if q is None:
            return None
        entry = q.entries.get(seq)
        if entry is None or entry.token != token:
            return None
        return q, entry

    def _remove(self, delivery: Delivery) -> bool:
        owned = self._owned(delivery)
        if owned is None:
            return False
        q, entry = owned
        del q.entries[entry.seq]
        q.compact()
        return True

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Delete each message if its lease is still ours; False where it was lost (fencing)."""
        with self._broker.cond:
            return [self._remove(d) for d in deliveries]

    def reject(self, delivery: Delivery, requeue: bool) -> bool:
        """``requeue``: fetchable again at once, in its old place; else deleted. Fenced like ack."""
        with self._broker.cond:
            if not requeue:
                return self._remove(delivery)
            owned = self._owned(delivery)
            if owned is None:
                return False
            q, entry = owned
            entry.state, entry.token, entry.visible_at = READY, None, 0.0
            q.place(entry)
            self._broker.cond.notify_all()
            return True

    def extend_lease(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> None:
        """Push each lease's end to now + ``seconds`` (default ``visibility_timeout``); fenced."""
        until = time.time() + (self.visibility_timeout if seconds is None else seconds)
        with self._broker.cond:
            for delivery in deliveries:
                owned = self._owned(delivery)
                if owned is not None:
                    q, entry = owned
                    entry.state, entry.visible_at = LEASED, until
                    q.place(entry)
                    q.compact()

    def defer(self, delivery: Delivery, not_before: float) -> bool:
        """Release the lease and hold the message until ``not_before``; fenced.

        A deferral is not a failed delivery, so it takes back the count the fetch added.
        """
        with self._broker.cond:
            owned = self._owned(delivery)
            if owned is None:
                return False
            q, entry = owned
            entry.state, entry.token, entry.visible_at = DELAYED, None, not_before
            entry.delivery_count = max(entry.delivery_count - 1, 0)
            q.place(entry)
            self._broker.cond.notify_all()
            return True

    # ---- dead letters -----------------------------------------------------------------------
    def dead_letter(self, queue: str, message: Message, reason: str,
                    delivery: Delivery | None = None) -> str:
        """Keep ``message`` byte for byte with ``reason``; returns its id.

        With ``delivery``, the leased message is removed in the same step. If that lease was
        lost (someone else holds or finished the message) nothing is stored and "" is returned.
        """
        stored = _Stored.of(message, lenient=True)
        broker = self._broker
        with broker.cond:
            if delivery is not None and not self._remove(delivery):
                return ""
            dead_id = str(next(broker.dead_seq))
            broker.dead[dead_id] = (queue, reason, stored, time.time())
            return dead_id

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._broker.cond:
            items = list(itertools.islice(self._broker.dead.items(), max(limit, 0)))
        return [_dead(dead_id, *item) for dead_id, item in items]

    def dead_letter_get(self, dead_letter_id: str) -> DeadLetter | None:
        with self._broker.cond:
            item = self._broker.dead.get(str(dead_letter_id))
        return _dead(str(dead_letter_id), *item) if item is not None else None

    def dead_letter_delete(self, dead_letter_ids: Sequence[str] | None = None) -> int:
        with self._broker.cond:
            dead = self._broker.dead
            if dead_letter_ids is None:
                count = len(dead)
                dead.clear()
                return count
            return sum(dead.pop(str(i), None) is not None for i in set(dead_letter_ids))

    # ---- admin ------------------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        """Delete every message of ``queue`` not held by a live lease (deferred ones included)."""
        now = time.time()
        with self._broker.cond:
            q = self._broker.queues.get(queue)
            if q is None:
                return 0
            doomed = [s for s, e in q.entries.items() if e.state != LEASED or e.visible_at <= now]
            for seq in doomed:
                del q.entries[seq]
            q.compact()
            return len(doomed)

    def qsize(self, queue: str) -> int:
        """Every message of ``queue``: ready, deferred or leased."""
        with self._broker.cond:
            q = self._broker.queues.get(queue)
            return len(q.entries) if q is not None else 0

    def close(self) -> None:
        """Close the fanout subscriptions; the shared state outlives the transport (see
        ``reset``)."""
        self._feed.close()


def _dead(dead_id: str, queue: str, reason: str, stored: _Stored, created_at: float) -> DeadLetter:
    return DeadLetter(dead_id, queue, reason, stored.message(), created_at)
