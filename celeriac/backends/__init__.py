"""Result stores behind one interface (see ``base.ResultBackend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..utils.extras import require, unknown_scheme

if TYPE_CHECKING:
    from .base import ResultBackend

#: every result backend URL scheme celeriac knows, most used first (as error messages list them)
KNOWN_SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+socket", "unix", "cache+memory",
                 "db+sqlite", "rpc")


def backend_from_url(url: str | None, app: Any = None, **options: Any) -> "ResultBackend":
    """Build the result store a backend URL names; the scheme picks the implementation."""
    if not url:
        from .base import DisabledBackend

        return DisabledBackend(app=app)
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    if scheme in ("memory", "cache+memory"):
        from .memory import MemoryBackend

        return MemoryBackend(app=app, url=url, **options)
    if scheme in ("sqlite", "db+sqlite"):
        from .sqlite import SQLiteBackend

        return SQLiteBackend(app=app, url=url, **options)
    if scheme in ("redis", "rediss", "unix", "redis+socket"):
        require("redis", "redis", f"the {scheme}:// result backend")
        from .redis import RedisBackend

        return RedisBackend(app=app, url=url, **options)
    if scheme == "rpc":
        require("amqp", "amqp", "the rpc:// result backend")
        from .rpc import RPCBackend

        return RPCBackend(app=app, url=url, **options)
    raise unknown_scheme("result_backend", "backend", url, KNOWN_SCHEMES)
