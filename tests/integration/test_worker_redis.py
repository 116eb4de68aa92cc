"""Real worker subprocesses on a real Redis (broker and results): the calls a Celery user makes.

The Redis counterpart of ``test_worker_sqlite``; skipped when no Redis runs locally, a failure
under CI=true. Every test gets a database of its own (``private_db``), flushed before and after.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Iterator

import pytest
import redis

from celeriac import Celery, states
from celeriac.exceptions import NotRegistered, TaskRevokedError
from tests.conftest import private_redis_db

pytestmark = pytest.mark.integration

#: databases set aside for these worker tests (interop uses 12-15, the contract tests 9 and 10)
WORKER_DBS = (1, 2, 3, 4)


def private_db(redis_server: str, timeout: float = 120.0):
    """A private, flushed Redis database for one worker test (see tests/conftest.py)."""
    return private_redis_db(redis_server, WORKER_DBS, timeout)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    with private_db(redis_server) as url:
        yield url


@pytest.fixture
def db(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's database, to check what the broker left behind."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def app(redis_url, monkeypatch):
    monkeypatch.setenv("CELERIAC_BROKER_URL", redis_url)
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", redis_url)
    from tests.integration import app_tasks

    app_tasks.app.close()  # forget connections to an earlier test's broker
    yield app_tasks.app
    app_tasks.app.close()


@pytest.fixture
def tasks(app):
    from tests.integration import app_tasks

    return app_tasks


@pytest.fixture
def worker(redis_url, start_worker) -> Callable:
    """``worker("-c", "2")``: a ready worker on the test's Redis database."""

    def start(*args: str):
        return start_worker(*args, url=redis_url)

    return start


