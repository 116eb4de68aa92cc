"""Events from a real ``celeriac worker -E`` subprocess (issue 16, item 1), on SQLite, Redis and
RabbitMQ: our ``EventReceiver`` sees each task's whole sequence (the prefork pool, whose
``task-started`` the main process sends) and the worker's online/heartbeat/offline events; what
goes on the wire is Celery's layout (Redis: the PUBLISH channel and kombu envelope of the
capture; RabbitMQ: the ``celeryev`` topic exchange, durable, with Celery's message properties);
``celeriac events --dump`` prints them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from types import ModuleType
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import REPO
from tests.event_collector import Collector
from tests.integration.conftest import Broker
from tests.vectors import CELERY_VECTORS
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.app_tasks"
PATIENCE = 30.0
WORKER_ARGS = ("-P", "prefork", "-c", "2", "-E", "--heartbeat-interval", "0.5",
               "-n", "events@%h")
TASK_SEQUENCE = ["task-received", "task-started", "task-succeeded"]


@pytest.fixture
def tasks(broker: Broker, task_module: Callable[..., ModuleType]) -> ModuleType:
    return task_module("app_tasks", broker.url, results=broker.results)


def retried_in_order(types: list[str]) -> bool:
    """A task retried once: the first run's received and started, then the second run's whole
    sequence, with task-retried anywhere after the first run's start. The first run's outcome
    (task-retried) and the retry message its code published reach the worker's main process by
    two ways (the pool, the broker), so the second run may be received first, as on Celery."""
    rest = types[2:]
    return (types[:2] == TASK_SEQUENCE[:2] and rest.count("task-retried") == 1
            and [kind for kind in rest if kind != "task-retried"] == TASK_SEQUENCE)


def test_our_receiver_sees_each_tasks_sequence_and_the_worker(broker, tasks, start_worker):
    collector = Collector(tasks.app)
    try:
        worker = start_worker(*WORKER_ARGS, url=broker.url, env=broker.worker_env())
        ok = tasks.add.delay(2, 3)
        bad = tasks.fail.delay("boom")
        retried = tasks.retry_until.delay(1)
        assert ok.get(timeout=PATIENCE) == 5 and retried.get(timeout=PATIENCE) == 1
        wait_for(lambda: collector.types(ok.id) == TASK_SEQUENCE, PATIENCE,
                 message=lambda: f"add: {collector.types(ok.id)}")
        wait_for(lambda: collector.types(bad.id) == [*TASK_SEQUENCE[:2], "task-failed"],
                 PATIENCE, message=lambda: f"fail: {collector.types(bad.id)}")
        wait_for(lambda: retried_in_order(collector.types(retried.id)), PATIENCE,
                 message=lambda: f"retry: {collector.types(retried.id)}")
        wait_for(lambda: collector.kinds().count("worker-heartbeat") >= 2, PATIENCE,
                 message="no heartbeats every 0.5 s")
        assert worker.stop() == 0
        wait_for(lambda: "worker-offline" in collector.kinds(), PATIENCE,
                 message="no worker-offline")
    finally:
        collector.close()
    received, started, succeeded = collector.of(ok.id)
    assert received["name"] == "tests.integration.app_tasks.add"
    assert received["args"] == "(2, 3)" and received["kwargs"] == "{}"
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    assert received["clock"] < started["clock"] < succeeded["clock"]
    assert received["hostname"].startswith("events@")
    assert collector.of(bad.id)[-1]["exception"] == "ValueError('boom')"
    kinds = collector.kinds()
    assert kinds.index("worker-online") < kinds.index("task-received")
    assert kinds[-1] == "worker-offline", "the last event of a warm shutdown"


def _captured_envelope() -> dict[str, Any]:
    document = json.loads((CELERY_VECTORS / "redis" / "worker" / "events.json").read_text())
    return document["messages"][0]["decoded"]["envelope"]  # worker.online


@pytest.mark.redis
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_on_redis_events_are_published_on_kombus_channels(broker, tasks, start_worker):
    db = int(urlsplit(broker.url).path.lstrip("/") or 0)
    pubsub = broker.redis_db.pubsub()
    pubsub.psubscribe(f"/{db}.celeryev/*")  # what Flower subscribes to
    try:
        wait_for(lambda: pubsub.get_message(timeout=0.1), 5, message="no psubscribe reply")
        start_worker(*WORKER_ARGS, url=broker.url)
        assert tasks.add.delay(1, 1).get(timeout=PATIENCE) == 2
        seen: dict[str, dict[str, Any]] = {}

        def collect() -> bool:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                seen.setdefault(message["channel"].decode(), json.loads(message["data"]))
            return {f"/{db}.celeryev/worker.online", f"/{db}.celeryev/task.multi"} <= set(seen)

        wait_for(collect, PATIENCE, interval=0, message=lambda: f"channels: {sorted(seen)}")
    finally:
        pubsub.close()
    captured = _captured_envelope()
    ours = seen[f"/{db}.celeryev/worker.online"]
    assert list(ours) == list(captured)
    assert list(ours["properties"]) == list(captured["properties"])
    for key in ("delivery_mode", "priority", "body_encoding"):
        assert ours["properties"][key] == captured["properties"][key], key
    assert ours["properties"]["delivery_info"] == {"exchange": "celeryev",
                                                   "routing_key": "worker.online"}
    assert ours["content-type"] == "application/json" and ours["content-encoding"] == "utf-8"
    assert ours["headers"]["hostname"].startswith("events@")
    batch = json.loads(base64.b64decode(seen[f"/{db}.celeryev/task.multi"]["body"]))
    assert isinstance(batch, list) and batch[0]["type"] == "task-received"


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_on_rabbitmq_events_go_to_the_celeryev_topic_exchange(broker, tasks, start_worker):
    import amqp

    parts = urlsplit(broker.url)
    conn = amqp.Connection(f"{parts.hostname}:{parts.port}", userid="guest", password="guest",
                           virtual_host=unquote(parts.path[1:]))
    conn.connect()
    try:
        channel = conn.channel()
        # Celery's flags (wire spec 3.4): a declare with other flags would fail
        channel.exchange_declare("celeryev", "topic", durable=True, auto_delete=False)
        queue, _, _ = channel.queue_declare("", exclusive=True, auto_delete=True)
        channel.queue_bind(queue, "celeryev", "#")
        arrived: list[Any] = []
        channel.basic_consume(queue, no_ack=True, callback=arrived.append)
        start_worker(*WORKER_ARGS, url=broker.url, env=broker.worker_env())
        assert tasks.add.delay(1, 1).get(timeout=PATIENCE) == 2

        def both() -> bool:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
            keys = {m.delivery_info["routing_key"] for m in arrived}
            return {"worker.online", "task.multi"} <= keys

        wait_for(both, PATIENCE, interval=0, message="no worker.online and task.multi")
        channel.exchange_declare("celeryev", "topic", durable=True, auto_delete=False,
                                 passive=True)
    finally:
        conn.close()
    online = next(m for m in arrived if m.delivery_info["routing_key"] == "worker.online")
    assert online.delivery_info["exchange"] == "celeryev"
    assert online.properties["content_type"] == "application/json"
    assert online.properties["content_encoding"] == "utf-8"
    assert online.properties["delivery_mode"] == 1 and online.properties["priority"] == 0
    assert online.properties["application_headers"]["hostname"].startswith("events@")
    assert json.loads(online.body)["type"] == "worker-online"


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
def test_celeriac_events_dump_prints_one_line_per_event(broker, tasks, start_worker, tmp_path):
    dump = subprocess.Popen(
        [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "events", "--dump", "--limit",
         "4"], cwd=REPO, env={**_env(broker.url)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: dump.stderr is not None and "listening on" in dump.stderr.readline(),
                 PATIENCE, message="celeriac events did not start")
        start_worker("-P", "solo", "-E", "-n", "dump@%h", url=broker.url)
        result = tasks.add.delay(20, 22)
        assert result.get(timeout=PATIENCE) == 42
        out, err = dump.communicate(timeout=PATIENCE)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.communicate()
    assert dump.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert " dump@" in lines[0] and " worker-online " in lines[0]
    task_lines = [line for line in lines if f"[{result.id}]" in line]
    assert [line.split()[3] for line in task_lines] == TASK_SEQUENCE, out
    assert "tests.integration.app_tasks.add[" in task_lines[-1]
    assert "result=42 runtime=" in task_lines[-1]


def _env(url: str) -> dict[str, str]:
    import os

    return {**os.environ, "CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url,
            "PYTHONUNBUFFERED": "1"}


def test_celeriac_events_says_so_when_nothing_arrives(tmp_path):
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    errors = tmp_path / "events.err"
    with open(errors, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "events", "--dump",
             "--warn-after", "0.5"], cwd=REPO, env=_env(url), stdout=subprocess.DEVNULL,
            stderr=err)
    try:
        wait_for(lambda: "no event received in 0.5 s" in errors.read_text(), PATIENCE,
                 message=lambda: errors.read_text())
    finally:
        proc.terminate()
        proc.wait(10)
    [line] = [line for line in errors.read_text().splitlines() if "no event" in line]
    assert line.startswith("celeriac events: no event received in 0.5 s from sqlite:")
    assert "-E" in line and "heartbeat" in line
