"""Worker startup as a user meets it: the banner at the default log level, a broker that is down
(retries with backoff, then connecting once it appears, or one line and exit 1), warnings for
settings that have no effect yet, and the client's errors for a dead broker or a result that never
comes.

Workers run as real ``celeriac worker`` subprocesses (without ``-l`` where the default log level
matters); "broker down" is a port nothing listens on, and "broker appears" a private
redis-server started on it later.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from celeriac import Celery
from celeriac.exceptions import OperationalError
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from tests.conftest import REPO
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.startup_tasks"
ADD = "tests.integration.startup_tasks.add"
PASSWORD = "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CliWorker:
    """``python -m celeriac.cli.main -A <app> worker ...`` with stdout and stderr in one file."""

    def __init__(self, logfile: Path, *args: str, cwd: Path = REPO,
                 env: dict[str, str] | None = None) -> None:
        self.logfile = logfile
        base = {k: v for k, v in os.environ.items()
                if k not in ("CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND")}
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        full_env = {**base, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **(env or {})}
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "worker", *args],
            cwd=cwd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode} before "
                                     f"{text!r}:\n{self.log()}")
            return False

        wait_for(seen, timeout, interval=0.05,
                 message=lambda: f"{text!r} not in worker output after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s:\n{self.log()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def cli_worker(tmp_path: Path) -> Iterator:
    workers: list[CliWorker] = []

    def start(*args: str, **kwargs) -> CliWorker:
        worker = CliWorker(tmp_path / f"worker-{len(workers)}.log", *args, **kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def _needs_redis_server() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing broker is a failure, not a skip)")
        pytest.skip(message)


@pytest.fixture
def later_redis(tmp_path: Path) -> Iterator:
    """``start(port)`` runs a private redis-server (password ``PASSWORD``) on that port."""
    _needs_redis_server()
    servers: list[subprocess.Popen] = []

    def start(port: int) -> None:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD, "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(proc)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(up, 10, interval=0.05, message="private redis-server did not start")

    yield start
    for proc in servers:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _redis_env(port: int) -> tuple[str, dict[str, str]]:
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    return url, {"CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url}


# ---- a broker that is down at startup -----------------------------------------------------------
def test_a_worker_retries_a_dead_broker_then_connects_when_it_appears(cli_worker, later_redis):
    port = _free_port()
    url, env = _redis_env(port)
    worker = cli_worker("-P", "threads", "-c", "2", "-l", "INFO", env=env)
    worker.wait_for_log("Trying again in 2.00 seconds... (1/100)")
    first = next(line for line in worker.log().splitlines() if "Cannot connect" in line)
    assert f"Cannot connect to redis://:**@127.0.0.1:{port}/0: " in first
    assert f"127.0.0.1:{port}" in first and "Connection refused" in first

    later_redis(port)
    worker.wait_for_log(" ready.")
    log = worker.log()
    assert f"Connected to redis://:**@127.0.0.1:{port}/0 after " in log
    assert PASSWORD not in log and "Traceback" not in log

    client = Celery("startup-client", broker=url, backend=url, set_as_current=False)
    try:
        assert client.send_task(ADD, (2, 3)).get(timeout=30) == 5
    finally:
        client.close()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0


def test_with_retry_on_startup_off_a_dead_broker_is_one_line_and_exit_1(cli_worker):
    port = _free_port()
    _, env = _redis_env(port)
    worker = cli_worker("-P", "threads", env={**env, "STARTUP_RETRY_ON_STARTUP": "0"})
    assert worker.wait_exit() == 1
    log = worker.log()
    assert "Traceback" not in log and PASSWORD not in log
    failures = [line for line in log.splitlines() if "Cannot connect" in line]
    assert len(failures) == 1, log
    assert f"redis://:**@127.0.0.1:{port}/0" in failures[0]
    assert "broker_connection_retry_on_startup is False" in failures[0]
    assert "Trying again" not in log


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_a_sqlite_path_that_cannot_be_opened_is_one_line_and_exit_1_at_once(cli_worker,
                                                                           tmp_path, where):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    (tmp_path / "adir").mkdir()
    # under a file: an OSError that is not a connection error; a directory: SQLite's "unable to
    # open database file". Neither goes away by waiting: no retry (the default is to retry for
    # ever), one line, exit 1.
    path = afile / "x.db" if where == "under-a-file" else tmp_path / "adir"
    url = f"sqlite:///{path}"
    worker = cli_worker("-P", "threads",
                        env={"CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url})
    assert worker.wait_exit() == 1
    log = worker.log()
    assert "Traceback" not in log and "Trying again" not in log
    [failure] = [line for line in log.splitlines() if "Cannot use the broker" in line]
    assert str(path) in failure and "Not retrying: waiting will not fix this" in failure


def test_once_max_retries_are_spent_the_worker_exits_1_without_a_traceback(cli_worker):
    port = _free_port()
    _, env = _redis_env(port)
    worker = cli_worker("-P", "threads", env={**env, "STARTUP_MAX_RETRIES": "1"})
    assert worker.wait_exit() == 1
    log = worker.log()
    assert "Traceback" not in log
    assert "Trying again in 2.00 seconds... (1/1)" in log
    [last] = [line for line in log.splitlines() if "Gave up" in line]
    assert "Gave up after 1 retry (broker_connection_max_retries=1)" in last


def test_a_warm_shutdown_while_waiting_for_the_broker_exits_at_once(cli_worker):
    port = _free_port()
    _, env = _redis_env(port)
    worker = cli_worker("-P", "prefork", "-c", "1", env=env)
    worker.wait_for_log("(1/100)")
    worker.proc.send_signal(signal.SIGTERM)
    # 100 retries with pauses up to 30 s would take most of an hour: exiting at all shows the
    # wait was cut short
    assert worker.wait_exit(timeout=20) == 0
    log = worker.log()
    assert "Warm shutdown while waiting for the broker" in log
    assert "Traceback" not in log


# ---- the banner and the settings that do nothing yet --------------------------------------------
def test_banner_and_not_built_warnings_at_the_default_log_level(cli_worker, tmp_path):
    """No ``-l``: the CLI's default level is WARNING, and the banner still shows, with the
    embedded SQLite file as an absolute path; each setting without effect is named once."""
    worker = cli_worker("-P", "prefork", "-c", "1", cwd=tmp_path,
                        env={"STARTUP_NOT_BUILT": "1"})
    worker.wait_for_log(f"sqlite:///celeriac.db ({tmp_path / 'celeriac.db'})")
    client = Celery("startup-client", broker=f"sqlite:///{tmp_path / 'celeriac.db'}",
                    set_as_current=False)
    try:  # the worker got through startup and runs tasks
        assert client.send_task(ADD, (2, 3)).get(timeout=30) == 5
    finally:
        client.close()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0

    log = worker.log()
    banner = log[:log.index(" . " + ADD) + len(ADD) + 3]
    assert f"broker:   sqlite:///celeriac.db ({tmp_path / 'celeriac.db'})" in banner
    assert f"results:  sqlite:///celeriac.db ({tmp_path / 'celeriac.db'})" in banner
    assert "pool:     prefork (concurrency 1)" in banner and "queues:   celery" in banner
    assert "app:      tests.integration.startup_tasks" in banner
    assert log.count("beat_sync_every=10 is set but celeriac's beat stores each run as it "
                     "fires: there is nothing to sync") == 1
    assert "beat_schedule" not in log, "a beat_schedule is acted on (by a beat): not named"
    assert "rate_limit" not in log, "a task's rate limit is enforced: nothing to warn about"
    assert " ready." not in log  # the log itself stayed at WARNING


def test_an_extension_that_fails_to_start_ends_the_worker_with_one_line(cli_worker, tmp_path):
    """A feature refusing at on_worker_start (a store that cannot serve it) stops the pool's
    processes and the consumer's threads: the process exits 1 instead of hanging."""
    worker = cli_worker("-P", "prefork", "-c", "2", cwd=tmp_path,
                        env={"STARTUP_FAILING_EXTENSION": "1"})
    assert worker.wait_exit() == 1
    log = worker.log()
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == (
        "celeriac worker: this extension refuses to start (a test of the start-up path)")


