"""Remote control from the client side (``app.control``).

Layer: worker (client half). Revokes go to the result store (see ``worker/revokes.py``), so they
reach every worker, including ones started later, for as long as results are kept. Broadcast
commands over the broker (ping, inspect, Flower's buttons) are not built yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..rates import parse_rate, write_override
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

    def rate_limit(self, task_name: str, rate_limit: Any, destination: Any = None,
                   reply: bool = False, timeout: float = 1.0, **kwargs: Any) -> None:
        """Change the rate of ``task_name`` for every worker, within about a second:
        ``'5/s'``, ``'10/m'``, ``'1000/h'`` or a number per second; None or ``'0'`` removes
        the limit. Kept in the result store until changed (workers started later apply it
        too); ``reset_rate_limit`` goes back to the task's declared rate. Calls already
        waiting for a slot keep it. Unlike Celery there are no per-worker replies (None)."""
        self._check_rate_target(task_name, destination)
        try:
            per_second = parse_rate(rate_limit)
        except ValueError as exc:
            raise ValueError(f"app.control.rate_limit({task_name!r}, ...): {exc}") from None
        write_override(self.app, task_name, str(rate_limit) if per_second > 0 else "0")

    def reset_rate_limit(self, task_name: str) -> None:
        """Drop the run-time rate of ``task_name``: every worker goes back to the rate it
        declares (``rate_limit``, else ``task_default_rate_limit``). A celeriac addition."""
        self._check_rate_target(task_name, None)
        write_override(self.app, task_name, None)

    def _check_rate_target(self, task_name: str, destination: Any) -> None:
        if destination is not None:
            raise ValueError(
                f"app.control.rate_limit({task_name!r}, ..., destination={destination!r}): "
                f"celeriac's rate limits hold for every worker together, so one worker cannot "
                f"have its own; leave destination out")
        self.app.finalize()  # shared tasks too
        task = self.app.tasks.get(task_name)
        if task is None:
            raise ValueError(f"app.control.rate_limit: no task named {task_name!r} is "
                             f"registered in this app; check the name, or import the module "
                             f"that defines it")
        if getattr(task, "collects_requests", False):
            raise ValueError(f"app.control.rate_limit: {task_name!r} is a batch task, which "
                             f"rate limits do not apply to (flush_every and flush_interval "
                             f"pace it)")
