"""Fixtures for live Celery <-> celeriac runs: a private Redis DB, queue names, both workers,
clients.

Every test that asks for ``broker_url`` (directly or through ``workers``, ``celery_client``,
``celeriac_client``) runs once per broker: ``redis`` (the broker is the test's Redis DB) and
``amqp`` (the broker is a RabbitMQ virtual host of the test's own). Results always go to the
test's Redis DB, in Celery's Redis result format, which both sides read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import REPO, WorkerProcess, private_redis_db, private_vhost, rabbitmqctl

#: Redis DBs reserved for these tests; each test holds one exclusively (file lock, so parallel
#: pytest runs on this machine never share a DB)
INTEROP_DBS = (12, 13, 14, 15)
CLIENT_TIMEOUT = 60.0


class CeleryWorkerProcess(WorkerProcess):
    """A real ``celery worker -P solo`` subprocess, in its own session, with its log captured."""

    def __init__(self, env: dict[str, str], logfile: Path, *args: str) -> None:  # noqa: D107
        self.logfile = logfile
        env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.interop.celery_side", "worker",
             "-P", "solo", "-n", "celery-interop@%h", "-l", "INFO", "--without-heartbeat",
             "--without-gossip", "--without-mingle", *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)


@pytest.fixture
def interop_url(redis_server: str) -> Iterator[str]:
    """``redis://.../<db>`` for a DB in 12-15 that this test alone uses, flushed before and
    after."""
    with private_redis_db(redis_server, INTEROP_DBS) as url:
        yield url


#: the brokers every broker-parametrised interop test runs on
BROKERS = ("redis", "amqp")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def broker_url(broker: str, interop_url: str) -> Iterator[str]:
    """The broker of the test: its Redis DB, or a RabbitMQ virtual host of its own (deleted
    afterwards), so Celery's fixed names (the ``celery`` queue, ``celery.pidbox``) are free."""
    if broker == "redis":
        yield interop_url
        return
    with private_vhost() as url:
        yield url
        # guard against a side silently falling back to another broker: the test's traffic
        # went through this vhost, so it holds the queues that were declared
        vhost = unquote(urlsplit(url).path[1:])
        names = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name").split()
        assert names, f"nothing was declared in RabbitMQ vhost {vhost!r}"


@pytest.fixture
def interop_env(broker_url: str, interop_url: str) -> dict[str, str]:
    """What the side modules read: the broker URL and the Redis result backend URL."""
    return {"INTEROP_BROKER_URL": broker_url, "INTEROP_REDIS_URL": interop_url}


@pytest.fixture
def queue_name() -> str:
    return f"interop-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers(tmp_path: Path, interop_env: dict[str, str],
            broker_url: str, interop_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers("celery" | "celeriac", queue)`` -> a ready worker consuming only ``queue``
    (``queue=None``: the default queue, ``celery``)."""
    started: list[WorkerProcess] = []

    def start(kind: str, queue: str | None) -> WorkerProcess:
        logfile = tmp_path / f"{kind}-worker-{len(started)}.log"
        queues = ("-Q", queue) if queue else ()
        if kind == "celery":
            worker: WorkerProcess = CeleryWorkerProcess(interop_env, logfile, *queues)
        else:
            worker = WorkerProcess("tests.interop.celeriac_side", broker_url, logfile,
                                   "-P", "threads", "-c", "2", *queues,
                                   "-n", "celeriac-interop@%h",
                                   env={**interop_env, "CELERIAC_RESULT_BACKEND": interop_url})
        started.append(worker)
        worker.wait_ready(timeout=30)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()
        if not worker._log.closed:
            worker._log.close()


@pytest.fixture
def celery_client(interop_env: dict[str, str]) -> Callable[[str, str], dict[str, Any]]:
    """Run one ``celery_side`` client scenario in a subprocess (real Celery) and return its JSON."""

    def run(scenario: str, queue: str) -> dict[str, Any]:
        env = {**os.environ, **interop_env}
        done = subprocess.run(
            [sys.executable, "-m", "tests.interop.celery_side", scenario, queue],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
        if done.returncode != 0:
            raise AssertionError(f"celery client {scenario!r} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def celeriac_client(broker_url: str, interop_url: str) -> Iterator[Any]:
    """A celeriac app on the test's broker and DB, used in-process as the client, closed
    afterwards."""
    from celeriac import Celery

    app = Celery("interop-client", broker=broker_url, backend=interop_url,
                 accept_content=["json"], set_as_current=False)
    yield app
    app.close()
