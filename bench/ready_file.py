"""How a benchmark worker of any kind (celeriac, Celery, Dramatiq, Huey) tells the runner it is
ready: the wall-clock time, in the file ``CELERIAC_BENCH_READY_FILE`` names. Imports nothing but
the standard library, so the peers' task modules can use it from their own virtualenvs.
Layer: bench."""

from __future__ import annotations

import os
import time

READY_FILE_ENV = "CELERIAC_BENCH_READY_FILE"


def write_ready_time() -> None:
    """Record now as the ready time, unless another process of the same worker did first
    (several processes may report: the first keeps the file)."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(repr(time.time()))
    try:  # link, not rename: the file never appears half written, and the first one stays
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
