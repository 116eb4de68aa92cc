"""pytest plugin for Celery's integration suite run by ``tests/celery_suite/run.py``.

Passed with ``-p tests.celery_suite.plugin`` to a pytest running inside the extracted suite. It
is imported before Celery's ``t/integration/conftest.py``, which is what lets it swap the worker:

- ``CELERY_SUITE_WORKER=celeriac``: ``celery.contrib.pytest.celery_session_worker`` is replaced,
  before the conftest imports it, by a fixture that starts ``celeriac -A
  tests.celery_suite.worker_app worker`` as a subprocess (the ``celery`` shim first on its
  PYTHONPATH), waits for its ready line, and stops it at the end of the session (SIGTERM, then
  SIGKILL to its process group). ``CELERY_SUITE_WORKER=celery`` keeps Celery's own fixture (a
  Celery worker in a thread of the test process, as Celery runs its suite).
- Either way: the suite's Redis side channel goes to the run's database
  (``redis_side_channel.py``), the test modules' ``TIMEOUT`` (the ``get(timeout=TIMEOUT)`` and
  ``await_redis_*`` waits of most tests) is lowered to ``CELERY_SUITE_GET_TIMEOUT`` seconds, so a
  result that never comes fails its test quickly, and each test's call has a hard limit of
  ``CELERY_SUITE_TEST_TIMEOUT`` seconds (``RanOver``, below). pytest-timeout is not used (the
  runner passes ``-p no:timeout``): its one exception is swallowed by a failing subtest, and the
  test then goes on for minutes.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import celery.contrib.pytest as celery_pytest
import pytest

from tests.celery_suite.redis_side_channel import redirect_side_channel

REPO = Path(__file__).resolve().parents[2]
SHIM = Path(__file__).resolve().parent / "celery_shim"

WORKER_KIND = os.environ.get("CELERY_SUITE_WORKER", "celery")
TEST_TIMEOUT = float(os.environ.get("CELERY_SUITE_TEST_TIMEOUT", "300"))
GET_TIMEOUT = float(os.environ.get("CELERY_SUITE_GET_TIMEOUT", "20"))
LOG_DIR = Path(os.environ.get("CELERY_SUITE_LOGDIR", "."))
#: tests listed as expected to fail on this worker (one id a line) get a shorter limit: the run
#: only needs to see that they still fail
EXPECTED_FILE = os.environ.get("CELERY_SUITE_EXPECTED_FILE")
EXPECTED_TIMEOUT = float(os.environ.get("CELERY_SUITE_EXPECTED_TIMEOUT", "60"))
READY_TIMEOUT = 60.0


class CeleriacWorker:
    """A ``celeriac worker`` subprocess serving the suite's tasks, in its own process group."""

    def __init__(self, suite_dir: Path, logfile: Path) -> None:
        self.logfile = logfile
        pool = os.environ.get("CELERY_SUITE_POOL", "prefork")
        concurrency = os.environ.get("CELERY_SUITE_CONCURRENCY", "1")
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               # the shim first: `celery` means celeriac in this process only
               "PYTHONPATH": os.pathsep.join([str(SHIM), str(REPO), str(suite_dir)])}
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli.main", "-A", "tests.celery_suite.worker_app",
             "worker", "-P", pool, "-c", concurrency, "-l", "INFO",
             "-n", f"celeriac-suite-{os.getpid()}@%h"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"celeriac worker exited with {self.proc.returncode}; "
                                   f"log: {self.logfile}\n{self.log()[-4000:]}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"celeriac worker not ready after {timeout:.0f} s; log: {self.logfile}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the whole group (pool children too)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session", name="celery_session_worker")
