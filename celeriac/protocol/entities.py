"""Exchanges and queues as AMQP names them: plain data every layer can pass around.

Layer: protocol (pure). The router picks a ``Queue`` for a message; a transport declares one with
its exchange, routing key and arguments (RabbitMQ needs all of them; Redis and SQLite use the
name and record the binding). ``celeriac.routing`` re-exports both under Celery's names.
"""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["Broadcast", "Exchange", "Queue", "as_exchange", "as_queue"]


class Exchange:
    """An AMQP exchange by name and type (for brokers without exchanges it is just a label)."""

    def __init__(self, name: str = "", type: str = "direct", durable: bool = True,  # noqa: A002
                 auto_delete: bool = False, arguments: dict[str, Any] | None = None) -> None:
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})

    def _fields(self) -> tuple[Any, ...]:
        return (self.name, self.type, self.durable, self.auto_delete, self.arguments)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Exchange):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.name, self.type))

    def __repr__(self) -> str:
        return f"<Exchange {self.name or repr('')}({self.type})>"


class Queue:
    """A named queue, bound to ``exchange`` with ``routing_key`` (both default to the name)."""

    def __init__(self, name: str, exchange: Exchange | str | None = None,
                 routing_key: str | None = None, *, durable: bool = True, exclusive: bool = False,
                 auto_delete: bool = False, queue_arguments: dict[str, Any] | None = None,
                 max_priority: int | None = None, alias: str | None = None, **kw: Any) -> None:
        self.name = name
        #: whether the exchange and the routing key were given: in ``task_queues``, a queue
        #: without them gets ``task_default_exchange`` and ``task_default_routing_key``, as
        #: Celery does (an exchange named "" and a key "" count as not given)
        self.exchange_given = exchange is not None and as_exchange(exchange).name != ""
        self.routing_key_given = bool(routing_key)
        self.exchange: Exchange = Exchange(name) if exchange is None else as_exchange(exchange)
        self.routing_key = name if routing_key is None else routing_key
        #: the name ``-Q`` and routes may use for it (kombu's ``Broadcast`` queues have one)
        self.alias = alias
        self.durable = durable
        self.exclusive = exclusive
        self.auto_delete = auto_delete
        self.queue_arguments = dict(queue_arguments or {})
        self.max_priority = max_priority
        if max_priority is not None:  # how AMQP brokers are told (kombu does the same)
            self.queue_arguments["x-max-priority"] = max_priority
        #: other kombu queue options (expires, message_ttl, ...) for transports that support them
        self.options = kw

    def _fields(self) -> tuple[Any, ...]:
        return (self.name, self.exchange, self.routing_key, self.durable, self.exclusive,
                self.auto_delete, self.queue_arguments, self.options, self.alias)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Queue):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<Queue {self.name} -> {self.exchange!r} -> {self.routing_key}>"


class Broadcast(Queue):
    """A queue bound to the fanout exchange ``name``: every worker consuming it gets its own copy
    of each message (kombu's ``kombu.common.Broadcast``, which Celery's docs use).

    Unless ``queue`` names it, the queue itself is ``bcast.<uuid>``, new in each process, and
    ``name`` is its alias, which ``-Q`` and routes use.
    """

    def __init__(self, name: str = "", queue: str | None = None, unique: bool = False,
                 auto_delete: bool = True, exchange: Exchange | str | None = None,
                 alias: str | None = None, **kw: Any) -> None:
        if unique:
            queue = f"{queue or 'bcast'}.{uuid.uuid4()}"
        else:
            queue = queue or f"bcast.{uuid.uuid4()}"
        kw.setdefault("routing_key", None)
        super().__init__(queue, Exchange(name, "fanout") if exchange is None else exchange,
                         alias=alias or name, auto_delete=auto_delete, **kw)
        if not kw.get("routing_key"):
            self.routing_key = ""


def as_exchange(exchange: Any) -> Exchange:
    """An ``Exchange`` from ours, a name, or anything with kombu's attributes (``name``,
    ``type``, ``durable``, ``auto_delete``, ``arguments``): kombu's own objects are accepted
    without importing kombu."""
    if isinstance(exchange, Exchange):
        return exchange
    if exchange is None:
        return Exchange("")
    if isinstance(exchange, str):
        return Exchange(exchange)
    if not hasattr(exchange, "name"):
        raise TypeError(f"expected an exchange (a name or an Exchange), got {exchange!r}")
    return Exchange(exchange.name or "", getattr(exchange, "type", None) or "direct",
                    durable=bool(getattr(exchange, "durable", True)),
                    auto_delete=bool(getattr(exchange, "auto_delete", False)),
                    arguments=getattr(exchange, "arguments", None) or None)


#: kombu ``Queue`` attributes kept as options when converting one
_KOMBU_QUEUE_OPTIONS = ("expires", "message_ttl", "max_length", "max_length_bytes",
                        "consumer_arguments", "binding_arguments", "no_ack", "bindings")


def as_queue(queue: Any) -> Queue:
    """A ``Queue`` from ours, a name (the name's own direct exchange and routing key, as Celery
    creates a missing queue), or anything with kombu's ``Queue`` attributes (``name``,
    ``exchange``, ``routing_key``, ``queue_arguments``, ``durable``...): kombu's own
    ``Queue`` and ``Broadcast`` objects are accepted without importing kombu."""
    if isinstance(queue, Queue):
        return queue
    if isinstance(queue, str):
        return Queue(queue)
    if not isinstance(getattr(queue, "name", None), str) or not hasattr(queue, "exchange"):
        raise TypeError(f"expected a queue (a name or a Queue), got {queue!r}")
    options = {key: getattr(queue, key) for key in _KOMBU_QUEUE_OPTIONS
               if getattr(queue, key, None) not in (None, [], (), {}, False)}
    exchange = getattr(queue, "exchange", None)
    converted = Queue(
        queue.name, as_exchange(exchange) if exchange is not None else None,
        getattr(queue, "routing_key", None) or "",
        durable=bool(getattr(queue, "durable", True)),
        exclusive=bool(getattr(queue, "exclusive", False)),
        auto_delete=bool(getattr(queue, "auto_delete", False)),
        queue_arguments=dict(getattr(queue, "queue_arguments", None) or {}),
        max_priority=getattr(queue, "max_priority", None),
        alias=getattr(queue, "alias", None), **options)
    converted.routing_key_given = bool(getattr(queue, "routing_key", None))
    return converted
