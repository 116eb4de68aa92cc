"""Remote control from the client side (``app.control``).

Layer: worker (client half). Revokes go to the result store (see ``worker/revokes.py``), so they
reach every worker, including ones started later, for as long as results are kept. Broadcast
commands over the broker (ping, inspect, Flower's buttons) are not built yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .revokes import record_revoke

if TYPE_CHECKING:
    from ..app import Celery


class Control:
    def __init__(self, app: "Celery") -> None:
        self.app = app

    def revoke(self, task_id: str | Iterable[str], destination: Any = None,
               terminate: bool = False, signal: Any = "SIGTERM", **kwargs: Any) -> None:
        """Make sure the tasks never start; with ``terminate``, also stop them if running."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not self.app.backend.persistent:
            from ..exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("revoke needs a result backend (result_backend is disabled)")
        record_revoke(self.app.backend, ids, terminate=terminate, signal=signal)

    def terminate(self, task_id: str | Iterable[str], signal: Any = "SIGTERM",
                  **kwargs: Any) -> None:
        self.revoke(task_id, terminate=True, signal=signal, **kwargs)
