"""The celeriac half of the interop tests: the tasks of ``shared_tasks``, on celeriac.

Layer: test support. Loaded by ``celeriac worker -A tests.interop.celeriac_side``; the URL comes
from ``INTEROP_REDIS_URL`` so each test can use its own Redis DB.
"""

from __future__ import annotations

import os

from celeriac import Celery

from .shared_tasks import register

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/12")

app = Celery("interop_celeriac", broker=URL, backend=URL, accept_content=["json"])

TASKS = register(app, "celeriac")
