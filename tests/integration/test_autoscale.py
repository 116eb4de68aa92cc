"""``--autoscale=4,1`` in real worker subprocesses: the pool grows under a burst of sleeping
tasks and shrinks back once idle (``AUTOSCALE_KEEPALIVE=1``). How many ran side by side is read
from the tasks themselves (their start and end times, and the process and thread they ran in).
The threads pool runs on every broker (the ``broker`` fixture); prefork on SQLite.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Broker

pytestmark = pytest.mark.integration

APP = "tests.integration.pool_limit_tasks"


@pytest.fixture
def tasks(broker: Broker, task_module):
    return task_module("pool_limit_tasks", broker.url, results=broker.results)


def _most_at_once(runs: list[dict]) -> int:
    """The most tasks that were running at the same moment."""
    edges = sorted([(run["started"], 1) for run in runs] + [(run["ended"], -1) for run in runs])
    running = most = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    return most


def _burst_grows_then_shrinks(worker, tasks) -> list[dict]:
    runs = [r.get(timeout=30) for r in [tasks.where.delay(0.6) for _ in range(12)]]
    # grew: more than the minimum of 1 ran at once, never more than the maximum of 4
    assert 1 < _most_at_once(runs) <= 4, runs
    worker.wait_for_log("Autoscale: pool grown by ")
    # and shrinks back to the minimum after a second with nothing to do
    worker.wait_for_log("to 1 (idle slots for 1s or more; min 1)")
    assert tasks.add.delay(2, 2).get(timeout=20) == 4, "the one slot left still runs tasks"
    assert worker.stop() == 0
    return runs


def test_the_threads_pool_grows_and_shrinks(broker, tasks, start_worker):
    worker = start_worker("-P", "threads", "--autoscale=4,1", app=APP, url=broker.url,
                          env=broker.worker_env({"AUTOSCALE_KEEPALIVE": "1"}))
    runs = _burst_grows_then_shrinks(worker, tasks)
    assert len({run["pid"] for run in runs}) == 1  # threads of the worker process
    assert "(concurrency {min=1, max=4})" in worker.log()


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
def test_the_prefork_pool_grows_and_shrinks(broker, tasks, start_worker):
    worker = start_worker("-P", "prefork", "--autoscale=4,1", app=APP, url=broker.url,
                          env={"AUTOSCALE_KEEPALIVE": "1"})
    runs = _burst_grows_then_shrinks(worker, tasks)
    assert len({run["pid"] for run in runs}) > 1  # children started as the pool grew
    log = worker.log()
    assert "died running task" not in log and "WorkerLostError" not in log
