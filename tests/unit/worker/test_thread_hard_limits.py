"""Hard time limits in threads: the guard gives a thread up only while the task's own code runs,
nothing the given-up thread does afterwards is recorded, and the thread and solo pools report
the task at once and keep their capacity. In-process, on a private ``memory://`` app."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

import pytest

from celeriac import Celery, states
from celeriac.protocol import serialization
from celeriac.protocol.message import Message
from celeriac.worker.limits import (
    HardTimeLimitStop,
    ThreadGuard,
    task_code_ended,
    task_code_started,
)
from celeriac.worker.outcome import Ending, Outcome
from celeriac.worker.pools.threads import SoloPool, ThreadPool
from celeriac.worker.request import run_message
from tests.unit.worker.support import task_message
from tests.waiting import wait_for


def _spin_until(stop: Callable[[], bool], seconds: float = 10.0) -> None:
    """Python code running (no blocking call), until ``stop()`` or ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop():
        pass


def _guarded(body: Callable[[], Any], hard: float, events: list[str]) -> Any:
    """Run ``body`` as a pool thread runs a task: a guard with ``hard``, the task's code marked."""
    guard = ThreadGuard(None, hard, lambda: events.append("reported"))
    try:
        task_code_started()
        try:
            return body()
        finally:
            task_code_ended()
    finally:
        guard.finish()


def test_a_python_loop_is_stopped_and_reported_once() -> None:
    events: list[str] = []
    with pytest.raises(HardTimeLimitStop):
        _guarded(lambda: _spin_until(lambda: False), 0.1, events)
    assert events == ["reported"]


def test_except_exception_in_the_task_does_not_swallow_the_stop() -> None:
    events: list[str] = []

    def stubborn() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sum(range(100))
            except Exception:  # noqa: BLE001 - what the test is about
                events.append("swallowed")

    with pytest.raises(HardTimeLimitStop):
        _guarded(stubborn, 0.1, events)
    assert events == ["reported"]


def test_a_stop_the_task_catches_is_raised_again_when_its_code_returns() -> None:
    events: list[str] = []

    def catches_everything() -> str:
        try:
            _spin_until(lambda: False)
        except BaseException:  # noqa: BLE001 - a task that swallows even the stop
            events.append("caught")
        return "returned normally"

    with pytest.raises(HardTimeLimitStop):
        _guarded(catches_everything, 0.1, events)
    assert events == ["reported", "caught"]


def test_the_limit_does_nothing_once_the_task_code_has_returned() -> None:
    events: list[str] = []
    guard = ThreadGuard(None, 0.1, lambda: events.append("reported"))
    try:
        task_code_started()
        task_code_ended()
        ended = threading.Event()
        threading.Timer(0.3, ended.set).start()
        _spin_until(ended.is_set)  # the result being recorded, past the limit
    finally:
        guard.finish()
    assert events == [] and not guard.given_up


def test_a_limit_passed_before_the_task_code_starts_acts_once_it_does() -> None:
    events: list[str] = []
    guard = ThreadGuard(None, 0.05, lambda: events.append("reported"))
    try:
        passed = threading.Event()
        threading.Timer(0.2, passed.set).start()
        _spin_until(passed.is_set)  # prerun bookkeeping, slow
        assert events == []
        with pytest.raises(HardTimeLimitStop):
            task_code_started()
            try:
                _spin_until(lambda: False)
            finally:
                task_code_ended()
    finally:
        guard.finish()
    assert events == ["reported"]


def test_a_blocking_call_is_reported_at_the_limit_and_stopped_when_it_returns() -> None:
    events: list[str] = []

    def blocked() -> None:
        try:
            time.sleep(0.5)  # one C call: the stop cannot land inside it
        finally:
            events.append("returned")

    with pytest.raises(HardTimeLimitStop):
        _guarded(blocked, 0.1, events)
    assert events == ["reported", "returned"]


# ---- with the executor ---------------------------------------------------------------------------
@pytest.fixture
def app():
    name = f"hard-limits-{uuid.uuid4().hex[:8]}"
    app = Celery(name, broker=f"memory://{name}", backend=f"memory://{name}",
                 set_as_current=False)

    @app.task(name="spin")
    def spin(seconds: float) -> str:
        _spin_until(lambda: False, seconds)
        return "finished"

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


class _Runner:
    """Runs messages as the worker's Runner does, with a hard limit of ``hard`` seconds."""

    def __init__(self, app: Celery, hard: float) -> None:
        self.app = app
        self.hard = hard
        self.accept = serialization.normalize_accept(app.conf.accept_content)

    def limits(self, message: Message) -> tuple[float | None, None]:
        return (self.hard if message.headers["task"] == "spin" else None), None

    def __call__(self, message: Message, delivery_info: dict) -> Outcome:
        return run_message(self.app, message, delivery_info, "test@host", self.accept)


def test_the_executor_records_nothing_for_a_thread_given_up(app: Celery) -> None:
    message = task_message("spin", args=[10])
    events: list[str] = []
    with pytest.raises(HardTimeLimitStop):
        _guarded(lambda: run_message(app, message, {}, "test@host",
                                     serialization.normalize_accept(app.conf.accept_content)),
                 0.1, events)
    assert events == ["reported"]
    assert app.AsyncResult(message.headers["id"]).state == states.PENDING


def test_the_thread_pool_reports_the_task_and_replaces_the_thread(app: Celery) -> None:
    done: dict[int, Outcome] = {}
    pool = ThreadPool(_Runner(app, 0.2), 1, done.__setitem__)
    pool.start()
    try:
        spin = task_message("spin", args=[10])
        pool.submit(1, spin, {})
        wait_for(lambda: 1 in done, 5, message="the hard limit never reported the task")
        assert done[1].ending is Ending.TIME_LIMIT and done[1].limit == 0.2
        assert pool.free_slots() == 1, "the slot is free again"
        pool.submit(2, task_message("add", args=[2, 3]), {})
        wait_for(lambda: 2 in done, 5, message="the new thread never ran the next task")
        assert done[2].state == states.SUCCESS
        assert app.AsyncResult(spin.headers["id"]).state == states.PENDING  # stored by the
        # consumer in a worker, never by the given-up thread
    finally:
        pool.stop()


def test_the_solo_pool_reports_the_task_and_goes_on(app: Celery) -> None:
    done: dict[int, Outcome] = {}
    pool = SoloPool(_Runner(app, 0.2), 1, done.__setitem__)
    pool.start()
    try:
        caller = threading.current_thread()
        pool.submit(1, task_message("spin", args=[10]), {})  # returns at the limit
        assert done[1].ending is Ending.TIME_LIMIT
        assert pool.free_slots() == 1
        pool.submit(2, task_message("spin", args=[0]), {})  # on a new helper thread
        pool.submit(3, task_message("add", args=[1, 1]), {})  # no hard limit: inline
        assert done[2].state == done[3].state == states.SUCCESS
        assert threading.current_thread() is caller
    finally:
        pool.stop()
