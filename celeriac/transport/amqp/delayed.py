"""Delays on the broker (countdown, eta) for quorum queues: Celery 5.5+'s native delayed delivery.

Layer: transport. A mixin for ``AMQPTransport`` (``Deferral``) plus the pure arithmetic of the
topology, which is Celery's (kombu ``native_delayed_delivery``), so Celery and celeriac share it
on one vhost:

- 28 levels, 27 down to 0. Level ``L`` is a durable topic exchange ``celery_delayed_L`` and a
  durable queue of the same name with ``x-queue-type`` (``quorum``), ``x-overflow:
  reject-publish``, ``x-message-ttl`` 2^L seconds (in ms), ``x-dead-letter-exchange`` the next
  level's exchange (level 0: ``celery_delayed_delivery``) and ``x-dead-letter-strategy:
  at-least-once``.
- A delayed message is published to ``celery_delayed_27`` with the routing key
  ``b27.b26....b0.<routing key>``: the delay in whole seconds as 28 binary digits, then the
  routing key it would have had. At level ``L`` the queue takes it when bit ``L`` is 1 (binding
  ``*.``*(27-L) ``1.#``: it waits 2^L s there, then is dead-lettered to the next level's
  exchange); when the bit is 0 the exchange passes it straight on (exchange-to-exchange binding
  ``*.``*(27-L) ``0.#``). Level 0 ends in the topic exchange ``celery_delayed_delivery``.
- ``celery_delayed_delivery`` is bound to each destination queue's exchange with ``#.<binding
  key>`` (the key as it is when it starts with ``#``), and the queue to its exchange with the same
  key. Celery's worker makes these bindings for its queues when any is a quorum queue, and only
  for topic and fanout exchanges (a direct exchange cannot match the prefixed key).

What celeriac does with it (documented in ``docs/rabbitmq.md``):

- Declaring a quorum queue (``x-queue-type: quorum``) declares the levels and the delivery
  exchange (idempotent, Celery's flags), and binds the queue as Celery's worker does when its
  exchange is not direct. It also binds the queue straight to ``celery_delayed_delivery`` with
  ``#.celeriac-queue:<name>`` (one word, dots in the name escaped as ``%2E``): celeriac's own
  route to exactly that queue, used for a queue on a direct exchange (Celery's default) and for
  ``defer``.
- Publishing a message with ``not_before`` at least a second away: to a named topic
  exchange whose known bound queues are all quorum queues, exactly as Celery 5.5+ publishes it;
  to a quorum queue through the default exchange, by celeriac's route (the original exchange and
  routing key are recorded in the message so ``delivery_info`` is the usual one). Whole seconds
  only (Celery rounds down too): the message reaches its queue up to a second before its ETA and
  the consumer holds it for that remainder.
- ``defer`` (a message that arrived early, published without a broker-side delay): on a quorum
  queue, a copy goes through the levels by celeriac's route, confirmed, then the delivery is
  acked (a connection lost in between leaves a duplicate, never a loss). On a classic queue, or
  less than a second before its ETA, the delivery is held unacked by the consumer until due,
  as Celery does (RabbitMQ's ``consumer_timeout`` bounds how long that may be).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from ...protocol.entities import Queue
from ...protocol.message import Message
from ..base import Delivery, Outgoing, topic_matches

logger = logging.getLogger(__name__)

#: bits of the delay in a routing key (whole seconds: up to 2^28 - 1 s, about 8.5 years)
BITS = 28
MAX_LEVEL = BITS - 1
MAX_DELAY = 2 ** BITS - 1
#: where every level ends, bound to the destination exchanges
DELIVERY_EXCHANGE = "celery_delayed_delivery"
#: celeriac's own per-queue route (after the delay bits) is this word followed by the queue's name
QUEUE_ROUTE_PREFIX = "celeriac-queue:"

_DELAY_PREFIX = re.compile(r"^(?:[01]\.){%d}" % BITS)


def level_name(level: int) -> str:
    """The exchange and queue of one level: ``celery_delayed_<level>``."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"a delay level is 0 to {MAX_LEVEL}, not {level}")
    return f"celery_delayed_{level}"


