"""Dispatch end to end: generator main tasks, their subtasks and every outcome handled, on every
broker (the ``broker`` fixture: SQLite, Redis, RabbitMQ with results in SQLite), with workers
started in this process (``celeriac.testing.start_worker``); the pools on SQLite; eager mode.

The tasks are tests/integration/dispatch_tasks.py. What the dispatch signals and receivers heard
is read once the worker has stopped, so a repeat heard late would still be counted. Subtask ids
are deterministic (``subtask_id(main id, index)``), so each one's stored state can be read.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ContextManager, Iterator

import pytest

from celeriac import _context, states
from celeriac.dispatch import PROGRESS
from celeriac.dispatch.inbox import HEADER, subtask_id
from celeriac.dispatch.signals import subtask_success
from celeriac.exceptions import TaskRevokedError
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError
from celeriac.signals import after_task_publish
from celeriac.testing import start_worker
from celeriac.testing.worker import EmbeddedWorker
from tests.integration.conftest import Broker, settled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

#: the longest any one dispatch here may take (each takes well under a second when all is well)
TIMEOUT = 15.0

Configure = Callable[..., None]


def _load(task_module: Callable[..., ModuleType], url: str, results: str | None
          ) -> Iterator[ModuleType]:
    tasks = task_module("dispatch_tasks", url, results=results)
    tasks.HEARD.clear()
    changed = set(tasks.app.conf.changes)
    # the README's shared tasks (calc.delay()) resolve to the current app: this module's
    token = _context.current_app_var.set(tasks.app)
    try:
        yield tasks
    finally:
        _context.current_app_var.reset(token)
        tasks.HEARD.clear()
        for key in set(tasks.app.conf.changes) - changed:  # this test's settings go away
            del tasks.app.conf[key]


@pytest.fixture
def tasks(broker: Broker, task_module: Callable[..., ModuleType]) -> Iterator[ModuleType]:
    """dispatch_tasks on the test's broker; settings changed by the test are undone after it."""
    yield from _load(task_module, broker.url, broker.results)


@pytest.fixture
def sqlite_tasks(sqlite_url: str, task_module: Callable[..., ModuleType]
                 ) -> Iterator[ModuleType]:
    """dispatch_tasks on a SQLite file of the test's own (broker and results)."""
    yield from _load(task_module, sqlite_url, None)


def worker(tasks: ModuleType, pool: str = "threads", concurrency: int = 2
           ) -> ContextManager[EmbeddedWorker]:
    return start_worker(tasks.app, pool=pool, concurrency=concurrency, shutdown_timeout=20)


def _retvals(tasks: ModuleType, kind: str, main_id: str) -> list[Any]:
    return sorted(event["retval"] for event in tasks.HEARD.of(kind, main_id))


def _ids(main_id: str, count: int) -> list[str]:
    return sorted(subtask_id(main_id, index) for index in range(count))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---- the README example and the API -------------------------------------------------------------
def test_readme_example_and_every_api_form_each_result_heard_exactly_once(
        tasks: ModuleType) -> None:
    """Five dispatches at once (they must not mix: each is keyed by its own main task's id)."""
    with worker(tasks, concurrency=4):
        readme = tasks.calc.delay()
        received = tasks.with_receiver.delay(6)
        forms = tasks.squares.delay(10)
        chained = tasks.chained.apply_async()
        in_async = tasks.async_squares.s(5).delay()
        assert [r.get(timeout=TIMEOUT) for r in (readme, received, forms, chained, in_async)] \
            == [None, None, "sent 10", None, None]
        kept = [tasks.app.AsyncResult(subtask_id(received.id, i)).get(timeout=TIMEOUT)
                for i in range(6)]

    # the README: every retval exactly once, from the handler connected with sender=calc
    heard = tasks.HEARD.of("readme", readme.id)
    assert sorted(event["retval"] for event in heard) == [i * i for i in range(10)]
    assert sorted(event["task_id"] for event in heard) == _ids(readme.id, 10)
    assert {e["sender"] for e in tasks.HEARD.of("success", readme.id)} == {tasks.calc.name}
    assert tasks.HEARD.of("readme", received.id) == [], "sender=calc hears calc only"
    # auto_ignore (the default): a subtask's outcome goes to its dispatch only
    assert tasks.app.AsyncResult(subtask_id(readme.id, 0)).state == states.PENDING

    # receiver=: every result; auto_ignore=False: each subtask's own result is stored too
    assert _retvals(tasks, "receiver", received.id) == [i * i for i in range(6)]
    assert sorted(e["task_id"] for e in tasks.HEARD.of("receiver", received.id)) == _ids(
        received.id, 6)
    assert kept == [i * i for i in range(6)]

    # every item form; the main task's result is the generator's return value
    assert _retvals(tasks, "success", forms.id) == [i * i for i in range(10)]

    # a yielded chain is one subtask, handled with its last task's result
    assert _retvals(tasks, "success", chained.id) == [25, (1 + 2 + 10) ** 2]
    assert sorted(e["task_id"] for e in tasks.HEARD.of("success", chained.id)) == _ids(
        chained.id, 2)

    # an async def generator main task
    assert _retvals(tasks, "success", in_async.id) == [i * i for i in range(5)]
    assert tasks.HEARD.of("failure") == [] and tasks.HEARD.of("timeout") == []


