"""Broker transports behind one small interface (see ``base.Transport``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..utils.extras import require, unknown_scheme

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

        return MemoryTransport.from_url(url, **options)
    if scheme in ("sqlite", "sqla+sqlite"):
        from .sqlite import SQLiteTransport

        return SQLiteTransport.from_url(url, **options)
    if scheme in ("redis", "rediss", "redis+socket", "unix"):
        require("redis", "redis", f"the {scheme}:// broker")
        from .redis import RedisTransport

        return RedisTransport.from_url(url, **options)
    if scheme in ("amqp", "amqps", "pyamqp"):
        require("amqp", "amqp", f"the {scheme}:// broker")
        from .amqp import AMQPTransport

        return AMQPTransport.from_url(url, **options)
    raise unknown_scheme("broker_url", "transport", url, KNOWN_SCHEMES)
