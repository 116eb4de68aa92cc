"""Bindings: which queues a message published to an exchange with a routing key reaches.

Layer: transport (imports ``protocol`` and ``transport.base`` only). The matching is pure logic,
the same for every broker: a transport only stores and loads its bindings (a table on SQLite,
kombu's ``_kombu.binding.<exchange>`` sets on Redis, a set in memory) and calls ``route``.

- direct: the binding key equals the routing key;
- topic: AMQP topic matching (``*`` one word, ``#`` zero or more); on Redis, kombu's own regular
  expression, stored with each binding, so that Celery and celeriac route alike there
  (the one difference: on Redis ``a.#`` does not match ``a``);
- fanout: every bound queue; the transports send fanout through their ``Broadcast`` capability,
  as kombu does on Redis (``PUBLISH``), and ``FanoutFeed`` moves what a consumer's fanout-bound
  queues receive into those queues;
- the default exchange ``""``: the queue named by the routing key.

A message that matches no binding is dropped with a warning, as RabbitMQ drops an unroutable
message (kombu on Redis sets it aside in ``ae.undeliver``).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..protocol.entities import Queue, as_queue
from ..protocol.message import Message
from .base import Outgoing, Subscription, topic_matches

__all__ = ["Binding", "FanoutFeed", "binding_of", "exchange_type_of", "kombu_member",
           "kombu_topic_matches", "kombu_topic_pattern", "matches", "parse_kombu_member",
           "route", "route_outgoing", "warn_unroutable"]

logger = logging.getLogger("celeriac.transport")

#: kombu's separator between the parts of a binding member (and of priority list names)
KOMBU_SEP = "\x06\x16"


@dataclass(frozen=True, slots=True)
class Binding:
    """``queue`` is bound to ``exchange`` (of ``exchange_type``) with binding key ``key``."""

    queue: str
    exchange: str
    exchange_type: str = "direct"
    key: str = ""


def binding_of(queue: Queue | str) -> Binding | None:
    """The binding declaring ``queue`` makes; None for the default exchange ``""``, which
    reaches every queue by its name without one."""
    queue = as_queue(queue)
    if not queue.exchange.name:
        return None
    return Binding(queue.name, queue.exchange.name, queue.exchange.type or "direct",
                   queue.routing_key or "")


def matches(exchange_type: str, key: str, routing_key: str,
            topic: Callable[[str, str], bool] = topic_matches) -> bool:
    """Whether a binding with ``key`` on an exchange of ``exchange_type`` takes ``routing_key``."""
    if exchange_type == "fanout":
        return True
    if exchange_type == "topic":
        return topic(key, routing_key)
    return key == routing_key  # direct (and headers, which celeriac routes as direct)


def route(bindings: Iterable[Binding], exchange: str, routing_key: str, *,
          exchange_type: str | None = None,
          topic: Callable[[str, str], bool] = topic_matches) -> list[str]:
    """The queues a message published to ``exchange`` with ``routing_key`` reaches, each once,
    in binding order. ``exchange_type`` overrides the type the bindings record."""
    if not exchange:
        return [routing_key] if routing_key else []
    out: dict[str, None] = {}
    for binding in bindings:
        if binding.exchange != exchange:
            continue
        kind = exchange_type or binding.exchange_type
        if matches(kind, binding.key, routing_key, topic):
            out[binding.queue] = None
    return list(out)


def exchange_type_of(bindings: Iterable[Binding], exchange: str,
                     default: str = "direct") -> str:
    """The type the bindings of ``exchange`` record (``default`` when it has none)."""
    for binding in bindings:
        if binding.exchange == exchange:
            return binding.exchange_type
    return default


def route_outgoing(items: Sequence[Outgoing], *, exchange_type: Callable[[str], str | None],
                   queues: Callable[[str, str, str | None], list[str]],
                   fanout: Callable[[Outgoing], object]) -> list[Outgoing]:
    """``items`` with each routed one replaced by a copy per queue it reaches (unroutable ones
    dropped with a warning), in order; the plain ones as they are. A routed item's exchange
    type is its own ``exchange_type``, else ``exchange_type(exchange)`` (None: the bindings'
    own); a fanout one goes to ``fanout(item)`` instead (the transport broadcasts it), the
    others to ``queues(exchange, routing_key, kind)``."""
    out: list[Outgoing] = []
    for item in items:
        if not item.routed:
            out.append(item)
            continue
        key = item.routing_key or ""
        kind = item.exchange_type or exchange_type(item.exchange)
        if kind == "fanout":
            fanout(item)
            continue
        reached = queues(item.exchange, key, kind)
        if not reached:
            warn_unroutable(item.exchange, key)
        out.extend(Outgoing(q, item.message, item.not_before, item.exchange, key)
                   for q in reached)
    return out


def warn_unroutable(exchange: str, routing_key: str) -> None:
    logger.warning("Message published to exchange %r with routing key %r matched no bound "
                   "queue and was dropped", exchange, routing_key)


# ---- kombu's layout on Redis -------------------------------------------------------------------
def _escape_regex(text: str, white: str = "") -> str:
    return "".join(c if c.isalnum() or c in white else ("\\000" if c == "\000" else "\\" + c)
                   for c in text)


_WILDCARDS = {"*": r"[^\.]+", "#": r".*?"}


def kombu_topic_pattern(key: str) -> str:
    """The regular expression kombu stores for a topic binding key (``feed.#`` ->
    ``^feed\\..*?$``)."""
    return "^%s$" % r"\.".join(_WILDCARDS.get(word, word)
                               for word in _escape_regex(key, ".#*").split("."))


_COMPILED: dict[str, re.Pattern[str]] = {}


def kombu_topic_matches(key: str, routing_key: str) -> bool:
    """Topic matching as kombu does it on Redis: its regular expression for ``key``."""
    pattern = _COMPILED.get(key)
    if pattern is None:
        pattern = _COMPILED[key] = re.compile(kombu_topic_pattern(key))
    return pattern.match(routing_key) is not None


def kombu_member(binding: Binding, sep: str = KOMBU_SEP) -> str:
    """The member of ``_kombu.binding.<exchange>``: ``key<sep>pattern<sep>queue``, with
    kombu's regular expression as the pattern of a topic binding (empty otherwise)."""
    pattern = kombu_topic_pattern(binding.key) if binding.exchange_type == "topic" else ""
    return sep.join((binding.key, pattern, binding.queue))


