"""Broker transports behind one small interface (see ``base.Transport``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Transport


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
        from .redis import RedisTransport

        return RedisTransport.from_url(url, **options)
    if scheme in ("amqp", "amqps", "pyamqp"):
        raise NotImplementedError(
            f"the RabbitMQ broker is not implemented yet (broker URL {url!r}); use sqlite:// or memory://"
        )
    from ..exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"broker_url: unknown transport scheme {scheme!r} in {url!r}")
