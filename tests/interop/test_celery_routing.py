"""Issue 12's topic-exchange example with real Celery 5 and celeriac on one broker: each side's
publish reaches the other side's worker (on Redis through kombu's ``_kombu.binding.tasks`` set,
on RabbitMQ through a real topic exchange), and the task sees the same ``delivery_info``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from tests.conftest import REPO, WorkerProcess, rabbitmqctl
from tests.routing_example import use_issue_routing

pytestmark = [pytest.mark.interop, pytest.mark.integration]

TIMEOUT = 20.0
#: what a Celery 5.7 worker gives the example's task (observed; see docs/routing.md)
DELIVERY_INFO = {"exchange": "tasks", "routing_key": "feed.#", "priority": 0,
                 "redelivered": False}
#: on RabbitMQ ``priority`` is the message's own property: Celery 5.7's ``apply_async()`` of a
#: task without a priority sends none (its own worker then gives None; Redis's kombu gives 0),
#: its ``send_task()`` sends 0 (observed)
APPLY_ASYNC_DELIVERY_INFO = {"redis": DELIVERY_INFO, "amqp": {**DELIVERY_INFO, "priority": None}}


class _CeleryRoutingWorker(WorkerProcess):
    def __init__(self, env: dict[str, str], logfile: Path) -> None:  # noqa: D107
        self.logfile = logfile
        env = {**os.environ, **env, "INTEROP_IMPL": "celery", "PYTHONUNBUFFERED": "1"}
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.interop.routing_side", "worker",
             "-P", "solo", "-n", "celery-routing@%h", "-l", "INFO", "-Q", "feed_tasks",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)


@pytest.fixture
def start(tmp_path: Path, interop_env: dict[str, str], broker_url: str,
          interop_url: str) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def run(kind: str) -> WorkerProcess:
        logfile = tmp_path / f"{kind}.log"
        if kind == "celery":
            worker: WorkerProcess = _CeleryRoutingWorker(interop_env, logfile)
        else:
            worker = WorkerProcess("tests.interop.routing_side", broker_url, logfile,
                                   "-P", "solo", "-Q", "feed_tasks", "-n", "celeriac-routing@%h",
                                   env={**interop_env, "CELERIAC_RESULT_BACKEND": interop_url,
                                        "INTEROP_IMPL": "celeriac"})
        started.append(worker)
        worker.wait_ready(timeout=30)
        return worker

    yield run
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()
        if not worker._log.closed:
            worker._log.close()


def _celery_client(interop_env: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, **interop_env, "INTEROP_IMPL": "celery"}
    done = subprocess.run([sys.executable, "-m", "tests.interop.routing_side",
                           json.dumps(options)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _members(url: str) -> set[bytes]:
    with redis.Redis.from_url(url) as client:
        return set(client.smembers("_kombu.binding.tasks"))


def _vhost(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).path[1:])


def _amqp_rows(url: str, *args: str) -> list[list[str]]:
    out = rabbitmqctl(*args, "-p", _vhost(url), "--no-table-headers")
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def test_celery_client_reaches_a_celeriac_worker_through_the_topic_exchange(start, broker,
                                                                            broker_url,
                                                                            interop_env):
    worker = start("celeriac")
    if broker == "redis":
        # the celeriac worker declared its queue as kombu does: member with kombu's pattern
        assert _members(broker_url) == {b"feed.#\x06\x16^feed\\..*?$\x06\x16feed_tasks"}
    else:
        # ... as Celery does on RabbitMQ: a durable topic exchange, the queue bound by its key
        assert ["tasks", "topic", "true", "false"] in _amqp_rows(
            broker_url, "list_exchanges", "name", "type", "durable", "auto_delete")
        assert ["tasks", "feed_tasks", "feed.#"] in _amqp_rows(
            broker_url, "list_bindings", "source_name", "destination_name", "routing_key")
    out = _celery_client(interop_env, {})
    assert out == {"impl": "celeriac", "delivery_info": APPLY_ASYNC_DELIVERY_INFO[broker]}, \
        worker.log()
    # a key of the feed's, published by Celery: the binding celeriac declared routes it
    out = _celery_client(interop_env, {"routing_key": "feed.rss"})
    assert out["delivery_info"]["routing_key"] == "feed.rss", worker.log()


def test_celeriac_client_reaches_a_celery_worker_through_the_topic_exchange(start, broker,
                                                                            broker_url,
                                                                            interop_url,
                                                                            monkeypatch):
    worker = start("celery")
    monkeypatch.setenv("INTEROP_IMPL", "celeriac")
    from celeriac import Celery, Queue

    app = Celery("routing-client", broker=broker_url, backend=interop_url,
                 set_as_current=False, accept_content=["json"])
    use_issue_routing(app.conf, Queue)
    try:
        result = app.send_task("routing.ping", queue="feed_tasks")
        assert result.get(timeout=TIMEOUT) == {"impl": "celery",
                                               "delivery_info": DELIVERY_INFO}, worker.log()
        by_key = app.send_task("routing.ping", routing_key="feed.atom")
        assert by_key.get(timeout=TIMEOUT)["delivery_info"]["routing_key"] == "feed.atom"
        # nothing went astray: the 'default' queue (not consumed) is empty
        if broker == "redis":
            with redis.Redis.from_url(broker_url) as client:
                assert client.llen("default") == 0
        else:
            ready = {row[0]: row[1] for row in _amqp_rows(broker_url, "list_queues", "name",
                                                           "messages")}
            assert ready.get("default", "0") == "0", ready
            assert ready["feed_tasks"] == "0", ready
    finally:
        app.close()