def settled(db: redis.Redis, queue: str = "celery", timeout: float = 5.0) -> None:
    """Wait until nothing is queued or in flight (the ack follows the stored result closely)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.llen(queue) == 0 and db.hlen("unacked") == 0 and db.zcard("unacked_index") == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"left behind: {db.llen(queue)} queued, {db.hkeys('unacked')} in flight")


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_round_trip_in_each_pool(worker, tasks, db, pool):
    worker("-P", pool, "-c", "2")
    assert tasks.add.delay(2, 2).get(timeout=20) == 4
    with pytest.raises(ValueError, match="boom"):
        tasks.fail.delay().get(timeout=20)
    settled(db)


def test_request_fields_and_naming(worker, tasks):
    w = worker("-c", "1", "-n", "probe@%h", "-Q", "celery,other")
    result = tasks.whoami.delay()
    info = result.get(timeout=20)
    assert info["id"] == result.id
    assert info["root_id"] == result.id and info["parent_id"] is None
    assert info["retries"] == 0
    assert info["hostname"].startswith("probe@")
    assert info["delivery_info"]["routing_key"] == "celery"
    routed = tasks.whoami.apply_async(queue="other").get(timeout=20)
    assert routed["delivery_info"]["routing_key"] == "other"
    log = w.log()
    assert f"Task tests.integration.app_tasks.whoami[{result.id}] received" in log
    assert f"Task tests.integration.app_tasks.whoami[{result.id}] succeeded in" in log


def test_failure_state_traceback_and_result_key(worker, tasks, db):
    worker("-c", "1")
    result = tasks.fail.delay("kaput")
    exc = result.get(timeout=20, propagate=False)
    assert isinstance(exc, ValueError) and exc.args == ("kaput",)
    assert result.state == states.FAILURE and result.failed()
    assert "ValueError: kaput" in result.traceback
    assert result.date_done is not None
    # laid out where Celery's Redis backend reads it
    assert db.exists(f"celery-task-meta-{result.id}")


def test_retry_and_autoretry(worker, tasks, db):
    worker("-c", "2")
    assert tasks.retry_until.delay(2).get(timeout=20) == 2
    with pytest.raises(KeyError):
        tasks.always_keyerror.delay().get(timeout=20)
    settled(db)


def test_countdown_and_expires(worker, tasks, tmp_path):
    ledger = tmp_path / "ledger"
    expired = tasks.write_ledger.apply_async((str(ledger), 1), expires=0.05)
    time.sleep(0.2)  # it expires while no worker is running
    worker("-c", "1")
    sent = time.monotonic()
    delayed = tasks.add.apply_async((1, 2), countdown=0.5)
    assert delayed.get(timeout=20) == 3
    assert time.monotonic() - sent >= 0.5
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert expired.state == states.REVOKED
    assert not ledger.exists(), "an expired task must not run"


def test_durable_queue_task_sent_before_worker_starts(worker, tasks, db):
    result = tasks.add.delay(20, 22)
    time.sleep(0.1)
    assert result.state == states.PENDING
    assert db.llen("celery") == 1
    worker("-c", "1")
    assert result.get(timeout=20) == 42


def test_several_workers_one_redis_each_task_once(worker, tasks, db, tmp_path):
    ledger = tmp_path / "ledger"
    worker("-c", "2", "-n", "w1@%h")
    worker("-c", "2", "-n", "w2@%h", "-P", "threads")
    worker("-c", "2", "-n", "w3@%h", "-P", "solo")
    # each task takes a few ms, so all (already running) workers get a share
    results = [tasks.write_ledger.delay(str(ledger), n, 0.005) for n in range(300)]
    assert [r.get(timeout=60) for r in results] == list(range(300))
    lines = ledger.read_text().split()
    counts = collections.Counter(int(n) for n in lines[0::2])
    assert counts == collections.Counter(range(300)), "every task must run exactly once"
    assert len(set(lines[1::2])) >= 2, "the work should be spread over more than one process"
    settled(db)


def test_async_tasks_run_concurrently_on_the_event_loop(worker, tasks):
    worker("-c", "1")
    assert tasks.async_sleep_add.delay(2, 3, 0.01).get(timeout=20) == 5
    windows = [r.get(timeout=30) for r in [tasks.async_window.delay(0.5) for _ in range(8)]]
    # with concurrency 1 a sync pool would run them one after another; on the event loop every
    # window overlaps every other one
    assert max(start for start, _ in windows) < min(end for _, end in windows)


def test_link_and_link_error_conventions(worker, tasks, tmp_path):
    worker("-c", "2")
    parent = tasks.add.apply_async((2, 2), link=tasks.add.s(10))
    assert parent.get(timeout=20) == 4
    deadline = time.monotonic() + 20
    while not parent.children and time.monotonic() < deadline:
        time.sleep(0.05)
        parent = tasks.app.AsyncResult(parent.id)
    (child,) = parent.children
    assert child.get(timeout=20) == 14
    record = tmp_path / "errbacks"
    failing = tasks.fail.apply_async(link_error=[tasks.record_errback_old.s(path=str(record)),
                                                 tasks.record_errback_new.s(str(record))])
    with pytest.raises(ValueError):
        failing.get(timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not record.exists() or
                                           len(record.read_text().splitlines()) < 2):
        time.sleep(0.05)
    assert sorted(record.read_text().splitlines()) == sorted(
        [f"old {failing.id}", f"new {failing.id} ValueError"])


def test_unknown_task_is_dead_lettered_and_recorded(worker, app, db):
    w = worker("-c", "1")
    result = app.send_task("tests.integration.app_tasks.no_such_task", (1,))
    with pytest.raises(NotRegistered):
        result.get(timeout=20)
    w.wait_for_log("Received unregistered task of type 'tests.integration.app_tasks.no_such_task'")
    letters = app.transport.dead_letters()
    assert [d.message.headers["id"] for d in letters] == [result.id]
    assert "unknown task name" in letters[0].reason
    settled(db)


def test_warm_shutdown_exits_zero(worker, tasks):
    w = worker("-c", "2")
    result = tasks.sleep_for.delay(0.5)
    w.wait_for_log(f"[{result.id}] received")
    assert w.stop() == 0
    assert result.get(timeout=5) == 0.5, "warm shutdown lets the running task finish"


def test_other_app_can_read_results(worker, tasks, redis_url):
    worker("-c", "1")
    result = tasks.add.delay(5, 5)
    result.get(timeout=20)
    reader = Celery("reader", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        assert reader.AsyncResult(result.id).get(timeout=5) == 10
    finally:
        reader.close()
