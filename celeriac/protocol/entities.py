"""Exchanges and queues as AMQP names them: plain data every layer can pass around.

Layer: protocol (pure). The router picks a ``Queue`` for a message; a transport declares one with
its exchange, routing key and arguments (RabbitMQ needs all of them; Redis and SQLite use the
name and record the binding). ``celeriac.routing`` re-exports both under Celery's names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Exchange", "Queue", "as_queue"]


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
                 max_priority: int | None = None, **kw: Any) -> None:
        self.name = name
        if exchange is None:
            exchange = Exchange(name)
        elif isinstance(exchange, str):
            exchange = Exchange(exchange)
        self.exchange: Exchange = exchange
        self.routing_key = name if routing_key is None else routing_key
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
                self.auto_delete, self.queue_arguments, self.options)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Queue):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<Queue {self.name} -> {self.exchange!r} -> {self.routing_key}>"


def as_queue(queue: "Queue | str") -> Queue:
    """A queue given by name means the name's own direct exchange and routing key (Celery's)."""
    return queue if isinstance(queue, Queue) else Queue(queue)