def test_dash_e_starts_without_a_not_built_warning(cli_worker, tmp_path):
    worker = cli_worker("-P", "threads", "-E", "-l", "INFO", cwd=tmp_path)
    worker.wait_for_log(" ready.")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    assert "--task-events" not in worker.log() and "not built" not in worker.log()


# ---- the client ---------------------------------------------------------------------------------
def test_delay_against_a_dead_broker_raises_operational_error_with_the_masked_url():
    import redis

    port = _free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    app = Celery("dead-broker", broker=url, backend=url, set_as_current=False,
                 task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                            "interval_step": 0.1})

    @app.task(name="dead.add")
    def add(x, y):
        return x + y

    try:
        with pytest.raises(OperationalError) as info:
            add.delay(1, 2)
    finally:
        app.close()
    message = str(info.value)
    assert f"redis://:**@127.0.0.1:{port}/0" in message and PASSWORD not in message
    assert "gave up after 2 retries" in message and "Connection refused" in message
    assert isinstance(info.value.__cause__, redis.ConnectionError)


def test_a_sqlite_get_that_times_out_names_the_file_it_waited_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = Celery("nobody-home", broker="sqlite:///relative.db", set_as_current=False)
    try:
        result = app.send_task("nobody.runs.this")
        with pytest.raises(CeleriacTimeoutError) as info:
            result.get(timeout=0.3)
    finally:
        app.close()
    assert str(info.value) == (
        f"the operation timed out after 0.3s waiting for task {result.id} (still PENDING) in "
        f"the SQLite result store {tmp_path / 'relative.db'}: is a worker running on that same "
        "file?")


