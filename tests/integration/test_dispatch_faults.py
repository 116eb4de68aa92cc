"""Dispatch with real worker subprocesses: no deadlock in a small prefork pool, a SIGKILL of the
whole worker mid-dispatch, a warm shutdown mid-dispatch, and subtasks run by a Celery 5 worker.

What ran is counted with an independent ledger (``dispatch_fault_tasks`` appends ``begin``,
``done`` and ``handled`` lines to a file this test owns), never through the system under test
alone. Broker-parametrised by the ``broker`` fixture (tests/integration/conftest.py): SQLite,
Redis and RabbitMQ (results, and so the dispatch's inbox and checkpoint, in a SQLite file there).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celeriac import states
from tests.conftest import REPO, WorkerProcess
from tests.integration.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.dispatch_fault_tasks"


class Ledger:
    """The lines the tasks appended: ``begin <id>``, ``done <root> <n> <worker> <pid>``,
    ``handled <root> <n> <task id>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [line.split() for line in self.path.read_text().splitlines() if line.strip()]

    def begins(self, main_id: str | None = None) -> list[str]:
        return [f[1] for f in self.lines() if f[0] == "begin" and main_id in (None, f[1])]

    def handled(self, root_id: str) -> list[int]:
        """Indexes the receiver was given, in the order it was given them (repeats included)."""
        return [int(f[2]) for f in self.lines() if f[0] == "handled" and f[1] == root_id]

    def done(self, root_id: str) -> list[int]:
        """Indexes whose subtask ran to its end, once per run."""
        return [int(f[2]) for f in self.lines() if f[0] == "done" and f[1] == root_id]

    def workers_of(self, root_id: str) -> set[str]:
        return {f[3] for f in self.lines() if f[0] == "done" and f[1] == root_id}

    def wait(self, predicate: Callable[[Ledger], bool], timeout: float, what: str) -> None:
        wait_for(lambda: predicate(self), timeout, interval=0.02,
                 message=lambda: f"ledger: {what} not seen; it holds:\n"
                                 + (self.path.read_text() if self.path.exists() else "(nothing)"))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def tasks(broker: Broker, task_module):
    """The dispatch tasks' app on the test's broker (the client side: it only sends)."""
    return task_module("dispatch_fault_tasks", broker.url, results=broker.results)


@pytest.fixture
def spawn(broker: Broker, start_worker, ledger: Ledger) -> Callable[..., WorkerProcess]:
    """``spawn("-c", "2", vt=2, batch=10, window=20)``: a ready worker on the dispatch tasks."""

    def start(*args: str, vt: float = 60, name: str = "w", batch: int | None = None,
              window: int | None = None) -> WorkerProcess:
        env = {"DISPATCH_LEDGER": str(ledger.path), "DISPATCH_NAME": name,
               "DISPATCH_VT": str(vt), "DISPATCH_BATCH": str(batch or ""),
               "DISPATCH_WINDOW": str(window or "")}
        return start_worker(*args, app=APP, url=broker.url, env=broker.worker_env(env))

    return start


def exit_within(worker: WorkerProcess, timeout: float) -> int:
    try:
        return worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running after {timeout}s:\n{worker.log()}") from None


def repeats(indexes: list[int]) -> int:
    """How many times in all an index occurs beyond its first."""
    return sum(count - 1 for count in collections.Counter(indexes).values())


# ---- 1: no deadlock --------------------------------------------------------------------------

def test_three_dispatches_finish_on_a_two_process_prefork_pool(tasks, spawn, ledger):
    """Main tasks wait outside the pool: if each held a prefork slot, two of them would take
    both slots of ``-c 2`` and wait forever for subtasks that have nowhere to run."""
    count = 20
    mains = [tasks.fan_out.delay(count, 0.05) for _ in range(3)]  # queued before the worker
    spawn("-c", "2")

    assert [r.get(timeout=30) for r in mains] == [count] * 3
    assert all(r.state == states.SUCCESS for r in mains)
    for r in mains:
        assert sorted(ledger.handled(r.id)) == list(range(count)), r.id  # each exactly once
        assert sorted(ledger.done(r.id)) == list(range(count)), r.id
        assert ledger.begins(r.id) == [r.id]
    # the premise: all three were in flight at once (each began before any of them had had
    # its last outcome handled), more than the pool has processes
    lines = [(f[0], f[1]) for f in ledger.lines()]
    last_begin = max(lines.index(("begin", r.id)) for r in mains)
    first_finish = min(max(i for i, line in enumerate(lines) if line == ("handled", r.id))
                       for r in mains)
    assert last_begin < first_finish, ledger.path.read_text()


# ---- 2: crash and resume ---------------------------------------------------------------------

