"""Real worker subprocesses on each broker: the calls a Celery user makes, end to end.

Every test runs on each broker through the ``broker`` fixture (``tests/integration/conftest.py``):
the embedded SQLite broker (a file of the test's own), a real Redis (broker and results; a
database of the test's own, flushed before and after) and a real RabbitMQ (a virtual host of the
test's own; results in SQLite). Without a Redis or RabbitMQ on loopback those runs are skipped
locally and FAIL under CI=true (``tests/conftest.py``).

Checks that only make sense on one broker are guarded by ``if broker.redis_db is not None:`` and
commented "Redis only": they look at the key layout Celery and kombu share with celeriac.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import pytest

from celeriac import Celery, states
from celeriac.exceptions import NotRegistered, TaskRevokedError
from tests.integration.conftest import Broker, settled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

@pytest.fixture
def app(broker: Broker, task_module):
    return task_module("app_tasks", broker.url, results=broker.results).app


@pytest.fixture
def tasks(app):
    from tests.integration import app_tasks

    return app_tasks


@pytest.fixture
def worker(broker: Broker, start_worker) -> Callable:
    """``worker("-c", "2")``: a ready worker on the test's broker."""

    def start(*args: str):
        return start_worker(*args, url=broker.url, env=broker.worker_env())

    return start


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_round_trip_in_each_pool(worker, tasks, broker, pool):
    worker("-P", pool, "-c", "2")
    assert tasks.add.delay(2, 2).get(timeout=20) == 4
    with pytest.raises(ValueError, match="boom"):
        tasks.fail.delay().get(timeout=20)
    settled(broker, tasks.app)


def test_request_fields_and_naming(worker, tasks):
    w = worker("-c", "1", "-n", "probe@%h", "-Q", "celery,other")
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
    log = w.log()
    assert f"Task tests.integration.app_tasks.whoami[{result.id}] received" in log
    assert f"Task tests.integration.app_tasks.whoami[{result.id}] succeeded in" in log


def test_failure_state_traceback_log_and_result_key(worker, tasks, broker):
    w = worker("-c", "1")
    result = tasks.fail.delay("kaput")
    exc = result.get(timeout=20, propagate=False)
    assert isinstance(exc, ValueError) and exc.args == ("kaput",)
    assert result.state == states.FAILURE and result.failed() and result.ready()
    assert "ValueError: kaput" in result.traceback
    assert result.date_done is not None
    w.wait_for_log(f"[{result.id}] raised unexpected: ValueError('kaput')")
    if broker.redis_db is not None:
        # Redis only: laid out where Celery's Redis backend reads it
        assert broker.redis_db.exists(f"celery-task-meta-{result.id}")


def test_retry_and_autoretry(worker, tasks, broker):
    worker("-c", "2")
    assert tasks.retry_until.delay(2).get(timeout=20) == 2
    result = tasks.always_keyerror.delay()
    with pytest.raises(KeyError):
        result.get(timeout=20)
    settled(broker, tasks.app)


def test_countdown_eta_and_expires(worker, tasks, broker, tmp_path):
    ledger = tmp_path / "ledger"
    expired = tasks.write_ledger.apply_async((str(ledger), 1), expires=0.05)
    time.sleep(0.2)  # it expires while no worker is running (time must pass: not a look)
    worker("-c", "1")
    sent = time.monotonic()
    delayed = tasks.add.apply_async((1, 2), countdown=0.5)
    assert delayed.get(timeout=20) == 3
    assert time.monotonic() - sent >= 0.5
    if broker.name == "amqp":
        # RabbitMQ drops the message itself (the per-message TTL, ``expiration``, Celery
        # sets): no worker ever sees it, so nothing is recorded, as with Celery
        assert tasks.app.transport.qsize("celery") == 0
        assert expired.state == states.PENDING
        assert not ledger.exists(), "an expired task must not run"
        return
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert expired.state == states.REVOKED
    # REVOKED is stored by the worker that discarded it, so it has provably decided by now
    assert not ledger.exists(), "an expired task must not run"


