"""worker_max_tasks_per_child / worker_max_memory_per_child: reading the settings and options,
and a prefork pool whose children retire after their limit without losing an outcome."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.message import Message
from celeriac.worker.outcome import Ending, Outcome
from celeriac.worker.pools.processes import ProcessPool, child_limits, resident_kib


@pytest.mark.parametrize("conf, expected", [
    ({}, (None, None)),
    ({"worker_max_tasks_per_child": 0, "worker_max_memory_per_child": None}, (None, None)),
    ({"worker_max_tasks_per_child": 5}, (5, None)),
    ({"worker_max_tasks_per_child": "5", "worker_max_memory_per_child": "200000"}, (5, 200000)),
])
def test_child_limits_are_read_from_the_settings(conf: dict, expected: tuple) -> None:
    assert child_limits(conf) == expected


def test_a_negative_limit_is_a_configuration_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="worker_max_memory_per_child"):
        child_limits({"worker_max_memory_per_child": -1})


def test_the_worker_options_set_the_settings_the_pool_reads() -> None:
    app = Celery("child-limits", broker="memory://child-limits", backend="memory://child-limits",
                 set_as_current=False)
    try:
        worker = app.Worker(pool="prefork", concurrency=1, max_tasks_per_child=3,
                            max_memory_per_child=150_000)
        assert worker.app.conf.worker_max_tasks_per_child == 3
        assert worker.app.conf.worker_max_memory_per_child == 150_000
        from celeriac.config import ineffective_settings
        assert not [line for line in ineffective_settings(app.conf, {}) if "per_child" in line]
    finally:
        app.close()


def test_resident_memory_is_read() -> None:
    assert resident_kib() > 1000


class _Runner:
    """Returns the pid of the process it ran in, as the outcome's retval_repr."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def limits(self, message: Any) -> tuple[None, None]:
        return None, None

    def __call__(self, message: Any, delivery_info: dict) -> Outcome:
        return Outcome(message.headers["id"], "SUCCESS", retval_repr=str(os.getpid()))


def test_a_child_retires_after_its_tasks_and_every_outcome_comes_back() -> None:
    app = Celery("child-limits-pool", set_as_current=False,
                 worker_max_tasks_per_child=2)
    done: dict[int, Outcome] = {}
    arrived = threading.Condition()

    def on_done(job_id: int, outcome: Outcome) -> None:
        with arrived:
            done[job_id] = outcome
            arrived.notify_all()

    pool = ProcessPool(_Runner(app), 1, on_done)
    pool.start()
    try:
        for job_id in range(6):
            message = Message(headers={"id": f"t{job_id}", "task": "t"}, properties={},
                              body=b"")
            while not (pool.free_slots() and pool.submit(job_id, message, {})):
                with arrived:
                    arrived.wait(0.02)
            with arrived:
                assert arrived.wait_for(lambda n=job_id: n in done, timeout=20)
    finally:
        pool.stop()
    assert [o.ending for o in done.values()] == [Ending.SUCCEEDED] * 6
    pids = [done[i].retval_repr for i in range(6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5], pids