def parse_kombu_member(member: str | bytes, exchange: str, exchange_type: str | None = None,
                       sep: str = KOMBU_SEP) -> Binding | None:
    """A binding from a member of ``_kombu.binding.<exchange>``; the type is not stored there,
    so without ``exchange_type`` a member with a pattern is a topic binding, else direct."""
    text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
    parts = text.split(sep)
    if len(parts) != 3:
        return None
    key, pattern, queue = parts
    return Binding(queue, exchange, exchange_type or ("topic" if pattern else "direct"), key)


# ---- fanout into queues ------------------------------------------------------------------------
class FanoutFeed:
    """The fanout-bound queues a consuming transport declared: each has a subscription to its
    exchange (opened at ``declare``, so nothing broadcast after the worker declared its queues is
    missed), and ``drain`` (called by each fetch) moves what arrived into the queue itself, where
    it is leased, acked and redelivered like any message.

    The transport passed in must have the ``Broadcast`` capability.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, tuple[Queue, Subscription]] = {}

    def declare(self, transport: Any, queue: Queue) -> None:
        if queue.exchange.type != "fanout" or not queue.exchange.name:
            return
        with self._lock:
            if queue.name in self._subscriptions:
                return
            # fanout ignores routing keys: every broadcast of the exchange is this queue's
            self._subscriptions[queue.name] = (queue, transport.subscribe(queue.exchange.name,
                                                                          "#"))

    def __contains__(self, queue: str) -> bool:
        return queue in self._subscriptions

    def active(self, queues: Sequence[str]) -> bool:
        """Whether any of ``queues`` is fed from a fanout exchange."""
        return bool(self._subscriptions) and any(q in self._subscriptions for q in queues)

    def drain(self, transport: Any, queues: Sequence[str]) -> int:
        """Publish what the subscriptions of ``queues`` received into those queues; returns how
        many messages moved."""
        if not self._subscriptions:
            return 0
        items: list[Outgoing] = []
        for name in queues:
            entry = self._subscriptions.get(name)
            if entry is None:
                continue
            queue, subscription = entry
            received: list[Message] = subscription.get(0.0)
            items.extend(Outgoing(name, message, exchange=queue.exchange.name,
                                  routing_key=queue.routing_key) for message in received)
        if items:
            transport.publish(items)
        return len(items)

    def close(self) -> None:
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, {}
        for _, subscription in subscriptions.values():
            try:
                subscription.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                logger.debug("closing a fanout subscription: %r", exc)
