"""Remote control's wire format (Celery's pidbox, wire spec §6) and the queues it travels on.

Layer: control (shared by the client, ``control/client.py``, and the worker,
``worker/pidbox.py``). A command is one message broadcast on the fanout exchange
``<control_exchange>.pidbox`` (``celery.pidbox``); each worker it is addressed to answers with one
message on the direct exchange ``reply.<control_exchange>.pidbox``, routed by the requester's
``oid`` to its own reply queue ``<oid>.reply.celery.pidbox``. Replies carry the request's
``ticket``, so a client reads only its own answers.

How each broker carries them:

- RabbitMQ: the worker's mailbox is the queue ``<node>.celery.pidbox`` and the client's reply
  queue ``<oid>.reply.celery.pidbox``, declared with Celery's flags (not durable, auto-delete,
  exclusive, ``x-expires``; the mailbox also ``x-message-ttl``), each read on a connection of its
  own (``QueueSubscriptions``);
- Redis: the broadcast is a ``PUBLISH /<db>.celery.pidbox``; a reply is an ``LPUSH`` onto the list
  ``<oid>.reply.celery.pidbox``, found through kombu's binding set, as a Celery client reads it;
- SQLite (and memory): the broadcast is a row of the broker's broadcast table; replies go to a
  queue in the broker file, bound as on Redis.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ..exceptions import ImproperlyConfigured
from ..protocol import serialization
from ..protocol.entities import Exchange, Queue
from ..protocol.message import Message
from ..transport.base import Broadcast, Outgoing, Subscription
from ..utils.urls import redact_url

#: seconds a client waits for replies unless told otherwise (Celery's default)
DEFAULT_TIMEOUT = 1.0
#: replies one read of a reply queue takes at most
REPLY_BATCH = 100
#: the most revoked ids a worker sends in one reply (Celery keeps at most this many)
MAX_REVOKED_IN_REPLY = 50_000


# ---- names --------------------------------------------------------------------------------------
def exchange_name(conf: Mapping[str, Any]) -> str:
    """The fanout exchange commands are broadcast on: ``<control_exchange>.pidbox``."""
    return f"{conf.get('control_exchange') or 'celery'}.pidbox"


def reply_exchange_name(conf: Mapping[str, Any]) -> str:
    """The direct exchange replies are sent to: ``reply.<control_exchange>.pidbox``."""
    return f"reply.{exchange_name(conf)}"


def mailbox_queue(conf: Mapping[str, Any], hostname: str) -> Queue:
    """A worker's own mailbox on RabbitMQ, as Celery 5.7 declares it (spec §3.4)."""
    return Queue(f"{hostname}.{exchange_name(conf)}",
                 Exchange(exchange_name(conf), "fanout", durable=False), "",
                 durable=False, exclusive=True, auto_delete=True,
                 expires=float(conf.get("control_queue_expires") or 10.0),
                 message_ttl=float(conf.get("control_queue_ttl") or 300.0))


def reply_queue(conf: Mapping[str, Any], oid: str) -> Queue:
    """A client's reply queue ``<oid>.reply.celery.pidbox``, bound with routing key ``oid``."""
    exchange = reply_exchange_name(conf)
    return Queue(f"{oid}.{exchange}", Exchange(exchange, "direct", durable=False), oid,
                 durable=False, exclusive=True, auto_delete=True,
                 expires=float(conf.get("control_queue_expires") or 10.0))


# ---- messages -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Request:
    """A command as a worker reads it."""

    method: str
    arguments: dict[str, Any]
    destination: list[str] | None = None
    pattern: str | None = None
    matcher: str | None = None
    ticket: str | None = None
    reply_to: dict[str, Any] | None = None

    def addressed_to(self, hostname: str) -> bool:
        """Whether node ``hostname`` handles it: no destination, or one naming it, or a
        ``pattern`` its ``matcher`` (``glob``, the default, or ``pcre``) finds in the name."""
        if self.destination:
            return hostname in self.destination
        if self.pattern and self.matcher:
            return matches(hostname, self.pattern, self.matcher)
        return True


def matches(hostname: str, pattern: str, matcher: str | None = None) -> bool:
    """kombu's matchers: ``glob`` (fnmatch) and ``pcre`` (a regular expression matched at the
    start of the name)."""
    if matcher in (None, "", "glob"):
        return fnmatch.fnmatch(hostname, pattern)
    if matcher == "pcre":
        return re.match(pattern, hostname) is not None
    raise ValueError(f"unknown matcher {matcher!r}: use 'glob' or 'pcre'")


