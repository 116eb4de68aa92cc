"""Remote control end to end in one process: ``app.control`` and ``app.control.inspect()`` against
a worker started in a thread (celeriac.testing.start_worker) on a private memory broker and store.
The answers are checked against the shapes a real Celery 5.7 worker gave
(shared/vectors/celery/redis/worker/remote_control.json); the brokers themselves are covered by
tests/integration/test_remote_control.py and Celery's own tools by tests/interop."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any, Iterator

import pytest

from celeriac import Celery
from celeriac.backends.base import DisabledBackend
from celeriac.control.client import ALREADY_STORED
from celeriac.exceptions import SoftTimeLimitExceeded
from celeriac.rates import read_overrides
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker import consumer as consumer_module
from celeriac.worker.pidbox import RemoteControl
from celeriac.worker.revokes import record_revoke
from tests.vectors import CELERY_VECTORS
from tests.waiting import wait_for

CELERY = json.loads((CELERY_VECTORS / "redis" / "worker" / "remote_control.json").read_text())[
    "control_replies_decoded"]
NODE = "w1@unit"
TIMEOUT = 0.5
#: one worker answers: the answer ends the wait
ONE: dict[str, Any] = {"reply": True, "timeout": 5.0, "limit": 1}


@pytest.fixture
def app() -> Iterator[Celery]:
    app = make_test_app("pidbox")
    app.gate = threading.Event()  # type: ignore[attr-defined]

    @app.task(name="unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="unit.hold")
    def hold(seconds: float) -> str:
        """Runs until the test opens the gate (or ``seconds`` pass), in short sleeps, so a
        soft time limit or a terminate lands between two."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not app.gate.is_set():  # type: ignore[attr-defined]
            time.sleep(0.01)
        return "done"

    yield app
    app.gate.set()  # type: ignore[attr-defined]
    dispose_test_app(app)


@pytest.fixture
def worker(app: Celery) -> Iterator[Any]:
    with start_worker(app, pool="threads", concurrency=2, hostname=NODE,
                      perform_ping_check=False) as embedded:
        yield embedded


def inspect(app: Celery, **options: Any) -> Any:
    """Asks the one worker: its answer ends the wait (none comes within ``TIMEOUT``)."""
    options.setdefault("limit", 1)
    options.setdefault("timeout", TIMEOUT)
    return app.control.inspect(**options)


def keys_of(value: dict[str, Any]) -> set[str]:
    return set(value)


def test_inspect_answers_have_celerys_shapes(app: Celery, worker: Any) -> None:
    ask = inspect(app)
    assert ask.ping() == {NODE: {"ok": "pong"}} == {NODE: CELERY["ping"]["w1@capture"]}
    registered = ask.registered()[NODE]  # (shared tasks other tests define join every app)
    assert {"unit.add", "unit.hold"} <= set(registered) and registered == sorted(registered)
    assert not [name for name in registered if name.startswith("celery.")]  # built-ins left out
    [with_builtins] = app.control.broadcast("registered", {"builtins": True}, **ONE)
    assert "celery.map" in with_builtins[NODE]
    stats = ask.stats()[NODE]
    celery_stats = CELERY["stats"]["w1@capture"]
    assert keys_of(celery_stats) <= keys_of(stats)
    assert keys_of(celery_stats["pool"]) <= keys_of(stats["pool"])
    assert keys_of(celery_stats["broker"]) <= keys_of(stats["broker"])
    assert keys_of(celery_stats["rusage"]) == keys_of(stats["rusage"])
    assert stats["pool"]["max-concurrency"] == 2 and stats["broker"]["transport"] == "memory"
    assert int(stats["clock"]) > 0 and isinstance(stats["uptime"], int)
    [queue] = ask.active_queues()[NODE]
    celery_queue = CELERY["active_queues"]["w1@capture"][0]
    assert keys_of(queue) == keys_of(celery_queue)
    assert keys_of(queue["exchange"]) == keys_of(celery_queue["exchange"])
    assert queue["name"] == "celery" and queue["exchange"]["type"] == "direct"
    for command in ("active", "reserved", "scheduled", "revoked"):
        assert getattr(ask, command)() == {NODE: []}, command
    assert ask.query_task("nope") == {NODE: {}}
    report = ask.report()[NODE]
    assert set(report) == {"ok"} and "celeriac" in report["ok"]
    conf = ask.conf()[NODE]
    assert conf["broker_url"].startswith("memory://")
    assert "task_serializer" not in conf and ask.conf(True)[NODE]["task_serializer"] == "json"
    app.conf.security_key = "hunter2-key"
    app.conf.broker_transport_options = {"password": "hunter2-pw", "visibility_timeout": 9}
    conf = ask.conf()[NODE]
    assert "hunter2" not in json.dumps(conf)
    assert conf["security_key"] == "********"
    assert conf["broker_transport_options"] == {"password": "********", "visibility_timeout": 9}
    assert ask.clock()[NODE]["clock"] > 0
    assert app.control.ping(timeout=5, limit=1) == [{NODE: {"ok": "pong"}}]


