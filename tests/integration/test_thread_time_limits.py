"""Hard time limits in the threads and solo pools, in real worker subprocesses on every broker
(the ``broker`` fixture: SQLite, Redis, RabbitMQ with results in SQLite).

A thread cannot be killed: at the limit the worker stores ``TimeLimitExceeded``, settles the
message and gives the thread up (a new one takes its slot). A task looping in Python is stopped
there; one blocked in a C call keeps its thread until the call returns, and what it does then
is never recorded: the stored failure stays.
"""

from __future__ import annotations

import pytest

from celeriac import states
from celeriac.exceptions import TimeLimitExceeded
from tests.integration.conftest import Broker, settled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.pool_limit_tasks"


@pytest.fixture
def tasks(broker: Broker, task_module):
    return task_module("pool_limit_tasks", broker.url, results=broker.results)


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_hard_limit_fails_the_task_and_the_worker_goes_on(broker, tasks, start_worker,
                                                            tmp_path, pool):
    worker = start_worker("-P", pool, "-c", "2", app=APP, url=broker.url,
                          env=broker.worker_env())
    spun, slept = tmp_path / "spun", tmp_path / "slept"
    looping = tasks.spin.apply_async((60, str(spun)), time_limit=0.5)
    blocked = tasks.blocked.apply_async((1.5, str(slept)), time_limit=0.5)
    for result in (looping, blocked):
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=20)
        assert result.state == states.FAILURE
    # the slots were given back: the worker runs more tasks, as many as before
    assert [tasks.add.delay(n, n).get(timeout=20) for n in range(3)] == [0, 2, 4]
    # the blocked task's sleep returns later; nothing it does then is recorded
    wait_for(slept.exists, 20, interval=0.05, message="the blocked task's sleep never returned")
    worker.wait_for_log(f"(task {blocked.id}) got control back and leaves")
    assert blocked.state == states.FAILURE and isinstance(blocked.result, TimeLimitExceeded)
    assert not spun.exists(), "the Python loop ran to its end: the limit did not stop it"
    settled(broker, tasks.app)
    assert worker.stop() == 0
    log = worker.log()
    assert log.count("Hard time limit (0.5s) exceeded") == 2
    assert "Traceback" not in log
