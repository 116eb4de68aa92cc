"""The celeriac half of the interop tests: the tasks of ``shared_tasks``, on celeriac.

Layer: test support. Loaded by ``celeriac worker -A tests.interop.celeriac_side``; the result
backend URL comes from ``INTEROP_REDIS_URL`` so each test can use its own Redis DB, the broker URL
from ``INTEROP_BROKER_URL`` (a RabbitMQ vhost, or that same Redis DB when unset).
"""

from __future__ import annotations

import os

from celeriac import Celery

from .shared_tasks import register

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/12")
BROKER = os.environ.get("INTEROP_BROKER_URL", URL)

app = Celery("interop_celeriac", broker=BROKER, backend=URL, accept_content=["json"])

TASKS = register(app, "celeriac")
