"""Jobs sent ahead to a busy prefork child: it starts them as soon as its task ends, sending
their early ack first; a child that ends before starting one reports it NOT_STARTED, a
terminate waits for it to start, and only jobs whose child sends the ack go ahead.

Real forked children; the runner and the broker's ack are small stand-ins that write what
happens, in order, to a file the test reads. ``AHEAD_WITHIN`` is raised so that whether a job
goes ahead does not depend on how fast the machine is.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.message import Message
from celeriac.worker.outcome import Ending, Outcome
from celeriac.worker.pools import processes
from celeriac.worker.pools.processes import ProcessPool


class _Broker:
    def __init__(self, log: Path) -> None:
        self.log = log

    def ack(self, deliveries: list[Any]) -> list[bool]:
        _write(self.log, f"ack {deliveries[0]}")
        return [True]


class _App:
    def __init__(self, log: Path) -> None:
        self.transport = _Broker(log)
        self.conf: dict[str, Any] = {}


class _Runner:
    """Logs each task's start and end; a task whose id starts with "hold" runs until its
    release file exists."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.app = _App(log)

    def limits(self, message: Any) -> tuple[None, None]:
        return None, None

    def __call__(self, message: Any, delivery_info: dict) -> Outcome:
        task_id = message.headers["id"]
        _write(self.log, f"start {task_id}")
        if task_id.startswith("hold"):
            release = self.log.parent / f"release-{task_id}"
            for _ in range(6000):  # at most a minute, so a broken test cannot hang forever
                if release.exists():
                    break
                time.sleep(0.01)
        _write(self.log, f"end {task_id}")
        return Outcome(task_id, "SUCCESS", retval_repr=str(os.getpid()))


def _write(log: Path, line: str) -> None:
    with open(log, "a") as fh:
        fh.write(line + "\n")


def _message(task_id: str) -> Message:
    return Message(headers={"id": task_id, "task": "t"}, properties={}, body=b"")


class _Harness:
    def __init__(self, tmp_path: Path, children: int = 2) -> None:
        self.log = tmp_path / "log"
        self.log.touch()
        self.done: dict[int, Outcome] = {}
        self.arrived = threading.Condition()
        self.pool = ProcessPool(_Runner(self.log), children, self.on_done)
        self.pool.start()

    def on_done(self, job_id: int, outcome: Outcome) -> None:
        with self.arrived:
            self.done[job_id] = outcome
            self.arrived.notify_all()

    def wait_for(self, *job_ids: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: all(j in self.done for j in job_ids),
                                         timeout=30), (job_ids, self.done)

    def wait_log(self, line: str) -> None:
        for _ in range(3000):
            if line in self.lines():
                return
            time.sleep(0.01)
        raise AssertionError(f"{line!r} never logged: {self.lines()}")

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def release(self, task_id: str) -> None:
        (self.log.parent / f"release-{task_id}").touch()

    def learn(self) -> None:
        """One quick task of the kind, so the pool knows how long such a task runs."""
        assert self.pool.submit(100, _message("quick"), {})
        self.wait_for(100)


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(processes, "AHEAD_WITHIN", 3600.0)
    h = _Harness(tmp_path)
    yield h
    for name in ("hold-1", "hold-2", "hold-3"):
        h.release(name)
    h.pool.stop()


def _busy(h: _Harness) -> None:
    """Both children run a held task."""
    h.learn()
    assert h.pool.submit(1, _message("hold-1"), {})
    assert h.pool.submit(2, _message("hold-2"), {})
    h.wait_log("start hold-1")
    h.wait_log("start hold-2")
    assert h.pool.free_slots() == 0


