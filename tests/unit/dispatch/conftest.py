"""Dispatch unit tests run on a private in-memory broker and result store per app."""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterator

import pytest

from celeriac import Celery


@pytest.fixture
def make_app() -> Iterator[Callable[..., Celery]]:
    """``make_app(**settings)``: a new app on its own memory:// broker and result store."""
    apps: list[Celery] = []

    def make(**settings: Any) -> Celery:
        url = f"memory://dispatch-{uuid.uuid4().hex}"
        app = Celery("dispatch", broker=url, backend=url, set_as_current=False, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., Celery]) -> Celery:
    return make_app()
