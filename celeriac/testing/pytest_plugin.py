"""pytest fixtures named like Celery's (``celery_app``, ``celery_worker``, ``celery_config``...).

Not loaded automatically: enable it with ``pytest_plugins = ("celeriac.testing.pytest_plugin",)``
in your top-level ``conftest.py``. Override the settings fixtures to shape the app and worker.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Mapping, Sequence

import pytest

from .. import _context
from ..app import Celery
from .app import dispose_test_app, make_test_app
from .worker import EmbeddedWorker, start_worker

__all__ = [
    "celery_app", "celery_class_tasks", "celery_config", "celery_includes", "celery_parameters",
    "celery_session_app", "celery_session_worker", "celery_worker", "celery_worker_parameters",
    "celery_worker_pool", "depends_on_current_app",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "celery(**settings): extra settings for this test's celery_app")


# ---- what to override ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def celery_config() -> Mapping[str, Any]:
    """Settings for the test app. Without ``broker_url``/``result_backend``, each app gets its own
    ``memory://`` broker and result store."""
    return {}


@pytest.fixture(scope="session")
def celery_parameters() -> Mapping[str, Any]:
    """Keyword arguments for ``Celery(...)`` itself (``main``, ``task_cls``, ``include``...)."""
    return {}


@pytest.fixture(scope="session")
def celery_includes() -> Sequence[str]:
    """Modules to import before the worker starts (task modules, signal handlers...)."""
    return ()


@pytest.fixture(scope="session")
def celery_class_tasks() -> Sequence[Any]:
    """Class-based tasks to register with the app before the worker starts."""
    return ()


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    """The worker's pool: ``"solo"`` (default) or ``"threads"``; prefork is refused in-process."""
    return "solo"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> Mapping[str, Any]:
    """Keyword arguments for ``start_worker`` (``queues``, ``concurrency``, ``hostname``,
    ``perform_ping_check``, ``shutdown_timeout``...)."""
    return {}


# ---- apps and workers --------------------------------------------------------------------------
def _settings(request: pytest.FixtureRequest, celery_config: Mapping[str, Any]) -> dict[str, Any]:
    mark = request.node.get_closest_marker("celery")
    return {**celery_config, **(mark.kwargs if mark else {})}


def _app(parameters: Mapping[str, Any], settings: Mapping[str, Any]) -> Iterator[Celery]:
    app = make_test_app(**{**parameters, **settings})
    token = _context.current_app_var.set(app)
    previous_default = list(_context._default_app)
    app.set_default()
    try:
        yield app
    finally:
        try:
            _context.current_app_var.reset(token)
        except ValueError:  # torn down in another context: at least stop pointing at this app
            if _context.current_app_var.get() is app:
                _context.current_app_var.set(None)
        if _context._default_app == [app]:
            _context._default_app[:] = previous_default
        dispose_test_app(app)


def _prepare(app: Celery, includes: Sequence[str], class_tasks: Sequence[Any]) -> None:
    for module in includes:
        importlib.import_module(module)
    for task in class_tasks:
        app.register_task(task)


@pytest.fixture
def celery_app(request: pytest.FixtureRequest, celery_config: Mapping[str, Any],
               celery_parameters: Mapping[str, Any]) -> Iterator[Celery]:
    """A fresh app for this test, current while the test runs (``@pytest.mark.celery(...)`` adds
    settings)."""
    yield from _app(celery_parameters, _settings(request, celery_config))


@pytest.fixture
def celery_worker(celery_app: Celery, celery_includes: Sequence[str],
                  celery_class_tasks: Sequence[Any], celery_worker_pool: str,
                  celery_worker_parameters: Mapping[str, Any]) -> Iterator[EmbeddedWorker]:
    """A worker consuming ``celery_app``'s queues in a thread, stopped when the test ends."""
    _prepare(celery_app, celery_includes, celery_class_tasks)
    with start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as worker:
        yield worker


@pytest.fixture(scope="session")
def celery_session_app(request: pytest.FixtureRequest, celery_config: Mapping[str, Any],
                       celery_parameters: Mapping[str, Any]) -> Iterator[Celery]:
    """One app for the whole session (pair it with ``celery_session_worker``)."""
    yield from _app(celery_parameters, _settings(request, celery_config))


@pytest.fixture(scope="session")
def celery_session_worker(celery_session_app: Celery, celery_includes: Sequence[str],
                          celery_class_tasks: Sequence[Any], celery_worker_pool: str,
                          celery_worker_parameters: Mapping[str, Any]) -> Iterator[EmbeddedWorker]:
    """A worker for ``celery_session_app`` that lives for the whole session."""
    _prepare(celery_session_app, celery_includes, celery_class_tasks)
    with start_worker(celery_session_app, pool=celery_worker_pool,
                      **celery_worker_parameters) as worker:
        yield worker


@pytest.fixture
def depends_on_current_app(celery_app: Celery) -> None:
    """Make ``celery_app`` the current app (it already is; kept for Celery test suites)."""
    celery_app.set_current()
