"""Worker fault tests: real worker subprocesses are signalled, killed and restarted mid-work.

Executions are counted with an independent ledger (``fault_tasks`` appends ``start``/``end``
lines with pid, worker name and attempt to a file this test owns), never through the system
under test alone. Parametrised over brokers by the ``broker`` fixture (tests/integration/
conftest.py): the embedded SQLite file, a real Redis and a real RabbitMQ (skipped when none runs
locally, a failure under CI=true). ``vt`` is the lease of SQLite and Redis; on RabbitMQ the
channel is the lease, so a dead worker's unacked messages come back when its connection drops.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from celeriac import states
from celeriac.exceptions import WorkerLostError
from tests.integration.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.fault_tasks"


@pytest.fixture
def tasks(broker: Broker, task_module):
    """The fault tasks' app on the test's broker; workers must be started after this is set up."""
    return task_module("fault_tasks", broker.url, results=broker.results)


@pytest.fixture
def spawn(broker: Broker, start_worker) -> Callable:
    """``spawn("-c", "2", vt=3, name="second")``: a ready worker on the fault tasks module.

    ``name`` is what its tasks write in the ledger's worker column.
    """

    def start(*args: str, vt: float, name: str = "w", acks_late: bool = False,
              reject_on_lost: bool = False, signal_log: Path | None = None):
        env = {"FAULT_VT": str(vt), "FAULT_ACKS_LATE": "1" if acks_late else "0",
               "FAULT_REJECT_ON_LOST": "1" if reject_on_lost else "0",
               "FAULT_SIGNAL_LOG": str(signal_log or ""), "FAULT_NAME": name}
        return start_worker(*args, app=APP, url=broker.url, env=broker.worker_env(env))

    return start


class Ledger:
    """Reads the lines the tasks appended: ``phase n pid worker attempt``."""

    Entry = collections.namedtuple("Entry", "phase n pid worker attempt")

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def entries(self) -> list[Ledger.Entry]:
        if not self.path.exists():
            return []
        rows = [line.split() for line in self.path.read_text().splitlines() if line.strip()]
        return [self.Entry(p, int(n), int(pid), w, int(a)) for p, n, pid, w, a in rows]

    def of(self, phase: str, n: int | None = None) -> list[Ledger.Entry]:
        return [e for e in self.entries() if e.phase == phase and (n is None or e.n == n)]

    def ended(self) -> set[int]:
        return {e.n for e in self.of("end")}

    def wait(self, predicate: Callable[[Ledger], bool], timeout: float, what: str) -> float:
        """Poll until ``predicate(self)``; returns the monotonic time it became true."""
        wait_for(lambda: predicate(self), timeout, interval=0.02,
                 message=lambda: (f"ledger: {what} not seen within {timeout}s:\n"
                                  f"{self.path.read_text()}" if self.path.exists()
                                  else f"ledger: {what}; ledger is empty"))
        return time.monotonic()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


def exit_within(worker, timeout: float) -> int:
    try:
        return worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running after {timeout}s:\n{worker.log()}") from None


# ---- 1, 2: warm shutdown ----------------------------------------------------------------------

# On RabbitMQ with early acks the running task's ack frees a slot of the prefetch window, so the
# broker pushes a 5th message into the transport's own buffer, which no fetch hands to the
# worker: the warm shutdown gives that one back too (AMQPTransport.stop_consuming), or it would
# stay unacked until the running task ends and the connection closes.
@pytest.mark.parametrize("slow_task", [
    pytest.param("work", id="early-ack"),
    pytest.param("late_work", id="acks-late")])
def test_warm_shutdown_gives_prefetched_messages_back_at_once(tasks, spawn, ledger, tmp_path,
                                                             slow_task):
    signal_log = tmp_path / "signals.txt"
    # Slow enough that a worker started after the signal can finish the others before it ends.
    # With acks_late the running task's lease is still renewed during the shutdown.
    slow = getattr(tasks, slow_task).delay(str(ledger), 0, 4)
    quick = [tasks.work.delay(str(ledger), n) for n in range(1, 11)]
    # A 60 s lease: anything that runs elsewhere within seconds was given back, not expired.
    first = spawn("-c", "1", "--prefetch-multiplier", "4", vt=60, name="first",
                  signal_log=signal_log)
    ledger.wait(lambda lg: lg.of("start", 0), 15, "slow task started")
    # A window of 1 x 4: the slow task and the next three quick ones; the rest stay queued.
    prefetched = quick[:3]
    for r in prefetched:
        first.wait_for_log(f"[{r.id}] received", timeout=5)
    first.proc.send_signal(signal.SIGTERM)
    second = spawn("-c", "2", vt=60, name="second")

    assert [r.get(timeout=20) for r in quick] == list(range(1, 11))
    assert exit_within(first, 20) == 0
    assert slow.get(timeout=5) == 0 and slow.state == states.SUCCESS

    entries = ledger.entries()
    order = [(e.phase, e.n) for e in entries]
    assert order.index(("end", 0)) > max(order.index(("end", n)) for n in range(1, 11)), (
        "the prefetched messages waited for the running task instead of going back at once")
    for n in range(1, 11):
        runs = ledger.of("start", n)
        assert len(runs) == 1 and runs[0].worker == "second", (n, runs)
    assert [e.worker for e in ledger.of("start", 0)] == ["first"]
    assert [e.worker for e in ledger.of("end", 0)] == ["first"]

    log = first.log()
    assert "Warm shutdown" in log
    assert "Returned 3 unstarted message(s) to the broker" in log
    assert not any(f"[{r.id}] received" in log for r in quick[3:])
    fired = [line.split() for line in signal_log.read_text().splitlines()]
    pid = str(first.proc.pid)
    assert ["worker_shutting_down", "Warm", "SIGTERM", pid] in fired
    assert ["worker_shutdown", "-", "-", pid] in fired
    assert second.proc.poll() is None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, from the kernel (not the system under test)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
@pytest.mark.parametrize("task_name", ["work", "late_work"], ids=["early-ack", "acks-late"])
def test_sigterm_to_the_process_group_is_a_warm_shutdown(tasks, spawn, ledger, task_name):
    worker = spawn("-c", "1", vt=3)
    result = getattr(tasks, task_name).delay(str(ledger), 7, 3)
    ledger.wait(lambda lg: lg.of("start", 7), 15, "task started")
    os.killpg(worker.proc.pid, signal.SIGTERM)  # the main process and its pool children
    # While it waits for the task, the main process only renews a lease now and then.
    worker.wait_for_log("Warm shutdown", timeout=5)
    before = _cpu_seconds(worker.proc.pid)
    time.sleep(1)
    busy = _cpu_seconds(worker.proc.pid) - before
    assert not ledger.of("end", 7), "the task ended before the measurement did"
    assert busy < 0.3, f"the waiting worker used {busy:.2f}s of CPU in 1s (a busy loop?)"

    assert exit_within(worker, 20) == 0
    assert result.get(timeout=5) == 7  # not WorkerLostError: the child finished its task
    assert result.state == states.SUCCESS
    assert len(ledger.of("start", 7)) == 1 and len(ledger.of("end", 7)) == 1
    assert "Warm shutdown" in worker.log()
    assert "Cold shutdown" not in worker.log()


# ---- 3: cold shutdown -------------------------------------------------------------------------

def _cold_shutdown(worker, how: str) -> float:
    """Send the cold-shutdown signal(s); returns the monotonic time of the decisive one."""
    if how == "term-term":
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for_log("Warm shutdown", timeout=5)
        worker.proc.send_signal(signal.SIGTERM)
    else:
        worker.proc.send_signal(signal.SIGQUIT)
    return time.monotonic()


@pytest.mark.parametrize("how", ["term-term", "quit"])
def test_cold_shutdown_does_not_wait_for_running_tasks(tasks, spawn, ledger, how):
    worker = spawn("-c", "1", vt=60)
    tasks.work.delay(str(ledger), 3, 30)
    ledger.wait(lambda lg: lg.of("start", 3), 15, "long task started")
    sent = _cold_shutdown(worker, how)

    code = exit_within(worker, 10)
    took = time.monotonic() - sent
    assert took < 4, f"cold shutdown took {took:.1f}s:\n{worker.log()}"
    log = worker.log()
    assert "Cold shutdown" in log
    assert "Traceback" not in log, log
    assert code == 1, f"exit code {code}: Celery ends a cold shutdown with EX_FAILURE (1)"
    assert not ledger.of("end", 3), "the task was waited for"


def test_cold_shutdown_gives_an_acks_late_task_back(tasks, spawn, ledger):
    """worker.stop() promises that acks_late tasks cut off by a cold shutdown come back."""
    worker = spawn("-c", "1", vt=2)
    result = tasks.late_work.delay(str(ledger), 4, 30)
    ledger.wait(lambda lg: lg.of("start", 4), 15, "long task started")
    sent = _cold_shutdown(worker, "quit")
    exit_within(worker, 10)
    spawn("-c", "1", vt=2)
    # Its second run is as long as the first, so it is enough to see it start again.
    ledger.wait(lambda lg: len(lg.of("start", 4)) == 2, 2 + 10, "the task running again")
    assert time.monotonic() - sent < 2 + 10
    assert result.state != states.FAILURE, "the cut-off task was recorded as failed"


# ---- 4: crash recovery with acks_late ---------------------------------------------------------

def test_sigkill_mid_stream_with_acks_late_loses_nothing(tasks, spawn, ledger):
    vt, total, concurrency, multiplier = 3.0, 200, 2, 4
    results = [tasks.late_work.delay(str(ledger), n, 0.02) for n in range(total)]
    first = spawn("-c", str(concurrency), "--prefetch-multiplier", str(multiplier), vt=vt)
    ledger.wait(lambda lg: len(lg.ended()) >= 30, 20, "30 tasks done")
    first.kill()  # SIGKILL to the whole process group
    killed = time.monotonic()
    assert len(ledger.ended()) < total, "everything finished before the kill: nothing tested"

    spawn("-c", str(concurrency), "--prefetch-multiplier", str(multiplier), vt=vt)
    done = ledger.wait(lambda lg: len(lg.ended()) == total, vt + 5, f"all {total} tasks done")
    assert done - killed <= vt + 5
    assert [r.get(timeout=5) for r in results] == list(range(total))
    assert all(r.state == states.SUCCESS for r in results)

    starts = collections.Counter(e.n for e in ledger.of("start"))
    assert set(starts) == set(range(total))
    duplicates = sum(count - 1 for count in starts.values())
    # Only what was in flight at the kill may run twice: never more than the prefetch window.
    assert duplicates <= concurrency * multiplier, starts.most_common(12)


# ---- 5: a pool child killed mid-task ----------------------------------------------------------

@pytest.mark.parametrize("acks_late, reject_on_lost", [(False, False), (True, False), (True, True)],
                         ids=["early-ack", "acks-late", "reject-on-worker-lost"])
def test_pool_child_killed_mid_task(tasks, spawn, ledger, acks_late, reject_on_lost):
    # A 60 s lease: a re-run within seconds is a requeue, not a lease expiry.
    worker = spawn("-c", "1", vt=60, acks_late=acks_late, reject_on_lost=reject_on_lost)
    victim = tasks.work.delay(str(ledger), 1, 30, first_only=True)
    ledger.wait(lambda lg: lg.of("start", 1), 15, "victim started")
    [run] = ledger.of("start", 1)
    assert run.pid != worker.proc.pid  # a pool child, not the worker's main process
    os.kill(run.pid, signal.SIGKILL)

    if reject_on_lost:
        assert _value(victim, ledger, 1) == 1
        first, second = ledger.of("start", 1)
        assert (first.attempt, second.attempt) == (1, 2)
        assert second.pid != run.pid  # run by the child that replaced the victim
        assert [e.attempt for e in ledger.of("end", 1)] == [2]
    else:
        exc = victim.get(timeout=15, propagate=False)
        assert isinstance(exc, WorkerLostError), repr(exc)
        assert victim.state == states.FAILURE
    assert _value(tasks.work.delay(str(ledger), 2), ledger, 2) == 2  # the worker goes on
    if not reject_on_lost:
        assert len(ledger.of("start", 1)) == 1 and not ledger.of("end", 1), "victim ran again"
    assert worker.proc.poll() is None
    assert "died running task" in worker.log()


def _value(result, ledger: Ledger, n: int, timeout: float = 15) -> object:
    """``result.get()``, saying so when the task ran (per the ledger) but its result never came."""
    try:
        return result.get(timeout=timeout)
    except Exception as exc:
        if ledger.of("end", n):
            raise AssertionError(f"task {n} ran to its end but no result was stored within "
                                 f"{timeout}s ({exc!r}): the child running it is stuck") from exc
        raise


def test_replacement_children_keep_working(tasks, spawn, ledger):
    """A child forked to replace a dead one, while the worker's threads use the broker, must work.

    Each fork races the main process's broker and result-store traffic, so it takes many rounds.
    """
    rounds = 20
    worker = spawn("-c", "1", vt=60)
    for round_ in range(rounds):
        victim = 1000 + round_
        tasks.work.delay(str(ledger), victim, 30)
        ledger.wait(lambda lg, v=victim: lg.of("start", v), 15, f"victim {victim} started")
        quick = [tasks.work.delay(str(ledger), 10 * round_ + k) for k in range(3)]
        os.kill(ledger.of("start", victim)[0].pid, signal.SIGKILL)  # replaced as they arrive
        for k, r in enumerate(quick):
            assert _value(r, ledger, 10 * round_ + k, timeout=10) == 10 * round_ + k, round_
    assert worker.log().count("died running task") == rounds


# ---- 6: a long healthy task outlives its lease many times -------------------------------------

def test_long_healthy_task_is_never_redelivered(tasks, spawn, ledger):
    # Two workers the whole time: whichever does not take the task stays idle, ready to steal it.
    one = spawn("-c", "1", vt=1, name="one")
    two = spawn("-c", "1", vt=1, name="two")
    result = tasks.work.delay(str(ledger), 5, 3.5)
    assert result.get(timeout=20) == 5 and result.state == states.SUCCESS
    assert one.proc.poll() is None and two.proc.poll() is None
    # No fixed wait for a redelivery racing the ack: a warm shutdown runs every task a worker has
    # started to its end and gives back every one it holds unstarted, so once both have exited
    # the ledger shows every run there will be, and the broker any copy that did not run.
    for w in (one, two):
        code = w.stop()
        assert code == 0, (code, ledger.entries(), w.log())
    assert tasks.app.transport.qsize("celery") == 0, "a copy of the task is still on the broker"
    runs = ledger.of("start", 5)
    assert len(runs) == 1, runs
    assert len(ledger.of("end", 5)) == 1
    assert sum(f"[{result.id}] received" in w.log() for w in (one, two)) == 1


# ---- 7: early ack: only the running task can be lost ------------------------------------------

def test_early_ack_crash_loses_only_the_running_task(tasks, spawn, ledger):
    vt = 2.0
    running = tasks.work.delay(str(ledger), 0, 30)
    waiting = [tasks.work.delay(str(ledger), n) for n in range(1, 6)]
    first = spawn("-c", "1", "--prefetch-multiplier", "4", vt=vt, name="first")
    ledger.wait(lambda lg: lg.of("start", 0), 15, "long task started")
    for r in waiting[:3]:  # a window of 1 x 4: three wait in the worker, two stay queued
        first.wait_for_log(f"[{r.id}] received", timeout=5)
    first.kill()
    killed = time.monotonic()

    # a free slot for the long task, if it came back
    second = spawn("-c", "2", vt=vt, name="second")
    done = ledger.wait(lambda lg: lg.ended() >= set(range(1, 6)), vt + 10, "prefetched tasks run")
    assert done - killed <= vt + 10
    assert [r.get(timeout=5) for r in waiting] == list(range(1, 6))
    for n in range(1, 6):
        assert [e.worker for e in ledger.of("start", n)] == ["second"]
    # No fixed wait for the lost task to come back: once the second worker has shut down warm
    # (what it started runs to its end, what it holds unstarted goes back), the ledger holds
    # every run it made, and the broker every message it did not run.
    code = second.stop()
    assert code == 0, (code, ledger.entries(), second.log())
    # The running task was acked when it started, so the crash lost exactly that one.
    assert [e.worker for e in ledger.of("start", 0)] == ["first"]
    assert not ledger.of("end", 0)
    assert running.state == states.PENDING
    assert tasks.app.transport.qsize("celery") == 0
