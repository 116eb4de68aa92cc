"""Fanout (``Broadcast``) on RabbitMQ: a mixin for ``AMQPTransport``.

Layer: transport. A broadcast is one message published (with publisher confirms, on the
thread's producer connection) to a named exchange with a routing key, exactly as kombu
publishes to it: body, content type and encoding, headers and properties byte for byte. The
exchange is declared first with Celery's flags where Celery declares it (wire spec §3.4):
``celeryev`` topic and durable, ``celery.pidbox`` fanout and not durable,
``reply.celery.pidbox`` direct and not durable (likewise ``<name>.pidbox`` and
``reply.<name>.pidbox`` for another ``control_exchange``); any other name fanout and not
durable (none of them auto-delete). An exchange that already exists with other flags is used
as it is.

A subscription is a connection of its own with one exclusive, auto-delete queue
(``celeriac.subscriber.<uuid>``, gone when the subscription closes or its process dies) bound
to the exchange with the binding, consumed ``no_ack``; ``subscribe_queue`` names and flags the
queue instead (remote control's mailbox and reply queues, as Celery declares them). A topic
exchange filters on RabbitMQ; a fanout exchange sends everything, so the subscription filters
by the binding itself (AMQP topic matching on the routing key, as the ``Broadcast`` contract
says); a direct exchange takes the binding as an exact key. ``get`` reads the subscription's
socket (never spinning); a lost connection is opened again (and bound again) by the next
``get``: what was broadcast meanwhile is lost, as with kombu.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
import uuid
from typing import Any, Callable, Protocol, Sequence

from amqp import exceptions as amqp_errors  # type: ignore[import-untyped]

from ...protocol.entities import Queue
from ...protocol.message import Message
from ..base import Outgoing, Subscription, topic_matches
from .wire import from_amqp

logger = logging.getLogger(__name__)

#: Celery's exchanges for events and remote control: (type, durable)
KNOWN_EXCHANGES: dict[str, tuple[str, bool]] = {
    "celeryev": ("topic", True),
    "celery.pidbox": ("fanout", False),
    "reply.celery.pidbox": ("direct", False),
}
DEFAULT_EXCHANGE = ("fanout", False)
#: longest single wait of ``get`` (a ``close`` from another thread is seen between two)
_SLICE = 0.25
#: messages one ``get`` returns at most once something arrived
MAX_BATCH = 1000


def exchange_flags(name: str) -> tuple[str, bool]:
    """(type, durable) the exchange ``name`` is declared with (remote control under another
    ``control_exchange``: ``<name>.pidbox`` fanout, ``reply.<name>.pidbox`` direct)."""
    known = KNOWN_EXCHANGES.get(name)
    if known is not None:
        return known
    if is_celery_exchange(name):
        return ("direct", False) if name.startswith("reply.") else ("fanout", False)
    return DEFAULT_EXCHANGE


def is_celery_exchange(name: str) -> bool:
    """Whether ``name`` is one of Celery's event or remote-control exchanges, whose flags are
    fixed (``exchange_flags``)."""
    return name in KNOWN_EXCHANGES or name.endswith(".pidbox")


class _Host(Protocol):
    _exchanges: set[str]

    def _check_fork(self) -> None: ...
    def _connect(self, heartbeat: float) -> Any: ...
    def _admin(self, action: Callable[[Any], Any]) -> Any: ...
    def publish(self, items: Sequence[Outgoing], *,
                confirm: bool | None = None) -> None: ...


def _declare_exchange(host: _Host, name: str) -> None:
    """Make sure the exchange exists: with its flags, or as it already is."""
    if name in host._exchanges:
        return
    kind, durable = exchange_flags(name)
    try:
        host._admin(lambda channel: channel.exchange_declare(
            name, kind, durable=durable, auto_delete=False))
    except amqp_errors.PreconditionFailed as exc:
        logger.debug("exchange %r exists with other flags (%s): used as it is", name, exc)
        host._admin(lambda channel: channel.exchange_declare(name, kind, passive=True))
    host._exchanges.add(name)


class AMQPSubscription:
    """One connection, one exclusive queue bound to the exchange, read by ``get``.

    Meant for one consuming thread; ``close`` from another thread waits for a running ``get``
    to notice (at most a fraction of a second).
    """

    def __init__(self, host: _Host, exchange: str, binding: str,
                 queue: Queue | None = None) -> None:
        self.exchange, self.binding = exchange, binding
        self._host = host
        self._lock = threading.Lock()
        self._closed = False
        self._arrived: collections.deque[Any] = collections.deque()
        self._conn: Any = None
        #: the queue as named and flagged by ``subscribe_queue`` (None: an anonymous one)
        self._named = queue
        self.queue = queue.name if queue is not None else \
            f"celeriac.subscriber.{uuid.uuid4().hex}"
        self._open()

    def _open(self) -> None:
        conn = self._host._connect(0)
        try:
            channel = conn.channel()
            channel.auto_decode = False  # bodies stay bytes, whatever their encoding
            named = self._named
            if named is None:
                channel.queue_declare(self.queue, durable=False, exclusive=True,
                                      auto_delete=True)
            else:
                channel.queue_declare(self.queue, durable=named.durable,
                                      exclusive=named.exclusive, auto_delete=named.auto_delete,
                                      arguments=queue_arguments(named) or None)
            channel.queue_bind(self.queue, self.exchange, self.binding)
            channel.basic_consume(self.queue, no_ack=True, callback=self._arrived.append)
        except BaseException:
            _close(conn)
            raise
        self._conn = conn

    def _take(self, out: list[Message]) -> None:
        while self._arrived and len(out) < MAX_BATCH:
            msg = self._arrived.popleft()
            if topic_matches(self.binding, str(msg.delivery_info.get("routing_key") or "")):
                out.append(from_amqp(msg)[0])

    def _drain(self, wait: float) -> None:
        """Read what arrives within ``wait`` seconds, then what is already in the socket."""
        conn = self._conn
        try:
            conn.drain_events(timeout=max(wait, 0.0001))
            while len(self._arrived) < MAX_BATCH:
                conn.drain_events(timeout=0.0001)
        except socket.timeout:
            pass

    def get(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + max(timeout, 0.0)
        out: list[Message] = []
        with self._lock:
            retried = False
            while not self._closed:
                self._take(out)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                try:
                    if self._conn is None:
                        self._open()
                    self._drain(min(remaining, _SLICE))
                except (amqp_errors.ConnectionError, amqp_errors.ChannelError, OSError) as exc:
                    _close(self._conn)
                    self._conn = None
                    if retried:  # the broker is gone, not just this connection
                        from . import _lost

                        raise _lost(exc) from exc
                    retried = True
                    logger.info("broadcast subscription to %r lost its connection (%r); "
                                "reconnecting", self.exchange, exc)
            return out

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conn, self._conn = self._conn, None
        _close(conn)


def _close(conn: Any) -> None:
    if conn is not None:
        from ...utils.amqp_url import close_quietly as _close_quietly

        _close_quietly(conn)


class AMQPBroadcastMixin:
    """``Broadcast`` for ``AMQPTransport`` (module docstring)."""

    def broadcast(self: _Host, exchange: str, message: Message, routing_key: str = "") -> None:
        """Publish ``message`` to ``exchange`` with ``routing_key``; returns once RabbitMQ
        confirmed it (it reached every queue bound then)."""
        self._check_fork()
        for attempt in (1, 2):
            _declare_exchange(self, exchange)
            try:
                self.publish([Outgoing("", message, exchange=exchange, routing_key=routing_key,
                                       exchange_type=exchange_flags(exchange)[0])],
                             confirm=True)
                return
            except ConnectionError as exc:
                # the exchange went (deleted, or a broker restart took a non-durable one):
                # declare it again once
                if attempt == 2 or not isinstance(exc.__cause__, amqp_errors.NotFound):
                    raise
                self._exchanges.discard(exchange)

    def subscribe(self: _Host, exchange: str, binding: str = "#") -> Subscription:
        """Receive what ``exchange`` broadcasts from now on (``binding``: AMQP topic pattern)."""
        self._check_fork()
        _declare_exchange(self, exchange)
        return AMQPSubscription(self, exchange, binding)

    def subscribe_queue(self: _Host, queue: Queue) -> Subscription:
        """``subscribe`` through a queue named and flagged as ``queue`` says, bound to its
        exchange with its routing key (Celery's pidbox queues: a worker's
        ``<node>.celery.pidbox``, a client's ``<oid>.reply.celery.pidbox``, wire spec §3.4).
        The exchange is declared with ``queue.exchange``'s flags unless it exists already."""
        self._check_fork()
        exchange = queue.exchange
        if exchange.name not in self._exchanges:
            try:
                self._admin(lambda channel: channel.exchange_declare(
                    exchange.name, exchange.type, durable=exchange.durable,
                    auto_delete=exchange.auto_delete))
            except amqp_errors.PreconditionFailed as exc:
                logger.debug("exchange %r exists with other flags (%s): used as it is",
                             exchange.name, exc)
            self._exchanges.add(exchange.name)
        return AMQPSubscription(self, exchange.name, queue.routing_key, queue)


#: kombu queue options sent as queue arguments, in milliseconds (as ``AMQPTransport.declare``)
_MILLISECOND_OPTIONS = {"expires": "x-expires", "message_ttl": "x-message-ttl"}


def queue_arguments(queue: Queue) -> dict[str, Any]:
    """``queue``'s arguments as RabbitMQ takes them: its own, plus ``expires`` and
    ``message_ttl`` (seconds) as ``x-expires`` and ``x-message-ttl`` (milliseconds)."""
    arguments = dict(queue.queue_arguments)
    for option, argument in _MILLISECOND_OPTIONS.items():
        value = queue.options.get(option)
        if value is not None:
            arguments.setdefault(argument, int(float(value) * 1000))
    return arguments
