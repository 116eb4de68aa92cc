"""Remote control with real worker subprocesses on every broker (the ``broker`` fixture: SQLite,
Redis, RabbitMQ with results in SQLite): the ``celeriac inspect``, ``control`` and ``status``
commands, ``app.control`` from this process, several workers and the broker-specific parts
(RabbitMQ's mailbox queue, its ETA messages, its consumers cancelled at run time). Celery's own
client and CLI against celeriac workers are tests/interop/test_celery_remote_control.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from celeriac import states
from tests.conftest import REPO, rabbitmqctl
from tests.integration.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.control_tasks"


@pytest.fixture
def tasks(broker: Broker, task_module):
    return task_module("control_tasks", broker.url, results=broker.results)


@pytest.fixture
def start_worker(broker: Broker, start_worker):
    """``start_worker("-n", "a@%h")``: a ready thread-pool worker of control_tasks on the test's
    broker."""

    def start(*args: str):
        return start_worker("-P", "threads", "-c", "2", *args, app=APP, url=broker.url,
                            env=broker.worker_env())

    return start


def celeriac(broker: Broker, *args: str) -> subprocess.CompletedProcess:
    """``celeriac -A control_tasks ARGS`` on the test's broker."""
    env = {**os.environ, "CELERIAC_BROKER_URL": broker.url,
           "CELERIAC_RESULT_BACKEND": broker.backend}
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", "-A", APP, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def answered(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_cli_inspects_controls_and_lists_a_worker(broker: Broker, start_worker, tasks):
    worker = start_worker("-n", "cli-a@%h")
    out = answered(celeriac(broker, "inspect", "ping"))
    assert "->  cli-a@" in out and ": OK" in out and "pong" in out and "1 node online." in out
    node = out.split("->  ", 1)[1].split(":", 1)[0]
    # -d: the one answer expected ends the wait
    registered = json.loads(answered(celeriac(broker, "inspect", "registered", "-j", "-d", node)))
    assert registered == {node: [f"{APP}.add", f"{APP}.hold"]}
    assert "1 node online." in answered(celeriac(broker, "status", "-d", node))
    out = answered(celeriac(broker, "control", "add_consumer", "cli-extra", "-d", node))
    assert "add consumer cli-extra" in out
    assert tasks.add.apply_async((2, 3), queue="cli-extra").get(timeout=20) == 5
    stats = json.loads(answered(celeriac(broker, "inspect", "stats", "-j", "-d", node)))
    assert stats[node]["total"] == {f"{APP}.add": 1}
    assert "shutting down" in answered(celeriac(broker, "control", "shutdown", "-d", node))
    assert worker.proc.wait(20) == 0
    assert "Got shutdown from remote" in worker.log()


def test_no_worker_answering_is_one_line_and_exit_1(broker: Broker):
    proc = celeriac(broker, "inspect", "ping", "-t", "0.3")
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("celeriac inspect: No nodes replied within time constraint (")
    proc = celeriac(broker, "control", "shutdown", "-t", "0.3", "-d", "nobody@nowhere")
    assert proc.returncode == 1 and "none of nobody@nowhere answered" in proc.stderr


def test_two_workers_answer_and_a_destination_picks_one(broker: Broker, start_worker, tasks):
    start_worker("-n", "two-a@%h")
    start_worker("-n", "two-b@%h")
    replies = tasks.app.control.inspect(timeout=5, limit=2).ping()
    nodes = sorted(replies)
    assert [name.split("@")[0] for name in nodes] == ["two-a", "two-b"]
    assert tasks.app.control.inspect(timeout=5, destination=[nodes[1]]).ping() == {
        nodes[1]: {"ok": "pong"}}


def test_terminate_stops_a_running_task(broker: Broker, start_worker, tasks, tmp_path: Path):
    start_worker("-n", "term@%h")
    marker = tmp_path / "running"
    result = tasks.hold.delay(str(marker), 60)
    wait_for(marker.exists, 20, message="the task never started")
    active = tasks.app.control.inspect(timeout=5, limit=1).active()
    [(node, [info])] = active.items()
    assert info["id"] == result.id and info["args"] == [str(marker), 60]
    [reply] = tasks.app.control.terminate(result.id, reply=True, timeout=5, limit=1)
    assert reply == {node: {"ok": f"terminate: {result.id}"}}
    wait_for(lambda: result.state == states.REVOKED, 20, message="the task was not terminated")
    assert tasks.app.control.inspect(timeout=5, limit=1).revoked() == {node: [result.id]}


def _vhost(broker: Broker) -> str:
    return unquote(urlsplit(broker.url).path[1:])


#: RabbitMQ only: the other brokers have no mailbox queue, and hold no pushed deliveries
rabbitmq_only = pytest.mark.parametrize("broker", ["amqp"], indirect=True)


@rabbitmq_only
def test_rabbitmq_mailbox_is_celerys_queue(broker: Broker, start_worker):
    start_worker("-n", "box@%h")
    rows = rabbitmqctl("list_queues", "-p", _vhost(broker), "--no-table-headers", "name",
                       "durable", "auto_delete", "exclusive", "arguments").splitlines()
    [row] = [row.split("\t") for row in rows if row.startswith("box@")]
    assert row[0].endswith(".celery.pidbox") and row[1:4] == ["false", "true", "true"]
    assert '"x-expires",10000' in row[4] and '"x-message-ttl",300000' in row[4]


@rabbitmq_only
def test_rabbitmq_lists_eta_tasks_and_gives_back_a_cancelled_queue(broker: Broker, start_worker,
                                                                   tasks):
    start_worker("-n", "eta@%h", "-Q", "celery,eta-q")
    later = tasks.add.apply_async((1, 1), countdown=60, queue="eta-q")

    def scheduled() -> Any:
        return (tasks.app.control.inspect(timeout=5, limit=1).scheduled() or {}).popitem()[1]

    [entry] = wait_for(scheduled, 20, message="the ETA task was never listed")
    assert entry["request"]["id"] == later.id and entry["eta"].endswith("+00:00")
    [reply] = tasks.app.control.cancel_consumer("eta-q", reply=True, timeout=5, limit=1)
    assert list(reply.values()) == [{"ok": "no longer consuming from eta-q"}]
    # the held message went back to the queue at once, not at the connection's end
    wait_for(lambda: tasks.app.transport.qsize("eta-q") == 1, 20,
             message="the cancelled queue's message stayed with the worker")
    assert (tasks.app.control.inspect(timeout=5, limit=1).scheduled() or {}).popitem()[1] == []
    assert later.state == states.PENDING


def test_a_revoke_is_honoured_by_a_worker_started_after_it(broker: Broker, start_worker, tasks,
                                                          tmp_path: Path):
    first = start_worker("-n", "early@%h")
    task_id = f"later-{uuid.uuid4().hex[:8]}"
    [reply] = tasks.app.control.revoke(task_id, reply=True, timeout=5, limit=1)
    assert list(reply.values()) == [{"ok": f"tasks {task_id} flagged as revoked"}]
    first.stop()
    start_worker("-n", "late@%h")
    result = tasks.add.apply_async((1, 2), task_id=task_id)
    wait_for(lambda: result.state == states.REVOKED, 20, message="the later worker ran it")
