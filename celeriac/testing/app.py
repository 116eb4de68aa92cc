"""Throwaway apps for tests: ``make_test_app(**settings)`` (what Celery's ``TestApp`` is for).

Each app gets its own ``memory://`` broker and result store under a fresh name, so tests never see
each other's messages or results; ``dispose_test_app`` closes it and forgets that state.
"""

from __future__ import annotations

import uuid
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Celery

__all__ = ["make_test_app", "dispose_test_app"]

#: the memory names make_test_app invented for an app (only those are forgotten on dispose)
_generated: "weakref.WeakKeyDictionary[Celery, tuple[str | None, str | None]]" = (
    weakref.WeakKeyDictionary())


def make_test_app(main: str | None = None, *, broker: str | None = None,
                  backend: str | None = None, set_as_current: bool = False,
                  **settings: Any) -> "Celery":
    """A new ``Celery`` app on a private ``memory://`` broker and result store.

    ``broker``/``backend`` (or the ``broker_url``/``result_backend`` settings) replace the private
    URLs; other keyword arguments are settings. Unlike ``Celery()``, the app does not become the
    current app unless ``set_as_current=True``.
    """
    from ..app import Celery

    name = f"celeriac-test-{uuid.uuid4().hex[:12]}"
    broker = broker or settings.pop("broker_url", None)
    backend = backend or settings.pop("result_backend", None)
    app = Celery(main or name, broker=broker or f"memory://{name}",
                 backend=backend or f"memory://{name}", set_as_current=set_as_current,
                 **settings)
    _generated[app] = (None if broker else name, None if backend else name)
    return app


def dispose_test_app(app: "Celery") -> None:
    """Close ``app``'s connections and drop the memory broker and store ``make_test_app`` made."""
    app.close()
    broker_name, backend_name = _generated.pop(app, (None, None))
    if broker_name is not None:
        from ..transport import memory as memory_transport

        memory_transport.reset(broker_name)
    if backend_name is not None:
        from ..backends import memory as memory_backend

        memory_backend.reset(backend_name)