def test_subtask_failures_and_timeouts_are_heard_and_fail_the_main_task_only_when_asked(
        tasks: ModuleType, tmp_path: Path) -> None:
    conf = tasks.app.conf
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    with worker(tasks):
        # a failing subtask: subtask_failure with the exception; the main task goes on
        mixed = tasks.mixed.delay()
        assert mixed.get(timeout=TIMEOUT) is None
        assert mixed.state == states.SUCCESS

        # dispatcher_failure_on_subtask_exception: the main task fails with the exception
        conf.dispatcher_failure_on_subtask_exception = True
        failing = tasks.mixed.delay()
        with pytest.raises(ValueError, match="subtask broke"):
            failing.get(timeout=TIMEOUT)
        assert failing.state == states.FAILURE
        del conf["dispatcher_failure_on_subtask_exception"]

        # a subtask silent for longer than dispatcher_subtask_timeout is given up on
        conf.dispatcher_subtask_timeout = 0.3
        silent = tasks.held_subtasks.delay(str(ledger), str(gate), 1)
        try:
            assert silent.get(timeout=TIMEOUT) is None
            assert tasks.HEARD.of("success", silent.id) == []
        finally:
            gate.touch()  # the held subtask ends, so the worker can stop
        wait_for(lambda: "done 0" in _lines(ledger), TIMEOUT, message="the subtask never ended")

    failures = tasks.HEARD.of("failure", mixed.id)
    assert [e["task_id"] for e in failures] == [subtask_id(mixed.id, 1)]
    assert isinstance(failures[0]["exception"], ValueError)
    assert str(failures[0]["exception"]) == "subtask broke"
    assert "ValueError: subtask broke" in failures[0]["traceback"]
    assert _retvals(tasks, "success", mixed.id) == [4, 9]

    timeouts = tasks.HEARD.of("timeout", silent.id)
    assert [e["task_id"] for e in timeouts] == [subtask_id(silent.id, 0)]
    assert isinstance(timeouts[0]["exception"], CeleriacTimeoutError)
    assert "dispatcher_subtask_timeout" in str(timeouts[0]["exception"])
    assert tasks.HEARD.of("timeout", mixed.id) == []