def encode_request(method: str, arguments: Mapping[str, Any] | None = None, *,
                   destination: Sequence[str] | None = None, pattern: str | None = None,
                   matcher: str | None = None, ticket: str | None = None,
                   reply_to: Mapping[str, Any] | None = None, clock: int = 0,
                   timeout: float | None = None, serializer: str = "json") -> Message:
    """A broadcast command as kombu's ``Mailbox`` sends it: body keys in its order, headers
    ``clock`` and ``expires`` (send time + ``timeout``, 0 for none), persistent delivery."""
    body: dict[str, Any] = {"method": method, "arguments": dict(arguments or {}),
                            "destination": list(destination) if destination else None,
                            "pattern": pattern, "matcher": matcher}
    if ticket:
        body["ticket"] = ticket
        body["reply_to"] = dict(reply_to or {})
    content_type, encoding, data = serialization.dumps(body, serializer)
    headers = {"clock": clock, "expires": time.time() + timeout if timeout else 0}
    return Message(data, content_type, encoding, headers, {"delivery_mode": 2, "priority": 0})


def encode_reply(hostname: str, value: Any, *, ticket: str | None, clock: int,
                 serializer: str = "json") -> Message:
    """A worker's answer: ``{node: value}``, headers ``ticket`` and ``clock``, transient."""
    content_type, encoding, data = serialization.dumps({hostname: value}, serializer)
    return Message(data, content_type, encoding, {"ticket": ticket, "clock": clock},
                   {"delivery_mode": 1, "priority": 0})


def decode_body(message: Message, accept: frozenset[str] | None) -> Any:
    """The message's body (refused unless its content type is accepted)."""
    return serialization.loads(bytes(message.body), message.content_type,
                               message.content_encoding, accept)


def decode_request(message: Message, accept: frozenset[str] | None) -> Request:
    """A command from a broadcast message; ValueError names what is wrong with it."""
    body = decode_body(message, accept)
    if not isinstance(body, dict) or not isinstance(body.get("method"), str):
        raise ValueError(f"not a remote control command (no method): {body!r:.200}")
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise ValueError(f"command {body['method']!r}: arguments must be a map, got "
                         f"{arguments!r:.200}")
    destination = body.get("destination")
    if isinstance(destination, str):
        destination = [destination]
    reply_to = body.get("reply_to")
    return Request(body["method"], arguments,
                   list(destination) if destination else None,
                   body.get("pattern"), body.get("matcher"), body.get("ticket"),
                   reply_to if isinstance(reply_to, dict) and reply_to.get("routing_key")
                   else None)


def adjust_clock(clock: Any, value: Any) -> None:
    """Move ``clock`` (the app's Lamport clock) past a ``clock`` header, if it holds a number."""
    try:
        seen = int(value)
    except (TypeError, ValueError):
        return
    clock.adjust(seen)


def expired(headers: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether a command's ``expires`` header (Unix time; 0 or absent: never) has passed."""
    value = headers.get("expires")
    try:
        expires = float(value or 0)
    except (TypeError, ValueError):
        return False
    return bool(expires) and (time.time() if now is None else now) > expires


def send_reply(transport: Any, reply_to: Mapping[str, Any], message: Message) -> None:
    """Publish a reply where ``reply_to`` says (the direct reply exchange and the requester's
    routing key): Redis and SQLite route it through the bindings the requester declared,
    RabbitMQ through the exchange."""
    transport.publish([Outgoing("", message, exchange=str(reply_to.get("exchange") or ""),
                                routing_key=str(reply_to["routing_key"]),
                                exchange_type="direct")])


# ---- the broker's side --------------------------------------------------------------------------
@runtime_checkable
class QueueSubscriptions(Protocol):
    """A hook, not a capability: a broker whose fanout goes through queues (RabbitMQ) can
    subscribe through a queue named and flagged as Celery's pidbox queues are, read on a
    connection of its own."""

    def subscribe_queue(self, queue: Queue) -> Subscription: ...


def require_broadcast(transport: Any, broker_url: str) -> Broadcast:
    """The transport, if it can broadcast; else one ImproperlyConfigured line."""
    if not isinstance(transport, Broadcast):
        raise ImproperlyConfigured(
            f"remote control needs a broker that can broadcast, and the one at "
            f"{redact_url(broker_url)} ({type(transport).__name__}) cannot: use Redis, RabbitMQ "
            f"or the embedded SQLite broker")
    return transport


class ReplyInbox:
    """A client's reply queue, declared (and bound) when opened, so it exists before the
    command that names it is broadcast."""

    def __init__(self, transport: Any, queue: Queue) -> None:
        self.transport = transport
        self.queue = queue
        self._subscription: Subscription | None = None
        if isinstance(transport, QueueSubscriptions):
            self._subscription = transport.subscribe_queue(queue)
        else:
            transport.declare(queue)

    def get(self, timeout: float) -> list[Message]:
        """What arrived, waiting up to ``timeout`` seconds for the first."""
        if self._subscription is not None:
            return self._subscription.get(timeout)
        deliveries = self.transport.fetch([self.queue.name], REPLY_BATCH, max(timeout, 0.0))
        if deliveries:
            self.transport.ack(deliveries)
        return [delivery.message for delivery in deliveries]

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            return
        try:  # late replies nobody will read
            self.transport.purge(self.queue.name)
        except Exception:  # noqa: BLE001 - best effort: the broker may be gone already
            pass
