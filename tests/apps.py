"""Apps for unit tests: each on a memory:// broker and result store of its own."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Callable, Iterator

from celeriac import Celery


@contextlib.contextmanager
def memory_apps(main: str) -> Iterator[Callable[..., Celery]]:
    """``make(**settings)`` makes a new app named ``main`` on a private memory:// broker and
    store; every app made is closed when the block ends."""
    apps: list[Celery] = []

    def make(**settings: Any) -> Celery:
        url = f"memory://{main}-{uuid.uuid4().hex}"
        app = Celery(main, broker=url, backend=url, set_as_current=False, **settings)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.close()