#: where a delayed message is published
FIRST_EXCHANGE = level_name(MAX_LEVEL)


def strip_delay(routing_key: str) -> str:
    """``routing_key`` without the delay bits a delayed message's key starts with (a retried
    task carries its delivery's key forward)."""
    return _DELAY_PREFIX.sub("", routing_key, count=1)


def delay_routing_key(seconds: int, routing_key: str) -> str:
    """The key to publish a message delayed by ``seconds`` (1 to ``MAX_DELAY``) under: the
    delay's 28 binary digits, most significant first, then ``routing_key`` (without any delay
    bits it already had)."""
    if not 1 <= seconds <= MAX_DELAY:
        raise ValueError(f"a broker-side delay is 1 to {MAX_DELAY} whole seconds, not {seconds}")
    if not routing_key:
        raise ValueError("a delayed message needs a non-empty routing key")
    return ".".join(format(seconds, f"0{BITS}b")) + "." + strip_delay(routing_key)


def delay_of(routing_key: str) -> int | None:
    """The delay in seconds a delayed message's key encodes, None if it has no delay bits."""
    if not _DELAY_PREFIX.match(routing_key):
        return None
    return int(routing_key[:2 * BITS:2], 2)


def delivery_binding_key(binding_key: str) -> str:
    """How ``celery_delayed_delivery`` is bound to a queue's exchange (and the queue to it):
    ``#.<binding key>``, or the key itself when it already starts with ``#``."""
    return binding_key if binding_key.startswith("#") else f"#.{binding_key}"


def queue_route(queue: str) -> str:
    """celeriac's routing key (after the delay bits) that reaches exactly ``queue``: one word
    (dots escaped), so no binding of Celery's (``#.<binding key>``) takes it unless its key is
    a wildcard that takes every delayed message."""
    return QUEUE_ROUTE_PREFIX + queue.replace("%", "%25").replace(".", "%2E")


def queue_route_usable(queue: str) -> bool:
    """Whether ``queue`` has a route of its own (AMQP routing keys are at most 255 bytes)."""
    return bool(queue) and len(delay_routing_key(1, queue_route(queue)).encode()) <= 255


def is_quorum(queue: Queue) -> bool:
    return queue.queue_arguments.get("x-queue-type") == "quorum"


@dataclass(frozen=True)
class Topology:
    """The levels and the delivery exchange, as data: every exchange is a durable topic one."""

    exchanges: list[str] = field(default_factory=list)
    #: (queue, arguments), each durable, not exclusive, not auto-delete
    queues: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: (queue, exchange, binding key)
    queue_bindings: list[tuple[str, str, str]] = field(default_factory=list)
    #: (destination exchange, source exchange, binding key)
    exchange_bindings: list[tuple[str, str, str]] = field(default_factory=list)


def topology(queue_type: str = "quorum") -> Topology:
    """Celery's levels (``broker_native_delayed_delivery_queue_type``: quorum or classic)."""
    if queue_type not in ("quorum", "classic"):
        raise ValueError(f"the delay queues are quorum or classic queues, not {queue_type!r}")
    out = Topology()
    for level in range(MAX_LEVEL, -1, -1):
        name = level_name(level)
        arguments: dict[str, Any] = {
            "x-queue-type": queue_type, "x-overflow": "reject-publish",
            "x-message-ttl": 2 ** level * 1000,
            "x-dead-letter-exchange": level_name(level - 1) if level else DELIVERY_EXCHANGE}
        if queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
        stars = "*." * (MAX_LEVEL - level)
        out.exchanges.append(name)
        out.queues.append((name, arguments))
        out.queue_bindings.append((name, name, f"{stars}1.#"))
        if level:
            out.exchange_bindings.append((level_name(level - 1), name, f"{stars}0.#"))
    out.exchanges.append(DELIVERY_EXCHANGE)
    out.exchange_bindings.append((DELIVERY_EXCHANGE, level_name(0), "*." * MAX_LEVEL + "0.#"))
    return out


