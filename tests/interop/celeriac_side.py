"""The celeriac half of the interop tests: the same task names as ``celery_side``, on celeriac.

Layer: test support. Loaded by ``celeriac worker -A tests.interop.celeriac_side``; the URL comes
from ``INTEROP_REDIS_URL`` so each test can use its own Redis DB.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celeriac import Celery

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/12")

app = Celery("interop_celeriac", broker=URL, backend=URL, accept_content=["json"])


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


@app.task(name="interop.whoami", bind=True)
def whoami(self: Any, *previous: Any) -> dict[str, Any]:
    """Which implementation ran this, and the request fields a chain step must carry."""
    request = self.request
    return {"impl": "celeriac", "id": request.id, "root_id": request.root_id,
            "parent_id": request.parent_id, "hostname": request.hostname, "at": time.time()}