def celeriac_session_worker(request: pytest.FixtureRequest, celery_session_app: Any,
                            celery_includes: Any, celery_class_tasks: Any) -> Iterator[Any]:
    """Session worker: a celeriac worker subprocess instead of Celery's worker thread.

    The client app still imports the task modules and registers the class tasks, as Celery's
    fixture does, so the tests' ``task.delay()`` calls know the tasks.
    """
    for module in celery_includes:
        celery_session_app.loader.import_task_module(module)
    for class_task in celery_class_tasks:
        celery_session_app.register_task(class_task)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    worker = CeleriacWorker(Path(str(request.config.rootpath)), LOG_DIR / "celeriac-worker.log")
    # for the runner, which stops the worker's process group if this pytest is killed
    (LOG_DIR / "celeriac-worker.pgid").write_text(str(worker.proc.pid))
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


if WORKER_KIND == "celeriac":
    # Celery's conftest does `from celery.contrib.pytest import celery_session_worker`; it is
    # imported after this plugin, so it picks this fixture up under the same name.
    celery_pytest.celery_session_worker = celeriac_session_worker  # type: ignore[attr-defined]
elif WORKER_KIND != "celery":
    raise pytest.UsageError(f"CELERY_SUITE_WORKER must be 'celeriac' or 'celery', "
                            f"not {WORKER_KIND!r}")


def _expected_ids() -> frozenset[str]:
    if not EXPECTED_FILE:
        return frozenset()
    return frozenset(line.strip() for line in Path(EXPECTED_FILE).read_text().splitlines()
                     if line.strip())


_EXPECTED = _expected_ids()


def _listed(nodeid: str) -> bool:
    return nodeid in _EXPECTED or nodeid.split("[", 1)[0] in _EXPECTED


class RanOver(BaseException):
    """A test ran past ``CELERY_SUITE_TEST_TIMEOUT``. A BaseException, so the suite's ``except
    Exception`` blocks do not take it for a failure they expected."""


#: where the suite's own code lives (the frames a RanOver may be raised in)
SUITE_CODE = f"{os.sep}t{os.sep}integration{os.sep}"


def _in_suite_code(frame: Any) -> bool:
    """Whether the innermost frames, out to the first of the suite's own, are not pytest's: a
    RanOver raised inside pytest's subtest bookkeeping would break the report, not the test."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if SUITE_CODE in filename:
            return True
        if f"{os.sep}_pytest{os.sep}" in filename or f"{os.sep}pluggy{os.sep}" in filename:
            return False
        frame = frame.f_back
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Each test's call gets ``TEST_TIMEOUT`` seconds (SIGALRM, main thread). Past that, a
    ``RanOver`` is raised in the test's code, and again every second: a test made of subtests
    records the first as one failed subtest and goes on, so each later wait is cut short too."""

    limit = EXPECTED_TIMEOUT if _listed(item.nodeid) else TEST_TIMEOUT

    def ran_over(signum: int, frame: Any) -> None:
        if not _in_suite_code(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            return
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        raise RanOver(f"{item.nodeid} ran over {limit:.0f} s "
                      f"(the per-test limit of tests/celery_suite)")

    previous = signal.signal(signal.SIGALRM, ran_over)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def lower_timeout(module: Any, seconds: float) -> None:
    """The module's ``TIMEOUT`` down to ``seconds``, in the constant (read by each
    ``get(timeout=TIMEOUT)``) and in the defaults of its helpers (``await_redis_echo(...,
    timeout=TIMEOUT)`` took the value when it was defined)."""
    old = module.TIMEOUT
    if old <= seconds:
        return
    module.TIMEOUT = seconds
    for name, value in vars(module).items():
        if (inspect.isfunction(value) and value.__module__ == module.__name__
                and not name.startswith("test_") and value.__defaults__):
            value.__defaults__ = tuple(seconds if default == old else default
                                       for default in value.__defaults__)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    redirect_side_channel()
    for name, module in list(sys.modules.items()):
        if name.startswith("t.integration.test_") and hasattr(module, "TIMEOUT"):
            lower_timeout(module, GET_TIMEOUT)