def test_durable_queue_task_sent_before_worker_starts(worker, tasks, broker):
    result = tasks.add.delay(20, 22)
    # publish returns once the message is stored; no worker exists yet to take it
    assert tasks.app.transport.qsize("celery") == 1
    assert result.state == states.PENDING
    if broker.redis_db is not None:  # Redis only: kombu's list, named after the queue
        assert broker.redis_db.llen("celery") == 1
    worker("-c", "1")
    assert result.get(timeout=20) == 42


def test_several_workers_one_broker_each_task_once(worker, tasks, broker, tmp_path):
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
    settled(broker, tasks.app)


def test_async_tasks_run_concurrently_on_the_event_loop(worker, tasks):
    worker("-c", "1")
    assert tasks.async_sleep_add.delay(2, 3, 0.01).get(timeout=20) == 5
    windows = [r.get(timeout=30) for r in [tasks.async_window.delay(0.5) for _ in range(8)]]
    # with concurrency 1 a sync pool would run them one after another; on the event loop every
    # window overlaps every other one
    assert max(start for start, _ in windows) < min(end for _, end in windows)


def test_task_logger_reaches_worker_log(worker, tasks):
    w = worker("-c", "1")
    result = tasks.log_message.delay("hello from the task")
    result.get(timeout=20)
    w.wait_for_log(f"tests.integration.app_tasks.log_message[{result.id}]: task says: "
                   "hello from the task")


def test_link_and_link_error_conventions(worker, tasks, tmp_path):
    worker("-c", "2")
    parent = tasks.add.apply_async((2, 2), link=tasks.add.s(10))
    assert parent.get(timeout=20) == 4
    children = wait_for(lambda: tasks.app.AsyncResult(parent.id).children, 20,
                        message=f"the link of {parent.id} never showed up as its child")
    (child,) = children
    assert child.get(timeout=20) == 14
    record = tmp_path / "errbacks"
    failing = tasks.fail.apply_async(link_error=[tasks.record_errback_old.s(path=str(record)),
                                                 tasks.record_errback_new.s(str(record))])
    with pytest.raises(ValueError):
        failing.get(timeout=20)
    wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 2, 20,
             message=lambda: f"errbacks: {record.read_text() if record.exists() else 'none ran'}")
    assert sorted(record.read_text().splitlines()) == sorted(
        [f"old {failing.id}", f"new {failing.id} ValueError"])


def test_unknown_task_is_dead_lettered_and_recorded(worker, app, broker):
    w = worker("-c", "1")
    result = app.send_task("tests.integration.app_tasks.no_such_task", (1,))
    with pytest.raises(NotRegistered):
        result.get(timeout=20)
    w.wait_for_log("Received unregistered task of type 'tests.integration.app_tasks.no_such_task'")
    letters = app.transport.dead_letters()
    assert [d.message.headers["id"] for d in letters] == [result.id]
    assert "unknown task name" in letters[0].reason
    settled(broker, app)


def test_warm_shutdown_exits_zero(worker, tasks):
    w = worker("-c", "2")
    result = tasks.sleep_for.delay(0.5)
    w.wait_for_log(f"[{result.id}] received")
    assert w.stop() == 0
    assert result.get(timeout=5) == 0.5, "warm shutdown lets the running task finish"


def test_other_app_can_read_results(worker, tasks, broker):
    worker("-c", "1")
    result = tasks.add.delay(5, 5)
    result.get(timeout=20)
    reader = Celery("reader", broker=broker.url, backend=broker.backend,
                    set_as_current=False)
    try:
        assert reader.AsyncResult(result.id).get(timeout=5) == 10
    finally:
        reader.close()


def test_long_task_never_holds_fetched_work_hostage(worker, tasks, tmp_path):
    """One shared prefetch buffer: while one slot runs a long task, the other slot takes every
    quick task, including ones fetched before the long task started."""
    worker("-P", "prefork", "-c", "2", "--prefetch-multiplier", "4")
    marker = tmp_path / "long"
    long_task = tasks.mark_and_wait.delay(str(marker), 8)
    quick = [tasks.add.delay(i, i) for i in range(12)]
    assert [r.get(timeout=6) for r in quick] == [2 * i for i in range(12)]
    assert long_task.state in ("PENDING", "STARTED"), "the long task is still running"
    long_task.revoke(terminate=True)
