"""Public testing helpers: an in-process worker (``start_worker``), throwaway apps
(``make_test_app``), a pytest plugin (``celeriac.testing.pytest_plugin``), and the conformance
suites every transport and result store must pass (``transport_suite``, ``backend_suite``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import dispose_test_app, make_test_app
    from .worker import EmbeddedWorker, start_worker

__all__ = ["EmbeddedWorker", "dispose_test_app", "make_test_app", "start_worker"]

_LAZY = {"EmbeddedWorker": ".worker", "start_worker": ".worker",
         "dispose_test_app": ".app", "make_test_app": ".app"}


def __getattr__(name: str) -> Any:
    # Imported on first use: the conformance suites must not pull in the worker.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
