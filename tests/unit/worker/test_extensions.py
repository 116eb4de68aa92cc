"""Worker extension points: ``Hooks`` picks only the overridden points, and a custom
``WorkerExtension`` registered through ``app.worker_extensions`` is called by a real in-process
worker (solo and thread pools) on the memory broker."""

from __future__ import annotations

import threading

import pytest

from celeriac import states
from celeriac.exceptions import InvalidTaskError, Reject, TaskRevokedError
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker.admission import Decision, Verdict
from celeriac.worker.extensions import Expiry, Heartbeat, Hooks, WorkerExtension
from celeriac.worker.outcome import Ending
from tests.waiting import wait_for

from .support import QUEUE, dead_letters, make_consumer

POOLS = ["solo", "threads"]


# ---- Hooks --------------------------------------------------------------------------------------
class OnlyBeforeRun(WorkerExtension):
    def before_run(self, job):
        return None


class InheritsBeforeRun(OnlyBeforeRun):
    pass


class StartStop(WorkerExtension):
    def on_worker_start(self, consumer):
        pass

    def on_worker_stop(self, consumer):
        pass

    def after_outcome(self, job, outcome):
        pass


def test_hooks_hold_only_the_overridden_points_in_registration_order():
    first, second, third = OnlyBeforeRun(), StartStop(), InheritsBeforeRun()
    hooks = Hooks([first, second, third])
    assert hooks.extensions == (first, second, third)
    assert hooks.before_run == (first.before_run, third.before_run)
    assert hooks.on_worker_start == (second.on_worker_start,)
    assert hooks.on_worker_stop == (second.on_worker_stop,)
    assert hooks.after_outcome == (second.after_outcome,)
    assert hooks.before_admission == ()


def test_an_extension_overriding_nothing_costs_nothing():
    hooks = Hooks([WorkerExtension(), WorkerExtension()])
    for point in ("on_worker_start", "on_worker_stop", "before_admission", "before_run",
                  "after_outcome"):
        assert getattr(hooks, point) == ()


def test_the_built_in_extensions_use_only_their_points():
    expiry, heartbeat = Expiry(), Heartbeat(60.0)
    hooks = Hooks([expiry, heartbeat])
    assert hooks.before_admission == (expiry.before_admission,)
    assert hooks.before_run == (expiry.before_run,)
    assert hooks.on_worker_start == (heartbeat.on_worker_start,)
    assert hooks.on_worker_stop == (heartbeat.on_worker_stop,)
    assert hooks.after_outcome == ()


def test_the_consumer_adds_admission_steps_only_for_extensions_that_define_one():
    app = make_test_app("hooks")
    try:
        plain = make_consumer(app, extensions=[])
        idle = make_consumer(app, extensions=[OnlyBeforeRun(), StartStop()])
        with_step = make_consumer(app, extensions=[Expiry()])
        assert len(idle.admission.steps) == len(plain.admission.steps)
        assert len(with_step.admission.steps) == len(plain.admission.steps) + 1
    finally:
        dispose_test_app(app)