def test_active_and_reserved_describe_requests_as_celery_does(app: Celery, worker: Any) -> None:
    held = [app.tasks["unit.hold"].delay(30) for _ in range(3)]  # two slots: one waits
    ask = inspect(app)
    active = wait_for(lambda: len((ask.active() or {}).get(NODE, [])) == 2 and ask.active(),
                      10, message="two tasks never showed as active")[NODE]
    [reserved] = ask.reserved()[NODE]
    celery_request = CELERY["scheduled_while_eta"]["w1@capture"][0]["request"]
    for info in (*active, reserved):
        assert keys_of(info) == keys_of(celery_request)
        assert keys_of(info["delivery_info"]) == keys_of(celery_request["delivery_info"])
        assert info["args"] == [30] and info["kwargs"] == {} and info["hostname"] == NODE
    assert all(isinstance(info["time_start"], float) for info in active)
    assert reserved["time_start"] is None
    assert ask.active(safe=True)[NODE][0]["args"] == "(30,)"  # argsrepr
    ids = {info["id"] for info in active}
    assert ids | {reserved["id"]} == {result.id for result in held}
    found = ask.query_task(*ids)[NODE]
    assert {state for state, _ in found.values()} == {"active"} and set(found) == ids
    app.gate.set()  # type: ignore[attr-defined]
    assert [result.get(timeout=10) for result in held] == ["done"] * 3
    assert ask.stats()[NODE]["total"] == {"unit.hold": 3}


def test_commands_reach_only_the_workers_they_name(app: Celery, worker: Any) -> None:
    assert inspect(app, destination=["other@host"]).ping() is None
    assert inspect(app, destination=[NODE]).ping() == {NODE: {"ok": "pong"}}
    assert inspect(app, destination=NODE).ping() == {"ok": "pong"}  # one name: its value
    assert inspect(app, pattern="w1@*", matcher="glob").ping() == {NODE: {"ok": "pong"}}
    assert inspect(app, pattern="x*", matcher="glob").ping() is None
    # a pattern without a matcher is a glob: the worker it does not name stays silent (Celery's
    # client would send it to every worker)
    assert app.control.broadcast("ping", pattern="x*", reply=True, timeout=TIMEOUT) == []


def test_an_unknown_command_gets_an_error_answer(app: Celery, worker: Any) -> None:
    [reply] = app.control.broadcast("objgraph", **ONE)
    assert "unknown remote control command 'objgraph'" in reply[NODE]["error"]
    [reply] = app.control.broadcast("pool_grow", arguments={"n": "many"}, **ONE)
    assert reply[NODE]["error"].startswith("pool_grow: invalid literal")


def test_a_revoke_is_broadcast_and_stored(app: Celery, worker: Any) -> None:
    ran: list[str] = []
    task_id = "revoked-unit-1"
    [reply] = app.control.revoke(task_id, **ONE)
    assert reply == {NODE: {"ok": f"tasks {task_id} flagged as revoked"}}
    assert inspect(app).revoked() == {NODE: [task_id]}
    app.tasks["unit.add"].apply_async((1, 2), task_id=task_id, link=None)
    result = app.AsyncResult(task_id)
    wait_for(lambda: result.state == "REVOKED", 10, message="the revoked task was not dropped")
    assert ran == []
    assert app.backend.get_value(f"celeriac-revoked-{task_id}") is not None  # for later workers


