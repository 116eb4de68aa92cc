"""One dispatch's bookkeeping, driven by hand on a memory:// broker and result store: the window
(``room``), what each subtask carries, the checkpoint a redelivered main task resumes from
(``ahead``, repeats skipped), outcomes and their signals, subtask timeouts and the stored-result
fallback, revoke and warm shutdown, and the progress meta. Pure logic: no worker runs; subtask
outcomes are written into the inbox as a worker would write them (``inbox.entry``)."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from celeriac import Celery, states
from celeriac.dispatch import PROGRESS, DispatchConfig, inbox
from celeriac.dispatch.run import DispatchRun, drive, stopping_workers
from celeriac.dispatch.signals import subtask_failure, subtask_success, subtask_timeout
from celeriac.exceptions import ImproperlyConfigured, Reject, TaskRevokedError
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError
from celeriac.signals import Signal
from celeriac.task import Task

MakeRun = Callable[..., DispatchRun]


@pytest.fixture
def add(app: Celery) -> Task:
    @app.task(name="run.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    return add


@pytest.fixture
def main(app: Celery) -> Task:
    @app.task(name="run.main")
    def main() -> None:
        """Stands in for the main task (its name goes in every subtask's header)."""

    return main


@pytest.fixture
def receiver_calls() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def make_run(app: Celery, main: Task, receiver_calls: list[dict[str, Any]]) -> MakeRun:
    """``make_run(main_id=None, **settings)``: a run of ``run.main`` (``main_id`` again: the
    same main task redelivered), its receiver recording into ``receiver_calls``."""

    def receiver(**named: Any) -> None:
        receiver_calls.append(named)

    def make(main_id: str | None = None, hostname: str | None = None,
             **settings: Any) -> DispatchRun:
        app.conf.update(settings)
        main_id = main_id or str(uuid.uuid4())
        request = SimpleNamespace(id=main_id, root_id=f"root-of-{main_id}", hostname=hostname)
        return DispatchRun(app, main, request, DispatchConfig(receiver=receiver))

    return make


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every dispatch signal sent during the test, as ``(signal name, arguments)``."""
    events: list[tuple[str, dict[str, Any]]] = []
    signals: list[Signal] = [subtask_success, subtask_failure, subtask_timeout]

    def hear(signal: Signal | None = None, **named: Any) -> None:
        events.append((signal.name if signal else "?", named))

    for signal in signals:
        signal.connect(hear, weak=False, dispatch_uid="test_run.heard")
    yield events
    for signal in signals:
        signal.disconnect(dispatch_uid="test_run.heard")


def report(run: DispatchRun, index: int, value: Any, state: str = states.SUCCESS) -> None:
    """Append subtask ``index``'s outcome to the run's inbox, as the worker running it does."""
    target = inbox.Target(run.id, index, "run.main", True)
    request = SimpleNamespace(id=inbox.subtask_id(run.id, index))
    inbox.push(run.store, target, inbox.entry(run.store, target, request, state, value))


def items(add: Task, indexes: range | list[int]) -> list[tuple[int, Any]]:
    return [(i, (add, (i,))) for i in indexes]


def queued(app: Celery) -> int:
    return app.transport.qsize("celery")


# ---- the window ---------------------------------------------------------------------------------
@pytest.mark.parametrize("window, batch, unfinished, room", [
    (10, 4, 0, 4),  # a batch at a time
    (10, 4, 6, 4),  # exactly a batch free
    (10, 4, 7, 0),  # less than a batch free: wait for outcomes
    (10, 4, 10, 0),  # full
    (8, 8, 0, 4),  # a batch is at most half the window...
    (8, 8, 4, 4),  # ...so the next half goes out while the first still runs
    (8, 8, 5, 0),
    (100, 100, 50, 50),  # the defaults
    (100, 100, 51, 0),
    (3, 4, 2, 1),
    (1, 100, 0, 1),
    (1, 100, 1, 0),
])
def test_room_is_a_batch_of_at_most_half_the_window_once_that_much_is_free(
        make_run: MakeRun, window: int, batch: int, unfinished: int, room: int) -> None:
    run = make_run(dispatcher_poll_size=window, dispatcher_batch_size=batch)
    run.outstanding = {i: 0.0 for i in range(unfinished)}
    assert run.room() == room


def test_settings_are_read_with_the_originals_defaults(make_run: MakeRun) -> None:
    settings = make_run().settings
    assert (settings.batch_size, settings.window, settings.poll_timeout,
            settings.subtask_timeout, settings.fail_on_timeout, settings.fail_on_exception,
            settings.progress_every) == (100, 100, 10.0, 3600.0, False, False, 1)


# ---- what is published --------------------------------------------------------------------------
def test_each_subtask_carries_its_dispatch_and_a_deterministic_id(make_run: MakeRun,
                                                                  add: Task) -> None:
    run = make_run()
    run.config = DispatchConfig(options={"queue": "subtasks", "priority": 1})
    sig = run.signature_for((add, (1,), {}, {"priority": 9}), 5)
    assert sig.options["task_id"] == inbox.subtask_id(run.id, 5)
    assert sig.options["headers"][inbox.HEADER] == [run.id, 5, "run.main", True]
    assert sig.options["queue"] == "subtasks" and sig.options["priority"] == 9, \
        "the dispatch's options, the item's own winning"
    target = inbox.target_of(SimpleNamespace(headers=sig.options["headers"]))
    assert target == inbox.Target(run.id, 5, "run.main", True)


def test_in_a_chain_only_the_last_task_reports(make_run: MakeRun, add: Task) -> None:
    run = make_run()
    sig = run.signature_for(add.s(1, 2) | add.s(3), 0)
    first, last = sig.tasks  # type: ignore[attr-defined]
    assert inbox.HEADER not in (first.options.get("headers") or {})
    assert last.options["headers"][inbox.HEADER][:2] == [run.id, 0]
    assert last.options["task_id"] == inbox.subtask_id(run.id, 0)


def test_subtask_ids_differ_per_index_and_per_dispatch() -> None:
    ids = {inbox.subtask_id(d, i) for d in ("a", "b") for i in range(3)}
    assert len(ids) == 6
    assert inbox.subtask_id("a", 1) == inbox.subtask_id("a", 1)
    assert inbox.target_of(SimpleNamespace(headers={})) is None


def test_publish_sends_the_batch_and_counts_it_unfinished(app: Celery, make_run: MakeRun,
                                                          add: Task) -> None:
    run = make_run()
    assert run.publish(items(add, range(3))) == 3
    assert queued(app) == 3
    assert sorted(run.outstanding) == [0, 1, 2] and run.published == 3


# ---- outcomes -----------------------------------------------------------------------------------
def test_each_outcome_is_handled_once_in_completion_order(
        make_run: MakeRun, add: Task, receiver_calls: list[dict[str, Any]],
        heard: list[tuple[str, dict[str, Any]]]) -> None:
    run = make_run()
    run.publish(items(add, range(3)))
    report(run, 2, "two")
    report(run, 0, "zero")
    report(run, 2, "two again")  # the subtask ran twice: a repeat
    run.handle_entries(run.read(0))
    assert [c["retval"] for c in receiver_calls] == ["two", "zero"]
    assert receiver_calls[0] == {"root_id": run.root_id,
                                 "task_id": inbox.subtask_id(run.id, 2), "retval": "two"}
    assert [(name, named["retval"]) for name, named in heard] == [
        ("subtask_success", "two"), ("subtask_success", "zero")]
    assert heard[0][1]["sender"] is run.task and heard[0][1]["root_id"] == run.root_id
    assert sorted(run.outstanding) == [1] and run.completed == 2


def test_a_failure_is_heard_with_its_exception_and_fails_the_main_task_only_when_asked(
        make_run: MakeRun, add: Task, heard: list[tuple[str, dict[str, Any]]]) -> None:
    run = make_run()
    run.publish(items(add, range(2)))
    report(run, 0, ValueError("no"), states.FAILURE)
    run.handle_entries(run.read(0))
    run.raise_failure()  # dispatcher_failure_on_subtask_exception is False: nothing raised
    (name, named), = heard
    assert name == "subtask_failure" and named["task_id"] == inbox.subtask_id(run.id, 0)
    assert isinstance(named["exception"], ValueError) and str(named["exception"]) == "no"
    assert run.failed == 1

    strict = make_run(dispatcher_failure_on_subtask_exception=True)
    strict.publish(items(add, range(2)))
    report(strict, 1, KeyError("gone"), states.FAILURE)
    strict.handle_entries(strict.read(0))
    with pytest.raises(KeyError, match="gone"):
        strict.raise_failure()


def test_a_receiver_that_raises_does_not_stop_the_dispatch(app: Celery, main: Task,
                                                           add: Task) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("receiver bug")

    request = SimpleNamespace(id=str(uuid.uuid4()), root_id=None, hostname=None)
    run = DispatchRun(app, main, request, DispatchConfig(receiver=broken))
    run.publish(items(add, range(2)))
    report(run, 0, 0)
    report(run, 1, 1)
    run.handle_entries(run.read(0))
    assert run.completed == 2 and not run.outstanding
    assert run.root_id == run.id, "a main task without a root is its own root"


def test_an_unreadable_inbox_entry_is_skipped(make_run: MakeRun, add: Task,
                                              receiver_calls: list[dict[str, Any]]) -> None:
    run = make_run()
    run.publish(items(add, range(1)))
    run.log.log_append(run.inbox_key, [b"not an entry"], None)
    report(run, 0, "fine")
    run.handle_entries(run.read(0))
    assert [c["retval"] for c in receiver_calls] == ["fine"]


# ---- timeouts and the stored-result fallback ----------------------------------------------------
def test_a_silent_subtask_times_out(make_run: MakeRun, add: Task,
                                    heard: list[tuple[str, dict[str, Any]]]) -> None:
    run = make_run(dispatcher_subtask_timeout=5)
    run.publish(items(add, range(2)))
    run.outstanding[0] = time.monotonic() - 6  # published long ago
    run.check_overdue()
    (name, named), = heard
    assert name == "subtask_timeout" and named["task_id"] == inbox.subtask_id(run.id, 0)
    assert isinstance(named["exception"], CeleriacTimeoutError)
    assert "dispatcher_subtask_timeout" in str(named["exception"])
    assert sorted(run.outstanding) == [1] and run.completed == run.failed == 1
    run.raise_failure()  # dispatcher_failure_on_subtask_timeout is False: nothing raised

    strict = make_run(dispatcher_subtask_timeout=5, dispatcher_failure_on_subtask_timeout=True)
    strict.publish(items(add, range(1)))
    strict.outstanding[0] = time.monotonic() - 6
    strict.check_overdue()
    with pytest.raises(CeleriacTimeoutError):
        strict.raise_failure()


def test_a_result_stored_by_a_worker_that_does_not_report_is_found(
        app: Celery, make_run: MakeRun, add: Task,
        receiver_calls: list[dict[str, Any]]) -> None:
    """A Celery worker stores the result and reports nothing: after dispatcher_poll_timeout it
    is looked up, handled and (auto_ignore) forgotten."""
    run = make_run(dispatcher_poll_timeout=2)
    run.publish(items(add, range(2)))
    long_ago = time.monotonic() - 3
    run.outstanding = {0: long_ago, 1: long_ago}
    run._last_fallback = long_ago
    done = inbox.subtask_id(run.id, 0)
    app.backend.mark_as_done(done, 42)
    run.check_overdue()
    assert receiver_calls == [{"root_id": run.root_id, "task_id": done, "retval": 42}]
    assert sorted(run.outstanding) == [1]
    assert app.backend.get_task_meta(done)["status"] == states.PENDING, "forgotten"


# ---- checkpoint and resume ----------------------------------------------------------------------
def test_a_fresh_main_task_has_nothing_to_resume(make_run: MakeRun) -> None:
    run = make_run()
    assert run.load() == 0 and run.resumed is False


def test_a_redelivered_main_task_resumes_from_its_checkpoint(
        app: Celery, make_run: MakeRun, add: Task,
        receiver_calls: list[dict[str, Any]]) -> None:
    first = make_run(dispatcher_batch_size=4, dispatcher_poll_size=8)
    first.publish(items(add, range(4)))
    report(first, 1, 1)
    first.handle_entries(first.read(0))
    first.checkpoint(force=True)
    first.publish(items(add, range(4, 8)))  # then the worker dies before the next checkpoint
    report(first, 5, 25)  # a subtask of the batch sent after the checkpoint ends
    report(first, 0, 0)
    assert queued(app) == 8

    again = make_run(first.id, dispatcher_batch_size=4, dispatcher_poll_size=8)
    assert again.load() == 4, "the generator's first 4 items were published: skip them"
    assert again.resumed is True
    assert sorted(again.outstanding) == [0, 2, 3]
    assert (again.published, again.completed, again.cursor) == (4, 1, first.cursor)
    assert again.started_at == first.started_at

    again.handle_entries(again.read(0))  # 1 is behind the cursor: not read again
    assert again.ahead == {5}, "finished though not yet published in this run"
    assert sorted(again.outstanding) == [2, 3]
    report(again, 5, 25)
    report(again, 0, 0)
    again.handle_entries(again.read(0))  # repeats of both: skipped
    assert [c["retval"] for c in receiver_calls] == [1, 25, 0]

    again.checkpoint(force=True)
    saved = make_run(first.id)
    assert saved.load() == 4 and saved.ahead == {5}

    # the batch after the checkpoint is published again, but for the subtask already finished
    assert again.publish(items(add, range(4, 8))) == 4
    assert queued(app) == 8 + 3
    assert sorted(again.outstanding) == [2, 3, 4, 6, 7] and again.ahead == set()
    assert again.published == 8


def test_checkpoint_trims_the_handled_inbox(make_run: MakeRun, add: Task) -> None:
    run = make_run()
    run.publish(items(add, range(2)))
    report(run, 0, 0)
    run.handle_entries(run.read(0))
    run.checkpoint(force=True)
    assert run.log.log_read(run.inbox_key, "", 10, 0)[0] == []
    report(run, 1, 1)
    assert len(run.log.log_read(run.inbox_key, "", 10, 0)[0]) == 1


def test_cleanup_removes_the_inbox_and_the_checkpoint(make_run: MakeRun, add: Task) -> None:
    run = make_run()
    run.publish(items(add, range(2)))
    run.checkpoint(force=True)
    report(run, 0, 0)
    run.cleanup()
    assert run.log.log_read(run.inbox_key, "", 10, 0)[0] == []
    assert make_run(run.id).load() == 0


# ---- revoke and warm shutdown -------------------------------------------------------------------
def test_a_revoked_main_task_stops_and_closes_its_generator(app: Celery, make_run: MakeRun,
                                                             add: Task) -> None:
    run = make_run()
    closed: list[bool] = []

    def generator() -> Iterator[Any]:
        try:
            for i in range(10):
                yield add, (i,)
        finally:
            closed.append(True)

    gen = generator()
    next(gen)  # started, as a generator the run has been consuming
    app.control.revoke(run.id)
    run._last_revoke_check = time.monotonic() - 2  # due for a look
    with pytest.raises(TaskRevokedError):
        drive(run, gen, 0)
    assert closed == [True]
    assert queued(app) == 0, "nothing is sent once the main task is revoked"


def test_a_stopping_worker_saves_the_checkpoint_and_gives_the_main_task_back(
        make_run: MakeRun, add: Task) -> None:
    run = make_run(hostname="stopping@test")
    run.publish(items(add, range(3)))
    run.step_aside_if_stopping()  # not stopping: nothing happens
    stopping_workers.add("stopping@test")
    try:
        with pytest.raises(Reject) as caught:
            run.step_aside_if_stopping()
    finally:
        stopping_workers.discard("stopping@test")
    assert caught.value.requeue is True
    assert make_run(run.id).load() == 3


# ---- progress -----------------------------------------------------------------------------------
def test_progress_meta_has_the_originals_fields(make_run: MakeRun) -> None:
    run = make_run()
    assert run.progress_meta() == {"completed_count": 0, "total_count": 0,
                                   "progress_percent": 100.0, "time_remaining": 0.0}
    run.published = 4
    assert run.progress_meta() == {"completed_count": 0, "total_count": 4,
                                   "progress_percent": 0.0, "time_remaining": -1.0}
    run.completed = 1
    run.started_at = time.time() - 30  # a quarter done in 30 s: 90 s more at that pace
    meta = run.progress_meta()
    assert (meta["completed_count"], meta["total_count"]) == (1, 4)
    assert meta["progress_percent"] == pytest.approx(25.0)
    assert meta["time_remaining"] == pytest.approx(90, abs=5)
    run.completed = 4
    assert run.progress_meta()["progress_percent"] == 100.0
    assert run.progress_meta()["time_remaining"] == 0.0


def test_progress_is_stored_every_n_outcomes_and_at_most_every_quarter_second(
        app: Celery, make_run: MakeRun, add: Task) -> None:
    run = make_run(dispatcher_progress_update_frequency=2)
    run.publish(items(add, range(6)))

    def stored() -> dict[str, Any]:
        return app.backend.get_task_meta(run.id)

    report(run, 0, 0)
    run.handle_entries(run.read(0))
    assert stored()["status"] == states.PENDING, "one outcome: fewer than the frequency"
    report(run, 1, 1)
    run.handle_entries(run.read(0))
    assert stored()["status"] == PROGRESS
    assert stored()["result"] == {**run.progress_meta(), "time_remaining": pytest.approx(
        run.progress_meta()["time_remaining"], abs=1)}
    assert stored()["result"]["completed_count"] == 2
    report(run, 2, 2)
    report(run, 3, 3)
    run.handle_entries(run.read(0))  # two more at once: within a quarter second of the last
    assert stored()["result"]["completed_count"] == 2
    run.progress(force=True)  # the end of the dispatch stores it whatever the pace
    assert stored()["result"]["completed_count"] == 4


def test_progress_frequency_zero_stores_only_the_last(app: Celery, make_run: MakeRun,
                                                      add: Task) -> None:
    run = make_run(dispatcher_progress_update_frequency=0)
    run.publish(items(add, range(1)))
    report(run, 0, 0)
    run.handle_entries(run.read(0))
    assert app.backend.get_task_meta(run.id)["status"] == states.PENDING
    run.progress(force=True)
    assert app.backend.get_task_meta(run.id)["status"] == PROGRESS


# ---- where the dispatch keeps its state ---------------------------------------------------------
def test_state_lives_in_the_apps_result_store_by_default(app: Celery, make_run: MakeRun) -> None:
    assert make_run().store is app.backend


def test_backend_url_or_setting_names_another_store(make_app: Callable[..., Celery]) -> None:
    name = f"memory://elsewhere-{uuid.uuid4().hex}"
    app = make_app()
    chosen = inbox.store_for(app, name)
    assert chosen is not app.backend and chosen.url == name
    assert inbox.store_for(app, name) is chosen, "one store per URL and app"
    configured = make_app(dispatcher_result_backend=name)
    assert inbox.store_for(configured).url == name


def test_a_store_that_keeps_no_state_is_refused_with_the_fix() -> None:
    # amqp:// is never connected to here: the store is chosen before anything is sent
    app = Celery("dispatch", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://",
                 set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match="RPCBackend does not: set "
                                                       "dispatcher_result_backend"):
            inbox.store_for(app)
    finally:
        app.close()