# ---- the window ---------------------------------------------------------------------------------
def test_never_more_subtasks_unfinished_than_the_window(tasks: ModuleType) -> None:
    tasks.app.conf.update(dispatcher_poll_size=8, dispatcher_batch_size=4)
    # publishes and outcomes both happen on the main task's thread: one timeline, in order
    timeline: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_publish(headers: dict | None = None, **_: Any) -> None:
        target = (headers or {}).get(HEADER)
        if target:
            with lock:
                timeline.append(("sent", str(target[0])))

    def on_success(root_id: str = "", **_: Any) -> None:
        with lock:
            timeline.append(("done", root_id))

    uid = f"dispatch-window-{uuid.uuid4()}"
    after_task_publish.connect(on_publish, weak=False, dispatch_uid=uid)
    subtask_success.connect(on_success, weak=False, dispatch_uid=uid)
    try:
        with worker(tasks, concurrency=4):
            result = tasks.squares.delay(50)
            assert result.get(timeout=TIMEOUT) == "sent 50"
    finally:
        after_task_publish.disconnect(dispatch_uid=uid)
        subtask_success.disconnect(dispatch_uid=uid)
    mine = [kind for kind, main_id in timeline if main_id == result.id]
    unfinished, most = 0, 0
    for kind in mine:
        unfinished += 1 if kind == "sent" else -1
        most = max(most, unfinished)
    assert mine.count("sent") == 50 and mine.count("done") == 50
    assert most == 8, "the window is filled, and never overfilled"
    assert mine.index("done") < len(mine) - 1 - mine[::-1].index("sent"), \
        "outcomes are handled while later subtasks are still being sent"
    assert _retvals(tasks, "success", result.id) == sorted(i * i for i in range(50))


