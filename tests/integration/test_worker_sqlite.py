"""Real worker subprocesses on the embedded SQLite broker: the calls a Celery user makes, end to end."""

from __future__ import annotations

import collections
import time

import pytest

from celeriac import Celery, states
from celeriac.exceptions import NotRegistered, TaskRevokedError

pytestmark = pytest.mark.integration


@pytest.fixture
def app(sqlite_url, monkeypatch):
    monkeypatch.setenv("CELERIAC_BROKER_URL", sqlite_url)
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", sqlite_url)
    from tests.integration import app_tasks

    app_tasks.app.close()  # forget connections from an earlier test's file
    yield app_tasks.app
    app_tasks.app.close()


@pytest.fixture
def tasks(app):
    from tests.integration import app_tasks

    return app_tasks


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_round_trip_in_each_pool(start_worker, tasks, pool):
    start_worker("-P", pool, "-c", "2")
    assert tasks.add.delay(2, 2).get(timeout=20) == 4
    with pytest.raises(ValueError, match="boom"):
        tasks.fail.delay().get(timeout=20)


def test_request_fields_and_naming(start_worker, tasks):
    worker = start_worker("-c", "1", "-n", "probe@%h", "-Q", "celery,other")
    result = tasks.whoami.delay()
    info = result.get(timeout=20)
    assert info["id"] == result.id
    assert info["root_id"] == result.id and info["parent_id"] is None
    assert info["retries"] == 0
    assert info["hostname"].startswith("probe@")
    assert info["delivery_info"]["routing_key"] == "celery"
    assert tasks.whoami.name == "tests.integration.app_tasks.whoami"
    routed = tasks.whoami.apply_async(queue="other").get(timeout=20)
    assert routed["delivery_info"]["routing_key"] == "other"
    log = worker.log()
    assert f"Task tests.integration.app_tasks.whoami[{result.id}] received" in log
    assert f"Task tests.integration.app_tasks.whoami[{result.id}] succeeded in" in log


def test_failure_state_traceback_and_log(start_worker, tasks):
    worker = start_worker("-c", "1")
    result = tasks.fail.delay("kaput")
    exc = result.get(timeout=20, propagate=False)
    assert isinstance(exc, ValueError) and exc.args == ("kaput",)
    assert result.state == states.FAILURE and result.failed() and result.ready()
    assert "ValueError: kaput" in result.traceback
    assert result.date_done is not None
    worker.wait_for_log(f"[{result.id}] raised unexpected: ValueError('kaput')")


def test_retry_and_autoretry(start_worker, tasks):
    start_worker("-c", "2")
    assert tasks.retry_until.delay(2).get(timeout=20) == 2
    result = tasks.always_keyerror.delay()
    with pytest.raises(KeyError):
        result.get(timeout=20)


def test_countdown_eta_and_expires(start_worker, tasks, tmp_path):
    ledger = tmp_path / "ledger"
    expired = tasks.write_ledger.apply_async((str(ledger), 1), expires=0.05)
    time.sleep(0.2)  # it expires while no worker is running
    start_worker("-c", "1")
    sent = time.monotonic()
    delayed = tasks.add.apply_async((1, 2), countdown=0.5)
    assert delayed.get(timeout=20) == 3
    assert time.monotonic() - sent >= 0.5
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert expired.state == states.REVOKED
    assert not ledger.exists(), "an expired task must not run"


def test_durable_queue_task_sent_before_worker_starts(start_worker, tasks):
    result = tasks.add.delay(20, 22)
    time.sleep(0.1)
    assert result.state == states.PENDING
    start_worker("-c", "1")
    assert result.get(timeout=20) == 42


def test_several_workers_one_file_each_task_once(start_worker, tasks, tmp_path):
    ledger = tmp_path / "ledger"
    start_worker("-c", "2", "-n", "w1@%h")
    start_worker("-c", "2", "-n", "w2@%h", "-P", "threads")
    # each task takes a few ms, so both (already running) workers get a share
    results = [tasks.write_ledger.delay(str(ledger), n, 0.005) for n in range(300)]
    assert [r.get(timeout=60) for r in results] == list(range(300))
    lines = ledger.read_text().split()
    counts = collections.Counter(int(n) for n in lines[0::2])
    assert counts == collections.Counter(range(300)), "every task must run exactly once"
    assert len(set(lines[1::2])) >= 2, "the work should be spread over more than one process"


