"""Dispatch unit tests run on a private in-memory broker and result store per app."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from celeriac import Celery
from tests.apps import memory_apps


@pytest.fixture
def make_app() -> Iterator[Callable[..., Celery]]:
    """``make_app(**settings)``: a new app on its own memory:// broker and result store."""
    with memory_apps("dispatch") as make:
        yield make


@pytest.fixture
def app(make_app: Callable[..., Celery]) -> Celery:
    return make_app()
