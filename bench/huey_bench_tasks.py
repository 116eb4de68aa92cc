"""The Huey 2 twin of bench/bench_tasks.py, for bench/peers.py. Layer: bench.

Imported only by Huey processes in the benchmark's own virtualenv (bench/.venv-huey), never by
celeriac or pytest. Huey's Redis storage (``RedisHuey``, its defaults: blocking dequeue, results
stored) on the database CELERIAC_BROKER_URL names, as for the other apps.

Huey stores only a task's return value, not when it finished, so ``noop`` returns the wall-clock
time it ran at: the runner times drains from those, as it times celeriac's and Celery's from the
``date_done`` their workers stamp.
"""

from __future__ import annotations

import os
import time

from huey import RedisHuey

from bench.ready_file import write_ready_time  # standard library only: no celeriac here

huey = RedisHuey("celeriac-bench", url=os.environ.get("CELERIAC_BROKER_URL",
                                                      "redis://127.0.0.1:6379/9"))


@huey.on_startup()
def _write_ready_time() -> None:
    """Runs in each worker as it starts (one, with the consumer's defaults)."""
    write_ready_time()


@huey.task()
def noop() -> float:
    """Does nothing but say when it ran (Huey's result store keeps no finish time)."""
    return time.time()


@huey.task()
def count(results: list) -> list:
    """The fan-in step after a group: how many results it got, and when it ran."""
    return [len(results), time.time()]
