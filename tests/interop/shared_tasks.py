"""The tasks both interop halves serve, defined once so their names and bodies cannot drift apart.

Layer: test support. Imports neither ``celery`` nor ``celeriac``: each half passes its own app
(their ``@app.task`` decorators take the same arguments) and the name that ``interop.whoami``
reports, so a test can tell which implementation ran a task.
"""

from __future__ import annotations

import time
from typing import Any


def register(app: Any, impl: str) -> dict[str, Any]:
    """Register the interop tasks on ``app``; returns them by short name."""

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="interop.xsum")
    def xsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="interop.collect")
    def collect(values: list[Any]) -> list[Any]:
        return values

    @app.task(name="interop.echo")
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    def fields(request: Any) -> dict[str, Any]:
        """Which implementation ran this, and the request fields as the task sees them."""
        info = request.delivery_info or {}
        return {"impl": impl, "id": request.id, "root_id": request.root_id,
                "parent_id": request.parent_id, "hostname": request.hostname,
                "retries": request.retries,
                "delivery_info": {"exchange": info.get("exchange"),
                                  "routing_key": info.get("routing_key")},
                "at": time.time()}

    @app.task(name="interop.whoami", bind=True)
    def whoami(self: Any, *previous: Any) -> dict[str, Any]:
        """Which implementation ran this, and the request fields a chain step must carry."""
        return fields(self.request)

    @app.task(name="interop.retry_whoami", bind=True, max_retries=5)
    def retry_whoami(self: Any, times: int) -> dict[str, Any]:
        """Retry (at once) until this is run number ``times + 1``, then report the request."""
        if self.request.retries < times:
            raise self.retry(countdown=0)
        return fields(self.request)

    @app.task(name="interop.hold")
    def hold(seconds: float) -> str:
        """Runs ``seconds`` in short sleeps (remote control's tests inspect and terminate it;
        a terminate lands between two sleeps in a thread pool)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return "held"

    return {"add": add, "fail": fail, "xsum": xsum, "collect": collect, "whoami": whoami,
            "echo": echo, "retry_whoami": retry_whoami, "hold": hold}