# ---- Celery's worker flags, for real ------------------------------------------------------------
def test_pidfile_holds_the_pid_refuses_a_second_worker_and_is_removed(cli_worker, tmp_path):
    pidfile = tmp_path / "w.pid"
    first = cli_worker("-P", "threads", "--pidfile", str(pidfile), cwd=tmp_path)
    first.wait_for_log(" . " + ADD)  # the banner: past start-up
    assert pidfile.read_text().strip() == str(first.proc.pid)

    second = cli_worker("-P", "threads", "--pidfile", str(pidfile), cwd=tmp_path)
    assert second.wait_exit() == 1
    lines = second.log().strip().splitlines()
    assert lines == [f"celeriac worker: pidfile {pidfile} holds pid {first.proc.pid}, a running "
                     f"process: is a worker already running? Stop it, or remove the file if "
                     f"that process is not a worker"], second.log()
    assert pidfile.read_text().strip() == str(first.proc.pid)  # the second left it alone

    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert not pidfile.exists()


def test_a_stale_pidfile_is_replaced(cli_worker, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(f"{gone.pid}\n")
    worker = cli_worker("-P", "threads", "--pidfile", str(pidfile), cwd=tmp_path)
    worker.wait_for_log(" . " + ADD)
    assert pidfile.read_text().strip() == str(worker.proc.pid)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0


def test_purge_empties_the_queues_before_consuming(cli_worker, tmp_path):
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    client = Celery("startup-client", broker=url, set_as_current=False)
    try:
        purged = [client.send_task(ADD, (1, 1)) for _ in range(3)]
        worker = cli_worker("-P", "threads", "--purge", cwd=tmp_path)
        worker.wait_for_log("Purged 3 message(s) from 1 queue(s): celery (3)")
        assert client.send_task(ADD, (2, 3)).get(timeout=30) == 5
        # consumed in order: had the three been left, they would have run before this one
        assert [r.state for r in purged] == ["PENDING"] * 3
    finally:
        client.close()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0


def test_time_limit_and_not_built_flags_reach_the_worker(cli_worker, tmp_path):
    worker = cli_worker("-P", "threads", "--time-limit", "30", "--max-tasks-per-child", "10",
                        "--autoscale", "3,1", "-B", "--without-gossip", "--without-mingle",
                        cwd=tmp_path)
    # --autoscale reaches the worker: its banner shows the pool's bounds, as Celery's does
    worker.wait_for_log("pool:     threads (concurrency {min=1, max=3})")
    worker.wait_for_log("worker_max_tasks_per_child=10 is set")  # logged once it runs
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    log = worker.log()
    assert log.count("worker_max_tasks_per_child=10 is set but only the prefork pool replaces "
                     "its processes: the threads pool ignores it") == 1
    assert "-B (--beat)" not in log, "-B runs a beat: nothing to warn about"
    assert "gossip" not in log and "mingle" not in log


def test_the_cli_worker_tunes_the_collector_and_an_embedded_worker_does_not(cli_worker, tmp_path):
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    client = Celery("startup-client", broker=url, set_as_current=False)
    try:
        worker = cli_worker("-P", "solo", cwd=tmp_path)
        name = "tests.integration.startup_tasks.gc_threshold"
        assert client.send_task(name).get(timeout=30) == 10_000  # WORKER_GC_THRESHOLD
    finally:
        client.close()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    embedded = make_test_app("gc_untouched")
    try:
        before = gc.get_threshold()
        with start_worker(embedded, pool="solo", perform_ping_check=False):
            pass
        assert gc.get_threshold() == before, "a worker a program starts leaves its collector"
    finally:
        dispose_test_app(embedded)