def test_a_job_ahead_starts_after_the_task_before_it_with_its_ack_first(harness):
    h = harness
    _busy(h)
    assert h.pool.ahead_slots() == 2
    assert h.pool.submit(3, _message("ahead-3"), {}, ack_first="d3")
    assert h.pool.ahead_slots() == 1
    assert "start ahead-3" not in h.lines()  # it waits for the task before it
    h.release("hold-1")
    h.release("hold-2")
    h.wait_for(1, 2, 3)
    lines = h.lines()
    assert lines.index("ack d3") < lines.index("start ahead-3")
    # it ran in the child that ran the task before it, once that task had ended
    assert h.done[3].retval_repr == h.done[1].retval_repr
    assert lines.index("end hold-1") < lines.index("ack d3")
    assert all(h.done[j].ending is Ending.SUCCEEDED for j in (1, 2, 3))


def test_only_a_job_whose_child_sends_the_ack_goes_ahead(harness):
    """An acks_late job (no ``ack_first``) waits for an idle child, in the parent."""
    h = harness
    _busy(h)
    assert not h.pool.submit(3, _message("late-3"), {})
    h.release("hold-1")
    h.release("hold-2")
    h.wait_for(1, 2)
    assert "start late-3" not in h.lines()


def test_no_job_goes_ahead_of_a_task_that_runs_long(harness, monkeypatch):
    h = harness
    _busy(h)
    monkeypatch.setattr(processes, "AHEAD_WITHIN", 0.0)
    assert h.pool.ahead_slots() == 0
    assert not h.pool.submit(3, _message("ahead-3"), {}, ack_first="d3")


def test_a_task_of_an_unknown_kind_takes_no_job_ahead(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "AHEAD_WITHIN", 3600.0)
    h = _Harness(tmp_path, children=1)
    try:
        assert h.pool.submit(1, _message("hold-1"), {})
        h.wait_log("start hold-1")
        assert h.pool.ahead_slots() == 0  # how long a "t" runs is not known yet
        assert not h.pool.submit(2, _message("ahead-2"), {}, ack_first="d2")
    finally:
        h.release("hold-1")
        h.pool.stop()


def test_a_child_that_dies_before_its_job_ahead_reports_it_not_started(harness):
    h = harness
    _busy(h)
    assert h.pool.submit(3, _message("ahead-3"), {}, ack_first="d3")
    pid = int(next(c.process.pid for c in h.pool._children
                   if c.ahead is not None and c.ahead[0][0] == 3))
    os.kill(pid, signal.SIGKILL)
    h.wait_for(3)
    lost = {job: h.done[job] for job in (1, 2) if job in h.done}
    assert [o.ending for o in lost.values()] == [Ending.WORKER_LOST]
    assert h.done[3].ending is Ending.NOT_STARTED
    assert h.done[3].reason != processes.LEASE_LOST  # the consumer finds out about the ack
    assert "ack d3" not in h.lines() and "start ahead-3" not in h.lines()


def test_a_terminate_for_a_job_ahead_stops_it_once_it_starts(harness):
    h = harness
    _busy(h)
    assert h.pool.submit(3, _message("hold-3"), {}, ack_first="d3")
    assert h.pool.terminate(3, signal.SIGTERM)
    h.release("hold-1")
    h.wait_for(1, 3)
    assert h.done[1].ending is Ending.SUCCEEDED  # the task before it ran to its end
    assert h.done[3].ending is Ending.TERMINATED
    assert "end hold-3" not in h.lines()


