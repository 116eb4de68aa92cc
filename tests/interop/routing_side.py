"""Issue 12's routing example as an app for both sides of the interop tests.

Layer: test support. ``INTEROP_IMPL`` picks the library (``celery`` or ``celeriac``): the same
configuration, so ``celery -A tests.interop.routing_side`` and ``celeriac -A
tests.interop.routing_side`` are a Celery and a celeriac worker of one fleet. Results go to
``INTEROP_REDIS_URL``, tasks through ``INTEROP_BROKER_URL`` (that same Redis DB when unset).
Run as a module, it is a one-shot Celery client that sends ``routing.ping`` and prints its
result as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tests.routing_example import use_issue_routing

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/12")
BROKER = os.environ.get("INTEROP_BROKER_URL", URL)
IMPL = os.environ.get("INTEROP_IMPL", "celery")

if IMPL == "celery":
    from celery import Celery
    from kombu import Queue
else:
    from celeriac import Celery, Queue  # type: ignore[assignment]

app = Celery(f"interop_routing_{IMPL}", broker=BROKER, backend=URL)
app.conf.update(accept_content=["json"], broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=True)
use_issue_routing(app.conf, Queue)


@app.task(name="routing.ping", queue="feed_tasks", bind=True)
def ping_task(self: Any) -> dict[str, Any]:
    return {"impl": IMPL, "delivery_info": dict(self.request.delivery_info)}


if __name__ == "__main__":
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(ping_task.apply_async(**options).get(timeout=20)))
