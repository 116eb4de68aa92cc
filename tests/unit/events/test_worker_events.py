"""``TaskEvents`` in a real in-process worker (solo and thread pools, memory broker): the events
of each way a task ends, in order and with Celery's fields; the worker's own events; switching
task events on and off while the worker runs; and the extension points they come from."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celeriac.exceptions import Reject
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker.events import SW_IDENT, TaskEvents
from celeriac.worker.extensions import Dropped, Hooks
from tests.event_collector import Collector
from tests.waiting import wait_for

POOLS = ["solo", "threads"]


@pytest.fixture
def app():
    app = make_test_app("worker-events", worker_heartbeat_interval=0.2)
    attempts: dict[str, int] = {}

    @app.task(name="ev.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="ev.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="ev.retry_once", bind=True)
    def retry_once(self: Any, value: int) -> int:
        attempts[self.request.id] = attempts.get(self.request.id, 0) + 1
        if self.request.retries == 0:
            raise self.retry(countdown=0, exc=RuntimeError("try again"))
        return value

    @app.task(name="ev.reject")
    def reject() -> None:
        raise Reject("no thanks", requeue=False)

    yield app
    dispose_test_app(app)


@pytest.fixture
def collector(app):
    collector = Collector(app)
    yield collector
    collector.close()


def task_events_of(worker: Any) -> TaskEvents:
    assert worker.consumer is not None
    return next(e for e in worker.consumer.hooks.extensions if isinstance(e, TaskEvents))


@pytest.mark.parametrize("pool", POOLS)
def test_a_success_and_a_failure_send_celerys_sequence_and_fields(app, collector, pool):
    with start_worker(app, pool=pool, task_events=True, hostname="ev1@test") as worker:
        ok = app.tasks["ev.add"].delay(2, 2)
        bad = app.tasks["ev.fail"].delay("boom")
        assert ok.get(timeout=10) == 4
        collector.wait_types(ok.id, ["task-received", "task-started", "task-succeeded"])
        collector.wait_types(bad.id, ["task-received", "task-started", "task-failed"])
        hostname = worker.hostname
    received, started, succeeded = collector.of(ok.id)
    assert {k: received[k] for k in ("name", "args", "kwargs", "root_id", "parent_id",
                                     "retries", "eta", "expires")} == {
        "name": "ev.add", "args": "(2, 2)", "kwargs": "{}", "root_id": ok.id,
        "parent_id": None, "retries": 0, "eta": None, "expires": None}
    assert set(started) == {"hostname", "utcoffset", "pid", "clock", "uuid", "timestamp",
                            "type", "local_received"}
    assert succeeded["result"] == "4" and isinstance(succeeded["runtime"], float)
    assert received["clock"] < started["clock"] < succeeded["clock"]
    assert {e["hostname"] for e in collector.of(ok.id)} == {hostname}
    failed = collector.of(bad.id)[-1]
    assert failed["exception"] == "ValueError('boom')"
    assert "Traceback (most recent call last)" in failed["traceback"]
    assert "ValueError: boom" in failed["traceback"]


def test_a_retry_is_task_retried_then_a_new_attempt(app, collector):
    with start_worker(app, pool="solo", task_events=True):
        result = app.tasks["ev.retry_once"].delay(7)
        assert result.get(timeout=10) == 7
        collector.wait_types(result.id, ["task-received", "task-started", "task-retried",
                                         "task-received", "task-started", "task-succeeded"])
    events = collector.of(result.id)
    assert events[2]["exception"] == "RuntimeError('try again')" and events[2]["traceback"]
    assert (events[0]["retries"], events[3]["retries"]) == (0, 1)


def test_reject_revoke_expiry_and_an_unknown_task(app, collector):
    with start_worker(app, pool="solo", task_events=True):
        rejected = app.tasks["ev.reject"].delay()
        collector.wait_types(rejected.id, ["task-received", "task-started", "task-rejected"])
        revoked_id = "revoked-before-it-runs"
        app.control.revoke(revoked_id)
        app.tasks["ev.add"].apply_async((1, 1), task_id=revoked_id)
        # found revoked at arrival, or (solo pool: checked as it starts) received first
        wait_for(lambda: collector.types(revoked_id)[-1:] == ["task-revoked"], 10,
                 message=lambda: f"{collector.types(revoked_id)}")
        assert "task-started" not in collector.types(revoked_id)
        expired = app.tasks["ev.add"].apply_async(
            (1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
        collector.wait_types(expired.id, ["task-revoked"])
        unknown = app.send_task("ev.not_registered", (1,))
        collector.wait_types(unknown.id, ["task-failed"])
    assert collector.of(rejected.id)[-1]["requeue"] is False
    assert {k: collector.of(revoked_id)[-1][k] for k in ("terminated", "signum", "expired")} == {
        "terminated": False, "signum": None, "expired": False}
    assert collector.of(expired.id)[0]["expired"] is True
    assert "NotRegistered" in collector.of(unknown.id)[0]["exception"]


def test_the_worker_events_online_heartbeats_offline(app, collector):
    with start_worker(app, pool="solo", hostname="beats@test") as worker:
        hostname = worker.hostname
        wait_for(lambda: len(collector.worker_events("worker-heartbeat")) >= 2, 10,
                 message="no heartbeats every 0.2 s")
        app.tasks["ev.add"].delay(1, 2).get(timeout=10)
    wait_for(lambda: collector.worker_events("worker-offline"), 10, message="no worker-offline")
    online = collector.worker_events("worker-online")[0]
    heartbeat = collector.worker_events("worker-heartbeat")[-1]
    offline = collector.worker_events("worker-offline")[0]
    for event in (online, heartbeat, offline):
        assert event["hostname"] == hostname and event["freq"] == 0.2
        assert event["sw_ident"] == SW_IDENT and isinstance(event["sw_ver"], str)
        assert len(event["loadavg"]) == 3 and isinstance(event["sw_sys"], str)
    assert offline["processed"] >= 2, "the ping and the add"
    assert offline["clock"] > heartbeat["clock"] > online["clock"]
    assert not [e for e in collector.events if e["type"].startswith("task-")], \
        "no task events without -E"


def test_without_heartbeat_sends_no_worker_events(app, collector):
    with start_worker(app, pool="solo", without_heartbeat=True, task_events=True):
        result = app.tasks["ev.add"].delay(1, 1)
        collector.wait_types(result.id, ["task-received", "task-started", "task-succeeded"])
    assert not [e for e in collector.events if e["type"].startswith("worker-")]


def test_enable_and_disable_at_run_time(app, collector):
    with start_worker(app, pool="threads") as worker:
        events = task_events_of(worker)
        before = app.tasks["ev.add"].delay(1, 1)
        before.get(timeout=10)
        assert events.enable() is True and events.enable() is False
        during = app.tasks["ev.add"].delay(2, 2)
        during.get(timeout=10)
        collector.wait_types(during.id, ["task-received", "task-started", "task-succeeded"])
        assert events.disable() is True and events.disable() is False
        after = app.tasks["ev.add"].delay(3, 3)
        after.get(timeout=10)
        wait_for(lambda: collector.worker_events("worker-heartbeat"), 10,
                 message="no heartbeat after the last task")
    assert collector.of(before.id) == [] and collector.of(after.id) == []


def test_task_events_use_their_own_points_and_cost_nothing_elsewhere(app):
    events = TaskEvents(app, "w@x")
    hooks = Hooks([events])
    for point in ("on_received", "on_started", "after_outcome", "on_dropped",
                  "on_worker_start", "on_worker_shutdown"):
        assert len(getattr(hooks, point)) == 1, point
    assert hooks.before_admission == () and hooks.before_run == ()
    # disabled: every task point returns before building anything
    events.on_dropped(Dropped(None, None, "revoked"))  # type: ignore[arg-type]
    assert events.dispatcher is None
