"""A Redis restart mid-run: the worker reconnects and resumes; no acks_late task is lost.

Runs a private redis-server (its own port and data directory, append-only file fsynced on every
write) so it can be killed and restarted without touching the shared server other tests use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_worker_faults import Ledger
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(up, 10, interval=0.05, message="private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path):
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing broker is a failure, not a skip)")
        pytest.skip(message)
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def test_worker_survives_a_redis_restart_without_losing_acks_late_tasks(private_redis, tmp_path,
                                                                       monkeypatch, start_worker):
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    vt = 3.0
    env = {"FAULT_VT": str(vt), "FAULT_ACKS_LATE": "1", "FAULT_NAME": "survivor"}
    for key, value in {"CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url, **env}.items():
        monkeypatch.setenv(key, value)
    from tests.integration import fault_tasks

    fault_tasks.app.close()
    ledger = Ledger(tmp_path / "ledger")
    total = 120
    try:
        results = [fault_tasks.late_work.delay(str(ledger.path), n, 0.02) for n in range(total)]
        worker = start_worker("-c", "2", app="tests.integration.fault_tasks", url=url, env=env)
        ledger.wait(lambda lg: len(lg.ended()) >= 20, 20, "20 tasks done")
        private_redis.kill()
        restarted_at = time.monotonic()
        time.sleep(1.0)  # the worker sees connection errors meanwhile
        private_redis.start()
        ledger.wait(lambda lg: len(lg.ended()) == total, vt + 25, f"all {total} tasks done")
        assert [r.get(timeout=20) for r in results] == list(range(total))
        assert worker.proc.poll() is None, "the worker must keep running through the outage"
        assert time.monotonic() - restarted_at < vt + 30
    finally:
        fault_tasks.app.close()
