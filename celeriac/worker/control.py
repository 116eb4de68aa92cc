"""Remote control (``app.control``): broadcasting commands to workers.

Layer: worker (client side of control). Not built yet: revoke and inspection arrive with the
worker issue. Calling them says so instead of pretending to work.
"""

from __future__ import annotations

from typing import Any


class Control:
    def __init__(self, app: Any) -> None:
        self.app = app

    def revoke(self, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any) -> None:
        raise NotImplementedError("revoke is not implemented yet in celeriac (tracked in the worker issue)")
