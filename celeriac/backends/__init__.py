"""Result stores behind one interface (see ``base.ResultBackend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ResultBackend


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
        from .redis import RedisBackend

        return RedisBackend(app=app, url=url, **options)
    from ..exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"result_backend: unknown backend scheme {scheme!r} in {url!r}")
