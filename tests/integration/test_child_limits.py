"""Pool-child limits in real prefork workers (issue 15, item 6): ``--max-tasks-per-child`` and
``--max-memory-per-child`` replace a child after the task that reaches the limit; that task
succeeds, nothing is lost, and no task is reported as a lost worker.

The tasks (tests/integration/child_limit_tasks.py) return the pid of the pool process they ran in.
"""

from __future__ import annotations

import collections
from types import ModuleType
from typing import Callable

import pytest

pytestmark = pytest.mark.integration

APP = "tests.integration.child_limit_tasks"


@pytest.fixture
def tasks(sqlite_url: str, task_module: Callable[..., ModuleType]) -> ModuleType:
    return task_module("child_limit_tasks", sqlite_url)


def test_max_tasks_per_child_replaces_a_child_after_n_tasks(tasks, start_worker) -> None:
    worker = start_worker("-c", "1", "--max-tasks-per-child", "2", app=APP)
    results = [tasks.where.delay() for _ in range(6)]
    pids = [r.get(timeout=30)["pid"] for r in results]
    assert all(r.state == "SUCCESS" for r in results)
    per_pid = collections.Counter(pids)
    assert max(per_pid.values()) <= 2, pids
    assert len(per_pid) >= 3, pids
    assert worker.stop() == 0
    log = worker.log()
    assert "(worker_max_tasks_per_child=2)" in log
    assert "WorkerLostError" not in log and "died running task" not in log


def test_max_memory_per_child_replaces_the_child_after_the_task_that_grew_it(
        tasks, start_worker) -> None:
    # a pool child starts at 20-40 MB resident; the hog keeps 100 MB more for its lifetime
    worker = start_worker("-c", "1", "--max-memory-per-child", "90000", app=APP)
    first = tasks.where.delay().get(timeout=30)
    grown = tasks.hog.delay(100).get(timeout=30)
    after = tasks.where.delay().get(timeout=30)
    assert first["rss_kib"] < 90000 < grown["rss_kib"]
    assert grown["pid"] == first["pid"]  # below the limit, the child stayed
    assert after["pid"] != grown["pid"]  # above it, the next task ran in a new child
    assert after["rss_kib"] < 90000
    assert worker.stop() == 0
    log = worker.log()
    assert log.count("(worker_max_memory_per_child=90000)") == 1
    assert "WorkerLostError" not in log and "died running task" not in log


def test_the_threads_pool_names_the_limit_it_ignores(tasks, start_worker) -> None:
    worker = start_worker("-P", "threads", "--max-tasks-per-child", "2", app=APP)
    assert tasks.hard_limited.delay().get(timeout=30) == worker.proc.pid
    assert worker.stop() == 0
    log = worker.log()
    assert "not enforced" not in log  # the threads pool enforces the hard time limit now
    assert log.count("worker_max_tasks_per_child=2 is set but only the prefork pool replaces "
                     "its processes: the threads pool ignores it") == 1
