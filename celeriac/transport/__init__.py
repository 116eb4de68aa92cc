"""Broker transports behind one small interface (see ``base.Transport``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..utils.extras import require, unknown_scheme
from .options import accepted_options, unused_options, warn_unused

if TYPE_CHECKING:
    from .base import Transport

#: every broker URL scheme celeriac knows, most used first (as error messages list them)
KNOWN_SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+socket", "unix", "sqla+sqlite",
                 "amqp", "amqps", "pyamqp")


def transport_from_url(url: str, **options: Any) -> "Transport":
    """Build the transport a broker URL names; the scheme picks the implementation."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    if scheme == "memory":
        from .memory import MemoryTransport

        _check_options(MemoryTransport, "in-memory", options)
        return MemoryTransport.from_url(url, **options)
    if scheme in ("sqlite", "sqla+sqlite"):
        from .sqlite import SQLiteTransport

        _check_options(SQLiteTransport, "SQLite", options)
        return SQLiteTransport.from_url(url, **options)
    if scheme in ("redis", "rediss", "redis+socket", "unix"):
        require("redis", "redis", f"the {scheme}:// broker")
        from . import redis as redis_transport

        _check_options(redis_transport.RedisTransport, "Redis", options,
                       redis_transport._CLIENT_OPTIONS)
        return redis_transport.RedisTransport.from_url(url, **options)
    if scheme in ("amqp", "amqps", "pyamqp"):
        require("amqp", "amqp", f"the {scheme}:// broker")
        from .amqp import AMQPTransport

        return AMQPTransport.from_url(url, **options)  # its constructor warns itself
    raise unknown_scheme("broker_url", "transport", url, KNOWN_SCHEMES)


def _check_options(transport: type, broker: str, options: dict[str, Any],
                   extra: tuple[str, ...] = ()) -> None:
    """One warning line per option ``transport`` does not use (``options.warn_unused``)."""
    unused = unused_options(transport, options, extra)
    if unused:
        warn_unused(broker, unused, accepted_options(transport, extra))