def test_a_job_and_the_job_ahead_of_it_sent_from_two_threads_arrive_whole_and_in_order(
        tmp_path, monkeypatch):
    """The dispatch, fetch and collector threads all submit: a job to an idle child and a job
    ahead to the same child can be sent at once. Each reaches the pipe whole, in the order the
    pool assigned them (a large first job, interleaved, made the child die unpickling it)."""
    monkeypatch.setattr(processes, "AHEAD_WITHIN", 3600.0)
    h = _Harness(tmp_path, children=1)
    try:
        h.learn()
        big = b"x" * 40000  # more than one write into the pipe
        for i in range(30):
            first, second = 1000 + 2 * i, 1001 + 2 * i
            start = threading.Barrier(2)
            sent: dict[str, bool] = {}

            def send_first(i: int = i, first: int = first, start: Any = start,
                           sent: Any = sent) -> None:
                start.wait()
                sent["first"] = h.pool.submit(first, Message(
                    big, headers={"id": f"A{i}", "task": "t"}, properties={}), {})

            def send_second(i: int = i, second: int = second, start: Any = start,
                            sent: Any = sent) -> None:
                start.wait()
                for _ in range(200):  # as soon as the first is assigned
                    if h.pool._children[0].job is not None:
                        break
                    time.sleep(0)
                sent["second"] = h.pool.submit(second, _message(f"B{i}"), {},
                                               ack_first=f"d{i}")

            threads = [threading.Thread(target=send_first), threading.Thread(target=send_second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sent["first"]
            h.wait_for(first, *([second] if sent["second"] else []))
            assert h.done[first].ending is Ending.SUCCEEDED, h.done[first]
            lines = h.lines()
            if sent["second"]:
                assert h.done[second].ending is Ending.SUCCEEDED, h.done[second]
                assert lines.index(f"start A{i}") < lines.index(f"start B{i}")
    finally:
        h.pool.stop()


def test_a_terminate_of_a_job_that_just_ended_spares_the_job_ahead_now_running(
        tmp_path, monkeypatch):
    """terminate(A) as A ends, with B already started from the pipe of the same child: the
    child stops only the job the terminate names, so B runs to its end."""
    monkeypatch.setattr(processes, "AHEAD_WITHIN", 3600.0)
    h = _Harness(tmp_path, children=1)
    try:
        h.learn()
        assert h.pool.submit(1, _message("hold-1"), {})
        h.wait_log("start hold-1")
        assert h.pool.submit(2, _message("hold-2"), {}, ack_first="d2")  # ahead: one child
        h.release("hold-1")
        h.wait_log("start hold-2")  # A ended, B runs; the parent may not have read A's end
        h.pool.terminate(1, signal.SIGTERM)
        h.release("hold-2")
        h.wait_for(1, 2)
        assert h.done[1].ending is Ending.SUCCEEDED
        assert h.done[2].ending is Ending.SUCCEEDED, h.done[2]
    finally:
        h.release("hold-2")
        h.pool.stop()


def test_a_child_about_to_retire_takes_no_job_ahead(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "AHEAD_WITHIN", 3600.0)
    h = _Harness(tmp_path, children=1)
    h.pool.child_limits = (2, None)  # worker_max_tasks_per_child=2
    try:
        h.learn()  # its first task
        assert h.pool.submit(1, _message("hold-1"), {})  # its second and last
        h.wait_log("start hold-1")
        assert h.pool.ahead_slots() == 0
        assert not h.pool.submit(2, _message("ahead-2"), {}, ack_first="d2")
    finally:
        h.release("hold-1")
        h.pool.stop()


# ---- a child's result and the next job's early ack, together (a broker sharing the store's
# connection: SQLite on one file here) ---------------------------------------------------------
@pytest.fixture
def sqlite_app(tmp_path: Path):
    from celeriac import Celery

    url = f"sqlite:///{tmp_path / 'q.db'}"
    app = Celery("ahead-sqlite", broker=url, backend=url, set_as_current=False)

    @app.task(name="ahead.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def _leased(app: Any, n: int) -> list[Any]:
    results = [app.tasks["ahead.add"].delay(i, i) for i in range(n)]
    deliveries = app.transport.fetch(["celery"], n, 5.0)
    assert len(deliveries) == n
    assert results[0].state == "PENDING"  # the store's table exists, as a worker's start makes it
    assert app.transport.ack(deliveries[:1]) == [True]  # the first one's early ack: it runs
    return [results, deliveries]


def _child_after(app, one, sent):
    """A pool child's side (``Runner``, settling together) that just ran ``one``, with ``sent``
    written by the parent into its pipe: (the runner, what it settles with, the outcome, both
    pipe ends)."""
    from multiprocessing import Pipe

    from celeriac.worker.worker import Runner

    runner = Runner(app, "ahead@test")
    together = processes._settles_together(runner)
    outcome = runner(one.message, one.delivery_info)
    parent_end, child_end = Pipe()
    parent_end.send_bytes(processes.pickle.dumps(sent))
    return runner, together, outcome, (parent_end, child_end)


def _store_with_next(together, child_end, outcome, retiring):
    """``processes._store_with_next`` on the child's end of the pipe, watched as a child does."""
    return processes._store_with_next(together, child_end, processes._pipe_poller(child_end),
                                      outcome, retiring)


def test_a_result_and_the_next_jobs_ack_are_stored_together(sqlite_app):
    app = sqlite_app
    (first, _), (one, two) = _leased(app, 2)
    runner, together, outcome, (_, child_end) = _child_after(
        app, one, (2, two.message, two.delivery_info, two, False))
    assert together is not None and runner.collect_writes
    assert outcome.pending  # the result waits to go out with the next ack
    job, unconfirmed = _store_with_next(together, child_end, outcome, None)
    assert unconfirmed is None and job[0] == 2
    assert first.get(timeout=5) == 0  # stored
    assert app.transport.qsize("celery") == 0  # the second message's early ack went out too


def test_an_unconfirmed_ack_read_ahead_is_reported_after_the_stored_result(sqlite_app):
    app = sqlite_app
    (first, _), (one, two) = _leased(app, 2)
    assert app.transport.ack([two]) == [True]  # settled elsewhere: its lease is gone
    _, together, outcome, (_, child_end) = _child_after(
        app, one, (2, two.message, two.delivery_info, two, False))
    job, unconfirmed = _store_with_next(together, child_end, outcome, None)
    assert job is None
    assert unconfirmed[0] == 2 and unconfirmed[1].ending is Ending.NOT_STARTED
    assert unconfirmed[1].reason == processes.LEASE_LOST
    assert first.get(timeout=5) == 0  # the result went out all the same


@pytest.mark.parametrize("revoked", [False, True])
def test_the_job_read_ahead_is_looked_up_for_a_revoke_with_its_ack(sqlite_app, revoked):
    """Its revoke is read with its early ack (and the result before it): found revoked, it is
    acked and reported REVOKED, never started; else it starts."""
    from celeriac.worker.revokes import REVOKED_KEY

    app = sqlite_app
    (first, second), (one, two) = _leased(app, 2)
    if revoked:
        app.backend.set_value(REVOKED_KEY + second.id, {"terminate": False, "signal": 15})
    _, together, outcome, (_, child_end) = _child_after(
        app, one, (2, two.message, two.delivery_info, two, True))
    job, unconfirmed = _store_with_next(together, child_end, outcome, None)
    if revoked:
        assert job is None
        assert unconfirmed[0] == 2 and unconfirmed[1].ending is Ending.REVOKED
    else:
        assert unconfirmed is None and job[0] == 2
    assert first.get(timeout=5) == 0
    assert app.transport.qsize("celery") == 0  # acked either way


def test_a_retiring_child_reads_nothing_ahead(sqlite_app):
    app = sqlite_app
    (first, _), (one, two) = _leased(app, 2)
    _, together, outcome, (_, child_end) = _child_after(
        app, one, (2, two.message, two.delivery_info, two, False))
    job, unconfirmed = _store_with_next(together, child_end, outcome, "retiring")
    assert job is None and unconfirmed is None
    assert first.get(timeout=5) == 0
    assert app.transport.qsize("celery") == 1  # the job ahead stays unacked, for the parent
    assert child_end.poll(0)  # and unread


def test_told_to_leave_while_running_it_stores_the_result_then_leaves(sqlite_app):
    app = sqlite_app
    (first, _), (one, _two) = _leased(app, 2)
    _, together, outcome, (_, child_end) = _child_after(
        app, one, None)  # the pool's "leave" (warm shutdown)
    job, unconfirmed = _store_with_next(together, child_end, outcome, None)
    assert job is processes._LEAVE and unconfirmed is None
    assert first.get(timeout=5) == 0
