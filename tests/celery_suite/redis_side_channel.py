"""Point the suite's Redis side channel at the run's own database.

Celery's ``t/integration/tasks.py`` opens ``get_redis_connection()`` (database 0) for the keys
its tasks and tests share (``redis-echo``, ``redis-count``, ...). Both the client process and the
worker replace that function in every loaded ``t.integration`` module by one that opens the
database named in ``CELERY_SUITE_REDIS_DB``, so two runs, or another user of database 0, never
share those keys.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def side_channel_connection() -> Any:
    """A redis-py client on the run's database, without a socket timeout (the suite blocks on
    BLPOP for long stretches), as Celery's helper does for database 0."""
    from redis import StrictRedis

    return StrictRedis(host=os.environ.get("REDIS_HOST", "localhost"),
                       port=int(os.environ.get("REDIS_PORT", 6379)),
                       db=int(os.environ.get("CELERY_SUITE_REDIS_DB", "0")),
                       socket_timeout=None)


def redirect_side_channel() -> None:
    """Replace ``get_redis_connection`` wherever a ``t.integration`` module holds it."""
    for name, module in list(sys.modules.items()):
        if name.startswith("t.integration") and hasattr(module, "get_redis_connection"):
            module.get_redis_connection = side_channel_connection  # type: ignore[attr-defined]
