"""Fixtures for live Celery <-> celeriac runs: a private Redis DB, queue names, both workers,
clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import REPO, WorkerProcess, private_redis_db

#: Redis DBs reserved for these tests; each test holds one exclusively (file lock, so parallel
#: pytest runs on this machine never share a DB)
INTEROP_DBS = (12, 13, 14, 15)
CLIENT_TIMEOUT = 60.0


class CeleryWorkerProcess(WorkerProcess):
    """A real ``celery worker -P solo`` subprocess, in its own session, with its log captured."""

    def __init__(self, url: str, logfile: Path, *args: str) -> None:  # noqa: D107
        self.logfile = logfile
        env = {**os.environ, "INTEROP_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
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


@pytest.fixture
def queue_name() -> str:
    return f"interop-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers(tmp_path: Path, interop_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers("celery" | "celeriac", queue)`` -> a ready worker consuming only ``queue``."""
    started: list[WorkerProcess] = []

    def start(kind: str, queue: str) -> WorkerProcess:
        logfile = tmp_path / f"{kind}-worker-{len(started)}.log"
        if kind == "celery":
            worker: WorkerProcess = CeleryWorkerProcess(interop_url, logfile, "-Q", queue)
        else:
            worker = WorkerProcess("tests.interop.celeriac_side", interop_url, logfile,
                                   "-P", "threads", "-c", "2", "-Q", queue,
                                   "-n", "celeriac-interop@%h",
                                   env={"INTEROP_REDIS_URL": interop_url})
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
def celery_client(interop_url: str) -> Callable[[str, str], dict[str, Any]]:
    """Run one ``celery_side`` client scenario in a subprocess (real Celery) and return its JSON."""

    def run(scenario: str, queue: str) -> dict[str, Any]:
        env = {**os.environ, "INTEROP_REDIS_URL": interop_url}
        done = subprocess.run(
            [sys.executable, "-m", "tests.interop.celery_side", scenario, queue],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
        if done.returncode != 0:
            raise AssertionError(f"celery client {scenario!r} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def celeriac_client(interop_url: str) -> Iterator[Any]:
    """A celeriac app on the test's DB, used in-process as the client, closed afterwards."""
    from celeriac import Celery

    app = Celery("interop-client", broker=interop_url, backend=interop_url,
                 accept_content=["json"], set_as_current=False)
    yield app
    app.close()