def test_sigkill_mid_dispatch_resumes_and_handles_every_subtask(tasks, spawn, ledger):
    """The worker running a main task dies with its whole process group; the main task comes
    back (acks_late), resumes from its checkpoint and handles every subtask at least once.

    The bounds asserted follow from the design (dispatch/run.py): a checkpoint (what was
    published, the inbox cursor, the unfinished indexes) is saved after each published batch and
    after handled reads, and at most ``window`` subtasks are unfinished at any time.

    - Outcomes handled twice: only those handled after the last checkpoint, which are all among
      that checkpoint's unfinished subtasks (publishing saves one at once), so at most
      ``window``.
    - Subtasks run twice: the batch published after the last checkpoint is published again (at
      most ``batch``), and a subtask unfinished at the kill may be delivered again (its worker
      died before the ack): at most ``window``. So at most ``batch + window`` extra runs.
    """
    vt, count, batch, window = 2.0, 200, 10, 20
    main = tasks.fan_out.delay(count, 0.02)
    first = spawn("-c", "2", vt=vt, batch=batch, window=window, name="first")
    ledger.wait(lambda lg: len(lg.handled(main.id)) >= 60, 30, "60 outcomes handled")
    first.kill()  # SIGKILL to the whole process group: the main process and its pool children
    assert len(set(ledger.handled(main.id))) < count, "all handled before the kill: no test"

    second = spawn("-c", "2", vt=vt, batch=batch, window=window, name="second")
    assert main.get(timeout=30) == count, second.log()
    assert main.state == states.SUCCESS
    assert ledger.begins(main.id) == [main.id, main.id], "the main task did not run again"
    assert "resumes" in second.log()

    handled = ledger.handled(main.id)
    assert set(handled) == set(range(count)), sorted(set(range(count)) - set(handled))
    assert repeats(handled) <= window, collections.Counter(handled).most_common(5)
    done = ledger.done(main.id)
    assert set(done) >= set(range(count))
    assert repeats(done) <= batch + window, collections.Counter(done).most_common(5)
    # the premise: the kill cut the dispatch in two, each worker ran part of it
    assert ledger.workers_of(main.id) == {"first", "second"}


# ---- 3: warm shutdown ------------------------------------------------------------------------

def test_warm_shutdown_mid_dispatch_requeues_the_main_task(tasks, spawn, ledger):
    """SIGTERM: the main task saves a checkpoint and goes back to the queue (Reject requeue)
    instead of holding the shutdown up, and another worker resumes it.

    Holding it up could never end: a worker in a warm shutdown takes no new messages, so the
    subtasks still queued would never run. The lease is 60 s, so the second worker finishing
    well within that shows the main task was given back, not left to expire."""
    count = 60
    main = tasks.fan_out.delay(count, 0.1)
    first = spawn("-c", "2", batch=10, window=20, name="first")
    ledger.wait(lambda lg: len(lg.handled(main.id)) >= 10, 30, "10 outcomes handled")
    first.proc.send_signal(signal.SIGTERM)
    assert exit_within(first, 15) == 0
    handled_then = set(ledger.handled(main.id))
    assert len(handled_then) < count, "the dispatch ended before the shutdown: no test"
    log = first.log()
    assert "Warm shutdown" in log
    assert "goes back to the queue" in log, log
    assert main.state != states.FAILURE

    second = spawn("-c", "2", batch=10, window=20, name="second")
    assert main.get(timeout=30) == count, second.log()
    assert main.state == states.SUCCESS
    assert "resumes" in second.log()
    assert ledger.begins(main.id) == [main.id, main.id]
    handled = ledger.handled(main.id)
    assert set(handled) == set(range(count))
    # a warm shutdown saves a checkpoint as it steps aside: nothing is handled twice
    assert repeats(handled) == 0, collections.Counter(handled).most_common(5)


# ---- 4: mixed fleet --------------------------------------------------------------------------

class CeleryWorker(WorkerProcess):
    """A real ``celery worker -P solo`` consuming ``queue``, with ``step`` under its name."""

    def __init__(self, url: str, logfile: Path, queue: str, env: dict[str, str]) -> None:
        self.logfile = logfile
        full_env = {**os.environ, "CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url,
                    "PYTHONUNBUFFERED": "1", **env}
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", f"{APP}:celery_app", "worker", "-P", "solo",
             "-Q", queue, "-n", "celery-dispatch@%h", "-l", "INFO", "--without-heartbeat",
             "--without-gossip", "--without-mingle"],
            cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)


@pytest.mark.interop
@pytest.mark.redis
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_subtasks_run_by_a_celery_worker_are_handled(tasks, broker, start_worker, ledger,
                                                    tmp_path):
    """A Celery worker reports nothing to the inbox: with ``auto_ignore=False`` it stores each
    subtask's result, and the main task looks those up once it has heard nothing for
    ``dispatcher_poll_timeout`` (1 s here)."""
    count = 10
    env = {"DISPATCH_LEDGER": str(ledger.path), "DISPATCH_POLL_TIMEOUT": "1"}
    celery = CeleryWorker(broker.url, tmp_path / "celery-worker.log",
                          tasks.CELERY_QUEUE, {**env, "DISPATCH_NAME": "celery"})
    try:
        celery.wait_ready(timeout=30)
        worker = start_worker("-c", "2", app=APP, url=broker.url,
                              env={**env, "DISPATCH_NAME": "celeriac"})
        main = tasks.fan_out_to_celery.delay(count)
        assert main.get(timeout=30) == count, worker.log() + celery.log()
        assert main.state == states.SUCCESS
        assert sorted(ledger.handled(main.id)) == list(range(count))  # each exactly once
        assert sorted(ledger.done(main.id)) == list(range(count))
        assert ledger.workers_of(main.id) == {"celery"}
    finally:
        celery.kill()
        celery._log.close()