# ---- a custom extension in a real worker --------------------------------------------------------
class Recorder(WorkerExtension):
    """Records every point it sees; dead-letters ``ext.poison`` at admission and drops
    ``ext.vetoed`` as revoked just before it would run."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.events = []
        self.started = []
        self.stopped = []
        self.outcomes = {}  # task id -> (job, outcome, job.holds_lease, qsize then)

    def _note(self, *event):
        with self.lock:
            self.events.append(event)

    def on_worker_start(self, consumer):
        self.started.append(consumer)
        self._note("start")

    def on_worker_stop(self, consumer):
        self.stopped.append(consumer)
        self._note("stop")

    def before_admission(self, arrival):
        self._note("admission", arrival.headers["id"], arrival.task)
        if arrival.headers["task"] == "ext.poison":
            return Decision(Verdict.DEAD_LETTER, "poisoned by the extension")
        if arrival.headers["task"] == "ext.quarantined":
            return Decision.dead_letter("quarantined by the extension", store_failure=False)
        return None

    def before_run(self, job):
        self._note("run", job.task_id)
        if job.task.name == "ext.vetoed":
            return Decision(Verdict.REVOKED)
        return None

    def after_outcome(self, job, outcome):
        # Called before the message is settled: a late job still holds its lease here.
        seen = (job, outcome, job.holds_lease, self.app.transport.qsize(QUEUE))
        with self.lock:
            self.outcomes[job.task_id] = seen
        self._note("outcome", job.task_id)

    def seen(self, kind, task_id):
        with self.lock:
            return [e for e in self.events if e[0] == kind and e[1] == task_id]

    def outcome_of(self, task_id, timeout=10.0):
        def found():
            with self.lock:
                return self.outcomes.get(task_id)

        return wait_for(found, timeout, message=f"no after_outcome for task {task_id}")


def _make_app():
    app = make_test_app("extensions")
    app.ran = []

    @app.task(name="ext.add")
    def add(x, y):
        return x + y

    @app.task(name="ext.fail")
    def fail():
        raise ValueError("boom")

    @app.task(name="ext.reject", acks_late=True)  # an early-acked message has nothing to reject
    def reject():
        raise Reject("not for me", requeue=False)

    @app.task(name="ext.late", acks_late=True)
    def late():
        return "late"

    @app.task(name="ext.poison")
    def poison():
        app.ran.append("ext.poison")

    @app.task(name="ext.quarantined")
    def quarantined():
        app.ran.append("ext.quarantined")

    @app.task(name="ext.vetoed")
    def vetoed():
        app.ran.append("ext.vetoed")

    recorder = Recorder(app)
    app.worker_extensions.append(recorder)
    return app, recorder


@pytest.fixture(scope="module", params=POOLS)
def running(request):
    """One worker per pool, shared by the tests below (stopping one takes up to a second)."""
    app, recorder = _make_app()
    try:
        with start_worker(app, pool=request.param, concurrency=2,
                          perform_ping_check=False) as worker:
            yield app, worker, recorder
    finally:
        dispose_test_app(app)


def _settled(app):
    wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10, message="a message was not settled")


def test_the_custom_extension_runs_after_the_built_in_ones(running):
    app, worker, recorder = running
    names = [type(ext).__name__ for ext in worker.consumer.hooks.extensions]
    assert names[0] == "Expiry" and names[-1] == "Recorder"
    assert worker.consumer.hooks.extensions[-1] is recorder


def test_before_admission_returning_dead_letter_dead_letters_the_message(running):
    app, worker, recorder = running
    result = app.tasks["ext.poison"].delay()
    dead = wait_for(lambda: [d for d in dead_letters(app)
                             if d.message.headers["id"] == result.id], 10,
                    message="the poisoned message was never dead-lettered")
    assert [d.reason for d in dead] == ["poisoned by the extension"]
    _settled(app)
    [(_, _, task)] = recorder.seen("admission", result.id)
    assert task is app.tasks["ext.poison"]  # extension steps come after `registered`
    assert recorder.seen("run", result.id) == []
    assert "ext.poison" not in app.ran
    # its caller is not left waiting: a FAILURE naming the reason and the dead letter (which
    # can still be replayed once the reason is gone)
    with pytest.raises(InvalidTaskError, match="was dead-lettered: poisoned by the extension"):
        result.get(timeout=5)
    assert result.state == states.FAILURE
    assert f"`celeriac -A {app.main} dlq replay {dead[0].id}`" in str(result.result)


def test_a_dead_letter_decision_can_quarantine_without_failing_the_caller(running):
    app, worker, recorder = running
    kept = app.tasks["ext.quarantined"].delay()
    # admitted after it by the same consumer: once its failure is stored, the quarantine is done
    poisoned = app.tasks["ext.poison"].delay()
    with pytest.raises(InvalidTaskError):
        poisoned.get(timeout=5)
    [dead] = [d for d in dead_letters(app) if d.message.headers["id"] == kept.id]
    assert dead.reason == "quarantined by the extension"
    assert "ext.quarantined" not in app.ran
    # nothing stored: a replay's outcome is what its caller will read
    assert app.backend.get_task_meta(kept.id)["status"] == states.PENDING


def test_before_run_returning_revoked_drops_the_job_as_revoked(running):
    app, worker, recorder = running
    result = app.tasks["ext.vetoed"].delay()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    assert result.state == states.REVOKED
    _settled(app)
    assert len(recorder.seen("run", result.id)) == 1
    # A later task's outcome proves the worker moved on; the dropped one never ran or ended.
    marker = app.tasks["ext.add"].delay(1, 1)
    assert marker.get(timeout=10) == 2
    recorder.outcome_of(marker.id)
    assert "ext.vetoed" not in app.ran
    assert recorder.seen("outcome", result.id) == []


@pytest.mark.parametrize("name, args, state, ending", [
    ("ext.add", (2, 3), states.SUCCESS, Ending.SUCCEEDED),
    ("ext.fail", (), states.FAILURE, Ending.FAILED),
    ("ext.reject", (), states.REJECTED, Ending.REJECTED_DROP),
])
def test_after_outcome_gets_the_job_and_its_outcome(running, name, args, state, ending):
    app, worker, recorder = running
    result = app.tasks[name].delay(*args)
    job, outcome, _, _ = recorder.outcome_of(result.id)
    assert job.task_id == result.id and job.task is app.tasks[name]
    assert outcome.task_id == result.id
    assert outcome.state == state
    assert outcome.ending is ending
    assert recorder.seen("run", result.id)  # before_run came first
    _settled(app)
    if ending is Ending.REJECTED_DROP:
        assert [d.reason for d in dead_letters(app) if d.message.headers["id"] == result.id] == [
            "rejected by the task (Reject, requeue=False)"]


def test_after_outcome_comes_before_a_late_ack(running):
    app, worker, recorder = running
    result = app.tasks["ext.late"].delay()
    assert result.get(timeout=10) == "late"
    job, outcome, held, qsize = recorder.outcome_of(result.id)
    assert job.late and held and qsize >= 1  # its message was not settled yet
    assert outcome.ending is Ending.SUCCEEDED
    _settled(app)


@pytest.mark.parametrize("pool", POOLS)
def test_on_worker_start_and_stop(pool):
    app, recorder = _make_app()
    try:
        with start_worker(app, pool=pool, perform_ping_check=False) as worker:
            consumer = worker.consumer
            assert recorder.started == [consumer]  # before the worker reported ready
            assert recorder.stopped == []
            result = app.tasks["ext.add"].delay(20, 22)
            assert result.get(timeout=10) == 42
            recorder.outcome_of(result.id)
        assert recorder.started == [consumer]
        assert recorder.stopped == [consumer]
        kinds = [event[0] for event in recorder.events]
        assert kinds[0] == "start" and kinds[-1] == "stop"
        assert kinds[1:-1] == ["admission", "run", "outcome"]
    finally:
        dispose_test_app(app)