def test_async_tasks_run_concurrently_on_the_event_loop(start_worker, tasks):
    start_worker("-c", "1")
    assert tasks.async_sleep_add.delay(2, 3, 0.01).get(timeout=20) == 5
    windows = [r.get(timeout=30) for r in [tasks.async_window.delay(0.5) for _ in range(8)]]
    # with concurrency 1 a sync pool would run them one after another; on the event loop every
    # window overlaps every other one
    assert max(start for start, _ in windows) < min(end for _, end in windows)


def test_task_logger_reaches_worker_log(start_worker, tasks):
    worker = start_worker("-c", "1")
    result = tasks.log_message.delay("hello from the task")
    result.get(timeout=20)
    worker.wait_for_log(f"tests.integration.app_tasks.log_message[{result.id}]: task says: "
                        "hello from the task")


def test_link_and_link_error_conventions(start_worker, tasks, tmp_path):
    start_worker("-c", "2")
    parent = tasks.add.apply_async((2, 2), link=tasks.add.s(10))
    assert parent.get(timeout=20) == 4
    deadline = time.monotonic() + 20
    while not parent.children and time.monotonic() < deadline:
        time.sleep(0.05)
        parent = tasks.app.AsyncResult(parent.id)
    (child,) = parent.children
    assert child.get(timeout=20) == 14
    record = tmp_path / "errbacks"
    failing = tasks.fail.apply_async(
        link_error=[tasks.record_errback_old.s(path=str(record)), tasks.record_errback_new.s(str(record))])
    with pytest.raises(ValueError):
        failing.get(timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not record.exists() or
                                           len(record.read_text().splitlines()) < 2):
        time.sleep(0.05)
    assert sorted(record.read_text().splitlines()) == sorted(
        [f"old {failing.id}", f"new {failing.id} ValueError"])


def test_unknown_task_is_dead_lettered_and_recorded(start_worker, app):
    worker = start_worker("-c", "1")
    result = app.send_task("tests.integration.app_tasks.no_such_task", (1,))
    with pytest.raises(NotRegistered):
        result.get(timeout=20)
    worker.wait_for_log("Received unregistered task of type 'tests.integration.app_tasks.no_such_task'")
    letters = app.transport.dead_letters()
    assert [d.message.headers["id"] for d in letters] == [result.id]
    assert "unknown task name" in letters[0].reason


def test_warm_shutdown_exits_zero(start_worker, tasks):
    worker = start_worker("-c", "2")
    result = tasks.sleep_for.delay(0.5)
    worker.wait_for_log(f"[{result.id}] received")
    assert worker.stop() == 0
    assert result.get(timeout=5) == 0.5, "warm shutdown lets the running task finish"


def test_other_app_can_read_results(start_worker, tasks, sqlite_url):
    start_worker("-c", "1")
    result = tasks.add.delay(5, 5)
    result.get(timeout=20)
    reader = Celery("reader", broker=sqlite_url, backend=sqlite_url, set_as_current=False)
    try:
        assert reader.AsyncResult(result.id).get(timeout=5) == 10
    finally:
        reader.close()


def test_long_task_never_holds_fetched_work_hostage(start_worker, tasks, tmp_path):
    """One shared prefetch buffer: while one slot runs a long task, the other slot takes every
    quick task, including ones fetched before the long task started."""
    start_worker("-P", "prefork", "-c", "2", "--prefetch-multiplier", "4")
    marker = tmp_path / "long"
    long_task = tasks.mark_and_wait.delay(str(marker), 8)
    quick = [tasks.add.delay(i, i) for i in range(12)]
    assert [r.get(timeout=6) for r in quick] == [2 * i for i in range(12)]
    assert long_task.state in ("PENDING", "STARTED"), "the long task is still running"
    long_task.revoke(terminate=True)