# ---- progress -----------------------------------------------------------------------------------
def test_progress_is_stored_while_the_dispatch_runs(tasks: ModuleType, tmp_path: Path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    with worker(tasks, concurrency=3):
        result = tasks.quick_then_held.delay(str(ledger), str(gate), 2)
        try:
            # the quick subtask ends, the two held ones wait for the gate: 1 of 3 done
            wait_for(lambda: result.state == PROGRESS, TIMEOUT,
                     message=lambda: f"no progress stored: {result.state} {result.info}")
            progress = result.info
        finally:
            gate.touch()
        assert result.get(timeout=TIMEOUT) is None
    assert set(progress) == {"completed_count", "total_count", "progress_percent",
                             "time_remaining"}
    assert progress["completed_count"] == 1
    assert progress["total_count"] == 3
    assert progress["progress_percent"] == pytest.approx(100 / 3)
    assert progress["time_remaining"] > 0
    assert result.state == states.SUCCESS


# ---- revoke -------------------------------------------------------------------------------------
def test_revoke_terminate_stops_the_main_task_and_every_unfinished_subtask(
        broker: Broker, tasks: ModuleType, tmp_path: Path) -> None:
    tasks.app.conf.update(dispatcher_poll_size=4, dispatcher_batch_size=4)
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    with worker(tasks, concurrency=2):
        result = tasks.held_subtasks.delay(str(ledger), str(gate), 12)
        try:
            # subtasks 0 and 1 hold both pool threads; 2 and 3 wait behind them
            wait_for(lambda: len(_lines(ledger)) == 2, TIMEOUT, message="no subtask started")
            result.revoke(terminate=True, signal="SIGUSR1")
            with pytest.raises(TaskRevokedError):
                result.get(timeout=TIMEOUT)
            assert result.state == states.REVOKED
            # the running two are stopped where they run (terminate reaches the subtasks of
            # a dispatch), the waiting two are dropped where they wait: all stored REVOKED
            unfinished = [tasks.app.AsyncResult(subtask_id(result.id, index))
                          for index in range(4)]
            wait_for(lambda: all(r.state == states.REVOKED for r in unfinished), TIMEOUT,
                     message=lambda: f"subtasks 0-3: {[r.state for r in unfinished]}")
        finally:
            gate.touch()  # whatever happened, nothing stays held past the test
        settled(broker, tasks.app)  # nothing left queued: no later subtask was sent
    # the running two never got past their gate; no other subtask ever ran
    assert sorted(_lines(ledger)) == ["start 0", "start 1"]


def test_a_plain_revoke_stops_the_main_task_and_lets_running_subtasks_finish(
        sqlite_tasks: ModuleType, tmp_path: Path) -> None:
    tasks = sqlite_tasks
    tasks.app.conf.update(dispatcher_poll_size=4, dispatcher_batch_size=4)
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    with worker(tasks, concurrency=2):
        result = tasks.held_subtasks.delay(str(ledger), str(gate), 12)
        try:
            wait_for(lambda: len(_lines(ledger)) == 2, TIMEOUT, message="no subtask started")
            result.revoke()  # no terminate: the main task looks for it between reads
            wait_for(lambda: result.state == states.REVOKED, TIMEOUT,
                     message=lambda: f"main task still {result.state}")
            waiting = [tasks.app.AsyncResult(subtask_id(result.id, index)) for index in (2, 3)]
        finally:
            gate.touch()
        wait_for(lambda: all(r.state == states.REVOKED for r in waiting), TIMEOUT,
                 message=lambda: f"subtasks 2 and 3: {[r.state for r in waiting]}")
        wait_for(lambda: len(_lines(ledger)) == 4, TIMEOUT, message="the running two never ended")
    assert sorted(_lines(ledger)) == ["done 0", "done 1", "start 0", "start 1"]
    assert isinstance(result.result, TaskRevokedError)


# ---- pools, async main tasks, eager mode --------------------------------------------------------
@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_every_in_process_pool_with_one_slot_runs_sync_and_async_main_tasks(
        sqlite_tasks: ModuleType, pool: str) -> None:
    """Four main tasks, one pool slot: main tasks never take the slot their subtasks need."""
    tasks = sqlite_tasks
    with worker(tasks, pool=pool, concurrency=1):
        readmes = [tasks.calc.delay() for _ in range(2)]
        in_async = [tasks.async_squares.delay(6) for _ in range(2)]
        assert [r.get(timeout=TIMEOUT) for r in readmes + in_async] == [None] * 4
    for readme in readmes:
        assert _retvals(tasks, "readme", readme.id) == [i * i for i in range(10)]
    for result in in_async:
        assert _retvals(tasks, "success", result.id) == [i * i for i in range(6)]
        assert sorted(e["task_id"] for e in tasks.HEARD.of("success", result.id)) == _ids(
            result.id, 6)


@pytest.mark.parametrize("queued", ["sqlite", "redis"])
def test_more_dispatches_than_a_worker_runs_at_once_all_finish(
        queued: str, sqlite_tasks: ModuleType, task_module: Callable[..., ModuleType],
        tmp_path: Path) -> None:
    """Main tasks beyond ``dispatcher_concurrency`` go back to the broker for a moment instead
    of filling the prefetch buffer, where they would take the room their running siblings need
    to fetch subtasks (one worker held every one of 30 such dispatches forever before)."""
    if queued == "redis":
        from tests.integration.conftest import open_broker

        with open_broker("redis", tmp_path) as redis_broker:
            yield_from = _load(task_module, redis_broker.url, None)
            tasks = next(yield_from)
            try:
                _run_more_than_concurrency(tasks, pool="solo")
            finally:
                yield_from.close()
        return
    _run_more_than_concurrency(sqlite_tasks, pool="threads")


def _run_more_than_concurrency(tasks: ModuleType, pool: str) -> None:
    tasks.app.conf.dispatcher_concurrency = 1
    results = [tasks.squares.delay(3) for _ in range(4)]  # queued before the worker starts
    with worker(tasks, pool=pool, concurrency=1):
        assert [r.get(timeout=TIMEOUT * 2) for r in results] == ["sent 3"] * 4
    for result in results:
        assert sorted(e["task_id"] for e in tasks.HEARD.of("success", result.id)) == _ids(
            result.id, 3)


def test_eager_mode_applies_each_subtask_in_place(sqlite_tasks: ModuleType) -> None:
    tasks = sqlite_tasks
    tasks.app.conf.task_always_eager = True
    readme = tasks.calc.delay()
    assert readme.get() is None
    assert _retvals(tasks, "readme", readme.id) == [i * i for i in range(10)]
    assert sorted(e["task_id"] for e in tasks.HEARD.of("readme", readme.id)) == _ids(
        readme.id, 10)
    chain_and_failure = [tasks.chained.delay(), tasks.mixed.delay()]
    assert [r.get() for r in chain_and_failure] == [None, None]
    assert _retvals(tasks, "success", chain_and_failure[0].id) == [25, 169]
    failures = tasks.HEARD.of("failure", chain_and_failure[1].id)
    assert [type(e["exception"]) for e in failures] == [ValueError]
    in_async = tasks.async_squares.delay(3)
    assert in_async.get() is None
    assert _retvals(tasks, "success", in_async.id) == [0, 1, 4]