def route_through(routing_key: str, topo: Topology) -> tuple[list[str], str | None]:
    """Where a message published to ``celery_delayed_27`` with ``routing_key`` goes: the level
    queues it waits in, in order, and the exchange it leaves by (``celery_delayed_delivery``),
    or None if nothing takes it. Pure: follows the bindings with topic matching, and each
    queue's dead-letter exchange, as RabbitMQ does."""
    waits: list[str] = []
    exchange: str | None = FIRST_EXCHANGE
    dead_letter = {name: str(args["x-dead-letter-exchange"]) for name, args in topo.queues}
    while exchange is not None and exchange != DELIVERY_EXCHANGE:
        queues = [q for q, ex, key in topo.queue_bindings
                  if ex == exchange and topic_matches(key, routing_key)]
        onward = [dest for dest, src, key in topo.exchange_bindings
                  if src == exchange and topic_matches(key, routing_key)]
        if len(queues) + len(onward) != 1:
            return waits, None if not queues and not onward else "ambiguous"
        if queues:
            waits.append(queues[0])
            exchange = dead_letter[queues[0]]
        else:
            exchange = onward[0]
    return waits, exchange


# ---- the mixin ----------------------------------------------------------------------------------
class _Host(Protocol):
    _entities: dict[str, Queue]
    _seq: Any

    def _admin(self, action: Callable[[Any], Any]) -> Any: ...
    def _holder(self, delivery: Delivery) -> Any: ...
    def _qos_global(self, current: Any, order: list[str]) -> bool: ...
    def _check_fork(self) -> None: ...
    def publish(self, items: Sequence[Outgoing], *,
                confirm: bool | None = None) -> None: ...
    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]: ...
    def _delay_state(self) -> _DelayState: ...
    def _delay_bindings(self, queue: Queue) -> None: ...
    def _natively_delayed(self, queue: str) -> Queue | None: ...


class _DelayState:
    """What this transport already declared for delays (per process)."""

    def __init__(self) -> None:
        self.topology = False
        self.bound: set[str] = set()


