"""Shared fixtures: throwaway SQLite URLs, apps, and real worker subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.waiting import wait_for

# The conformance suites live in the package (reusable for every transport/store): rewrite their
# asserts so failures show values. Must run before anything imports celeriac.testing.
pytest.register_assert_rewrite("celeriac.testing")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'celeriac.db'}"


class WorkerProcess:
    """A real ``celeriac worker`` subprocess (or another long-running command, such as
    ``beat``) in its own process group, with its log captured."""

    def __init__(self, app_spec: str, url: str, logfile: Path, *args: str,
                 env: dict[str, str] | None = None, command: str = "worker") -> None:
        self.logfile = logfile
        full_env = {**os.environ, "CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli.main", "-A", app_spec, command, "-l", "INFO",
             *args],
            cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if " ready." in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return False

        wait_for(ready, timeout, interval=0.05,
                 message=lambda: f"worker not ready after {timeout}s:\n{self.log()}")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        wait_for(lambda: text in self.log(), timeout, interval=0.05,
                 message=lambda: f"{text!r} not in worker log after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def start_worker(tmp_path: Path, sqlite_url: str) -> Iterator:
    """``start_worker("-P", "threads", ...)`` -> a ready WorkerProcess on the test's SQLite file."""
    workers: list[WorkerProcess] = []

    def start(*args: str, app: str = "tests.integration.app_tasks", url: str | None = None,
              ready: bool = True, env: dict[str, str] | None = None,
              command: str = "worker") -> WorkerProcess:
        logfile = tmp_path / f"{command}-{len(workers)}.log"
        w = WorkerProcess(app, url or sqlite_url, logfile, *args, env=env, command=command)
        workers.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in workers:
        if w.proc.poll() is None:
            w.kill()
        if not w._log.closed:
            w._log.close()


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _redis_up() -> bool:
    import socket

    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5):
            return True
    except OSError:
        return False


def require_redis() -> str:
    """Base URL of the real Redis on loopback. Missing server: skip locally, FAIL when CI=true."""
    if not _redis_up():
        message = f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing broker is a failure, not a skip)")
        pytest.skip(message)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}"


@pytest.fixture
def redis_server() -> str:
    return require_redis()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses (pass it as global_keyprefix)."""
    import uuid

    return f"celeriac-test-{uuid.uuid4().hex[:12]}:"


@contextlib.contextmanager
def app_on_redis_prefix(name: str, redis_server: str, redis_prefix: str,
                        db: int) -> Iterator[Any]:
    """An app whose broker keys in Redis database ``db`` all start with ``redis_prefix``
    (results in memory), and those keys deleted afterwards."""
    import redis

    from celeriac import Celery

    app = Celery(name, broker=f"{redis_server}/{db}", backend=f"memory://{name}",
                 set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": redis_prefix}
    try:
        yield app
    finally:
        app.close()
        raw = redis.Redis.from_url(f"{redis_server}/{db}")
        keys = list(raw.scan_iter(match=f"{redis_prefix}*", count=1000))
        if keys:
            raw.delete(*keys)
        raw.close()


@contextlib.contextmanager
def private_redis_db(redis_server: str, dbs: tuple[int, ...],
                     timeout: float = 120.0) -> Iterator[str]:
    """``redis://.../<db>`` for one of ``dbs`` that no other test holds, flushed before and after.

    A lock file per database keeps concurrent pytest runs on one machine apart (a FLUSHDB or a
    worker from one run would otherwise eat the other's messages).
    """
    import fcntl

    import redis

    deadline = time.monotonic() + timeout
    while True:
        for db in dbs:
            lock = open(f"/tmp/celeriac-test-redis-db{db}.lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            url = f"{redis_server}/{db}"
            try:
                with redis.Redis.from_url(url) as client:
                    client.flushdb()
                    yield url
                    client.flushdb()
            finally:
                lock.close()  # closing the file releases the lock
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Redis databases {dbs} stayed busy for {timeout} s")
        time.sleep(0.2)


# ---- RabbitMQ -----------------------------------------------------------------------------------
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672


def _rabbitmq_up() -> bool:
    import socket

    try:
        with socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=0.5):
            return True
    except OSError:
        return False


def require_rabbitmq() -> None:
    """RabbitMQ on loopback (guest/guest). Missing server: skip locally, FAIL when CI=true."""
    if not _rabbitmq_up():
        message = f"RabbitMQ is not reachable on {RABBITMQ_HOST}:{RABBITMQ_PORT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing broker is a failure, not a skip)")
        pytest.skip(message)


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl``; its output, or an AssertionError with what it said."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60)
    if done.returncode:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A virtual host of this test session's own (``celeriac-test-<uuid8>``), deleted at the
    end: parallel runs on one RabbitMQ never see each other's queues."""
    import uuid

    require_rabbitmq()
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


@pytest.fixture
def rabbitmq_url(rabbitmq_vhost: str) -> str:
    """``amqp://`` URL of the session's virtual host (use unique queue names in it)."""
    from urllib.parse import quote

    return (f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/"
            f"{quote(rabbitmq_vhost, safe='')}")


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """``amqp://`` URL of a RabbitMQ virtual host of one test's own, deleted afterwards (for
    worker tests on Celery's fixed queue names, such as ``celery``)."""
    import uuid

    require_rabbitmq()
    name = f"celeriac-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)