def test_a_revoke_from_a_celery_client_is_stored_by_the_worker(app: Celery, worker: Any) -> None:
    """Celery's client only broadcasts (no ``celeriac_stored``): the worker keeps it."""
    app.control.broadcast("revoke", arguments={"task_id": ["c-1", "c-2"], "terminate": False,
                                               "signal": "SIGTERM"}, **ONE)
    for task_id in ("c-1", "c-2"):
        assert app.backend.get_value(f"celeriac-revoked-{task_id}") is not None


def test_terminate_stops_a_running_task(app: Celery, worker: Any) -> None:
    result = app.tasks["unit.hold"].delay(30)
    wait_for(lambda: (inspect(app).active() or {}).get(NODE), 10, message="never ran")
    [reply] = app.control.terminate(result.id, **ONE)
    assert reply == {NODE: {"ok": f"terminate: {result.id}"}}
    wait_for(lambda: result.state == "REVOKED", 10, message="the task was not terminated")


def test_terminate_names_the_task_the_revoke_sync_stopped_first(
        app: Celery, worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``app.control.terminate`` stores the revoke before broadcasting it, so the worker's revoke
    sync may stop the task before the broadcast arrives: the answer still names it."""
    result = app.tasks["unit.hold"].delay(30)
    wait_for(lambda: (inspect(app).active() or {}).get(NODE), 10, message="never ran")
    record_revoke(app.backend, [result.id], terminate=True)  # the client's first step
    wait_for(lambda: result.state == "REVOKED", 10, message="the revoke sync did not stop it")
    [reply] = app.control.broadcast("revoke", arguments={  # its second
        "task_id": result.id, "terminate": True, "signal": "SIGTERM", ALREADY_STORED: True},
        **ONE)
    assert reply == {NODE: {"ok": f"terminate: {result.id}"}}
    [reply] = app.control.terminate("never-ran-here", **ONE)
    assert reply == {NODE: {"ok": "terminate: tasks unknown"}}
    # the memory is short: a task stopped a while ago is not named by a later terminate
    monkeypatch.setattr(consumer_module, "TERMINATED_MEMORY", 0.0)
    [reply] = app.control.terminate(result.id, **ONE)
    assert reply == {NODE: {"ok": "terminate: tasks unknown"}}


def test_a_terminate_that_lands_as_its_task_goes_to_the_pool_stops_it(
        app: Celery, worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminate that comes after the task's last look but before its pool holds it (here:
    exactly then, from the settle policy's step between the two) still stops it, once the pool
    has it, instead of finding nothing running and leaving it to run."""
    consumer = worker.consumer
    settle_first = consumer.settlement.before_run
    landed: list[str] = []

    def before_run(job: Any) -> bool:
        go_on = settle_first(job)
        if job.task.name == "unit.hold" and not landed:
            landed.append(job.task_id)
            consumer.revokes.add([job.task_id])  # as the revoke sync or remote control do
            consumer._terminate(job.task_id, signal.SIGTERM)
        return go_on

    monkeypatch.setattr(consumer.settlement, "before_run", before_run)
    result = app.tasks["unit.hold"].delay(30)
    wait_for(lambda: result.state == "REVOKED", 10, message="the terminate was lost")
    assert landed == [result.id]


def test_time_limit_applies_to_calls_started_after_it(app: Celery, worker: Any) -> None:
    [reply] = app.control.time_limit("unit.hold", soft=0.2, **ONE)
    assert reply == {NODE: {"ok": "time limits set successfully"}}
    with pytest.raises(SoftTimeLimitExceeded):
        app.tasks["unit.hold"].delay(30).get(timeout=10)
    [reply] = app.control.time_limit("unit.nope", soft=1, **ONE)
    assert reply == {NODE: {"error": "unknown task"}}


def test_rate_limit_is_the_stores_and_broadcast(app: Celery, worker: Any) -> None:
    [reply] = app.control.rate_limit("unit.add", "10/m", **ONE)
    assert reply[NODE]["ok"].startswith("new rate limit set successfully")
    assert read_overrides(app.backend) == {"unit.add": "10/m"}
    # as a Celery client sends it: the worker writes the store's rate itself
    [reply] = app.control.broadcast("rate_limit", arguments={
        "task_name": "unit.add", "rate_limit": "5/s"}, **ONE)
    assert reply[NODE]["ok"].startswith("new rate limit set successfully")
    assert read_overrides(app.backend) == {"unit.add": "5/s"}
    [reply] = app.control.broadcast("rate_limit", arguments={
        "task_name": "unit.add", "rate_limit": "5/week"}, **ONE)
    assert reply[NODE]["error"].startswith("Invalid rate limit string")


def test_queues_are_added_and_cancelled_at_run_time(app: Celery, worker: Any) -> None:
    [reply] = app.control.add_consumer("unit-extra", **ONE)
    assert reply == {NODE: {"ok": "add consumer unit-extra"}}
    names = [q["name"] for q in inspect(app).active_queues()[NODE]]
    assert names == ["celery", "unit-extra"]
    assert app.tasks["unit.add"].apply_async((2, 3), queue="unit-extra").get(timeout=10) == 5
    [reply] = app.control.cancel_consumer("unit-extra", **ONE)
    assert reply == {NODE: {"ok": "no longer consuming from unit-extra"}}
    assert [q["name"] for q in inspect(app).active_queues()[NODE]] == ["celery"]
    [reply] = app.control.cancel_consumer("celery", **ONE)
    assert "the only queue" in reply[NODE]["error"]


def test_the_pool_grows_and_shrinks(app: Celery, worker: Any) -> None:
    def size() -> int:
        return int(inspect(app).stats()[NODE]["pool"]["max-concurrency"])

    [reply] = app.control.pool_grow(2, **ONE)
    assert reply[NODE]["ok"].startswith("pool will grow") and size() == 4
    assert inspect(app).stats()[NODE]["prefetch_count"] == 16
    [reply] = app.control.pool_shrink(10, **ONE)
    assert reply[NODE]["ok"].startswith("pool will shrink") and size() == 1
    [reply] = app.control.pool_shrink(1, **ONE)
    assert "cannot shrink further" in reply[NODE]["error"]
    [reply] = app.control.autoscale(4, 1, **ONE)
    assert "autoscale is not enabled" in reply[NODE]["error"]


def test_events_are_switched_on_and_off(app: Celery, worker: Any) -> None:
    def events(command: str) -> Any:
        [reply] = app.control.broadcast(command, **ONE)
        return reply[NODE]

    assert events("enable_events") == {"ok": "task events enabled"}
    assert events("enable_events") == {"ok": "task events already enabled"}
    assert events("disable_events") == {"ok": "task events disabled"}
    assert events("disable_events") == {"ok": "task events already disabled"}


def test_shutdown_answers_then_stops_the_worker(app: Celery) -> None:
    with start_worker(app, pool="threads", hostname=NODE, perform_ping_check=False) as worker:
        [reply] = app.control.shutdown(**ONE)
        assert reply == {NODE: {"ok": "shutting down"}}
        wait_for(lambda: worker._shutdown.is_set(), 10, message="the worker did not stop")


def test_remote_control_can_be_switched_off(app: Celery) -> None:
    app.conf.worker_enable_remote_control = False
    with start_worker(app, pool="threads", hostname=NODE, perform_ping_check=False) as worker:
        assert not any(isinstance(e, RemoteControl) for e in worker.consumer.hooks.extensions)
        assert inspect(app).ping() is None


def test_without_a_result_store_revokes_are_kept_in_memory() -> None:
    app = make_test_app("pidbox-nostore")
    ran: list[int] = []

    @app.task(name="unit.record")
    def record(n: int) -> None:
        ran.append(n)

    app._backend = DisabledBackend(app=app)  # result_backend disabled
    try:
        with start_worker(app, pool="threads", hostname=NODE, perform_ping_check=False):
            app.control.revoke("kept-in-memory", **ONE)
            assert inspect(app).revoked() == {NODE: ["kept-in-memory"]}
            record.apply_async((1,), task_id="kept-in-memory")
            record.delay(2)
            wait_for(lambda: ran == [2], 10, message=lambda: f"ran {ran}")
    finally:
        dispose_test_app(app)
    assert ran == [2]


def test_bad_requests_from_the_client_fail_before_sending(app: Celery) -> None:
    with pytest.raises(ValueError, match="destination must be a list"):
        app.control.broadcast("ping", destination=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown matcher"):
        app.control.broadcast("ping", pattern="x", matcher="regex")