class AMQPDelayedDeliveryMixin:
    """``Deferral`` and broker-side delays on quorum queues (module docstring)."""

    #: ``broker_native_delayed_delivery_queue_type``: the type of the level queues
    delay_queue_type = "quorum"

    def _delay_state(self) -> _DelayState:
        state: _DelayState | None = self.__dict__.get("_delay_state_")
        if state is None:
            state = self.__dict__["_delay_state_"] = _DelayState()
        return state

    def _declare_delayed(self: _Host, queue: Queue) -> None:
        """After ``queue`` was declared: for a quorum queue, the levels (once per process) and
        its bindings for delays."""
        if is_quorum(queue):
            self._delay_bindings(queue)

    def _ensure_delay_topology(self: _Host) -> None:
        state = self._delay_state()
        if state.topology:
            return
        topo = topology(getattr(self, "delay_queue_type", "quorum"))

        def run(channel: Any) -> None:
            for name, arguments in topo.queues:
                channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
                channel.queue_declare(name, durable=True, exclusive=False, auto_delete=False,
                                      arguments=arguments)
            for queue, exchange, key in topo.queue_bindings:
                channel.queue_bind(queue, exchange, key)
            for destination, source, key in topo.exchange_bindings[:-1]:
                channel.exchange_bind(destination, source, key)
            channel.exchange_declare(DELIVERY_EXCHANGE, "topic", durable=True, auto_delete=False)
            destination, source, key = topo.exchange_bindings[-1]
            channel.exchange_bind(destination, source, key)

        self._admin(run)
        state.topology = True

    def _delay_bindings(self: _Host, queue: Queue) -> None:
        """Bind ``queue`` (a quorum queue) for delays: as Celery's worker does when its exchange
        is not direct, and by celeriac's own route."""
        state = self._delay_state()
        if queue.name in state.bound:
            return
        AMQPDelayedDeliveryMixin._ensure_delay_topology(self)
        exchange = queue.exchange

        def run(channel: Any) -> None:
            if exchange.name and exchange.type != "direct":
                key = delivery_binding_key(queue.routing_key)
                channel.exchange_bind(exchange.name, DELIVERY_EXCHANGE, key)
                channel.queue_bind(queue.name, exchange.name, key)
            if queue_route_usable(queue.name):
                channel.queue_bind(queue.name, DELIVERY_EXCHANGE,
                                   delivery_binding_key(queue_route(queue.name)))

        self._admin(run)
        state.bound.add(queue.name)

    def _natively_delayed(self: _Host, queue: str) -> Queue | None:
        """The quorum queue ``queue`` if it is bound for delays by this transport, else None."""
        entity = self._entities.get(queue)
        if entity is None or not is_quorum(entity) or entity.name not in self._delay_state().bound:
            return None
        return entity if queue_route_usable(entity.name) else None

    def _delayed_target(self: _Host, item: Outgoing, now: float
                        ) -> tuple[str, str, tuple[str, str] | None] | None:
        """For an item to hold back on the broker: the exchange and routing key to publish it
        with, and the route to record in it; None to publish it as it is."""
        if item.not_before is None:
            return None
        seconds = min(int(item.not_before - now), MAX_DELAY)
        if seconds < 1:
            return None
        if item.routed:
            routing_key = item.routing_key or ""
            targets = [q for q in self._entities.values() if q.exchange.name == item.exchange
                       and (q.exchange.type == "fanout"
                            or topic_matches(q.routing_key, routing_key))]
            kinds = {q.exchange.type for q in targets} | (
                {item.exchange_type} if item.exchange_type else set())
            if (not routing_key or not targets or "direct" in kinds
                    or not all(self._natively_delayed(q.name) for q in targets)
                    or any(q.exchange.type == "fanout" for q in targets)):
                return None
            return FIRST_EXCHANGE, delay_routing_key(seconds, routing_key), None
        entity = self._natively_delayed(item.queue)
        if entity is None:
            return None
        return (FIRST_EXCHANGE, delay_routing_key(seconds, queue_route(entity.name)),
                (item.exchange, item.key))

    def _defers_natively(self: _Host, queue: str, message: Message, not_before: float,
                         now: float) -> bool:
        """Whether an early arrival goes to the worker to be deferred (``defer`` sends it
        through the levels) rather than being held here until due."""
        return (not_before - now >= 1.0 and message.headers.get("eta") is not None
                and self._natively_delayed(queue) is not None)

    def defer(self: _Host, delivery: Delivery, not_before: float) -> bool:
        """Release ``delivery`` to become due at ``not_before``; False if no longer held.

        On a quorum queue bound for delays, with a second or more to wait, a copy waits in the
        broker's delay levels (published with confirms, recording the original route), then the
        delivery is acked. Otherwise the consumer holds it unacked until due, as Celery does."""
        self._check_fork()
        current = self._holder(delivery)
        if current is None:
            return False
        entity = self._natively_delayed(delivery.queue)
        if entity is not None and not_before - time.time() >= 1.0:
            route_key = delivery.routing_key
            if route_key is not None:
                route_key = strip_delay(route_key)
            exchange = delivery.exchange
            if exchange in (DELIVERY_EXCHANGE, FIRST_EXCHANGE):
                exchange = ""  # a delayed arrival: it came by the queue's own route
            self.publish([Outgoing(delivery.queue, delivery.message, not_before,
                                   exchange, route_key or delivery.queue)], confirm=True)
            return self.ack([delivery]) == [True]
        tag = delivery.receipt[1]
        # not under ``_read_lock``: a fetch holds that while it waits for messages (up to its
        # timeout), and the thread deferring is the one that starts tasks
        with current.write_lock:
            if current.held.pop(tag, None) is None:
                return False
            # from held to waiting (by way of ``deferred``, which the fetching thread empties
            # into ``waiting``): what the prefetch counts is unchanged (the next fetch fits it
            # to held + waiting + what it asks, ``_fit_prefetch``)
            current.deferred.append((float(not_before), next(self._seq), delivery))
        return True
