"""Time limits and revokes in real worker subprocesses, in every pool, on every broker (the
``broker`` fixture, tests/integration/conftest.py: SQLite, Redis, RabbitMQ with results in
SQLite). Revokes travel through the result store, so they reach workers on any broker."""

from __future__ import annotations

import pytest

from celeriac import states
from celeriac.exceptions import TaskRevokedError, TimeLimitExceeded
from tests.integration.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def tasks(broker: Broker, task_module):
    return task_module("app_tasks", broker.url, results=broker.results)


@pytest.fixture
def start_worker(broker: Broker, start_worker):
    """``start_worker("-c", "1")``: a ready worker on the test's broker."""

    def start(*args: str):
        return start_worker(*args, url=broker.url, env=broker.worker_env())

    return start


def _wait_for_file(path, timeout=20.0):
    wait_for(lambda: path.exists() and path.read_text().strip(), timeout, interval=0.02,
             message=f"{path} was never written")


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_soft_time_limit_raises_inside_the_task(start_worker, tasks, pool):
    start_worker("-P", pool, "-c", "1")
    assert tasks.soft_limited.delay(10).get(timeout=20) == "soft limit caught"
    assert tasks.async_soft_limited.delay(10).get(timeout=20) == "soft limit caught"
    # per call: a longer soft limit lets a short task finish
    assert tasks.soft_limited.apply_async((0.2,), soft_time_limit=5).get(timeout=20) == "finished"


def test_hard_time_limit_replaces_the_child_and_the_worker_goes_on(start_worker, tasks):
    worker = start_worker("-P", "prefork", "-c", "1")
    limited = tasks.sleep_for.apply_async((30,), time_limit=0.5)
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=20)
    assert limited.state == states.FAILURE
    assert tasks.add.delay(1, 1).get(timeout=20) == 2, "a new child takes the killed one's place"
    assert "Hard time limit (0.5s) exceeded" in worker.log()


def test_hard_time_limit_on_async_tasks(start_worker, tasks, tmp_path):
    start_worker("-c", "1")
    limited = tasks.async_mark_and_wait.apply_async((str(tmp_path / "pid"), 30), time_limit=0.5)
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=20)


def test_revoked_before_any_worker_starts_never_runs(start_worker, tasks, tmp_path):
    ledger = tmp_path / "ledger"
    doomed = tasks.write_ledger.delay(str(ledger), 1)
    doomed.revoke()
    kept = tasks.write_ledger.delay(str(ledger), 2)
    start_worker("-c", "1")
    assert kept.get(timeout=20) == 2
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=20)
    assert doomed.state == states.REVOKED
    assert ledger.read_text().split()[0::2] == ["2"], "the revoked task must never run"


def test_revoke_reaches_a_worker_started_later(start_worker, tasks, tmp_path):
    ledger = tmp_path / "ledger"
    first = start_worker("-c", "1")
    first.stop()
    countdown = tasks.write_ledger.apply_async((str(ledger), 7), countdown=1.0)
    tasks.app.control.revoke(countdown.id)
    start_worker("-c", "1")
    with pytest.raises(TaskRevokedError):
        countdown.get(timeout=20)
    assert not ledger.exists()


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_revoke_terminate_stops_a_running_task(start_worker, tasks, tmp_path, pool):
    worker = start_worker("-P", pool, "-c", "1")
    marker = tmp_path / "started"
    running = tasks.mark_and_wait.delay(str(marker), 60)
    _wait_for_file(marker)
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        running.get(timeout=20)
    assert running.state == states.REVOKED
    assert tasks.add.delay(2, 2).get(timeout=20) == 4, "the worker goes on after a terminate"
    assert f"Terminating task {running.id}" in worker.log()


def test_revoke_terminate_async_task(start_worker, tasks, tmp_path):
    start_worker("-c", "1")
    marker = tmp_path / "started"
    running = tasks.async_mark_and_wait.delay(str(marker), 60)
    _wait_for_file(marker)
    tasks.app.control.revoke(running.id, terminate=True, signal="SIGUSR1")
    with pytest.raises(TaskRevokedError):
        running.get(timeout=20)
