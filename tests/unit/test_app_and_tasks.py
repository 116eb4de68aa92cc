"""The app and task API on the in-memory broker, with an in-process worker where a worker is
needed."""

from __future__ import annotations

import threading
import time
import uuid
import warnings

import pytest

import celeriac
from celeriac import Celery, shared_task, states
from celeriac.exceptions import ImproperlyConfigured, NotRegistered
from tests.waiting import wait_for


@pytest.fixture
def app():
    name = f"memory://{uuid.uuid4().hex}"
    app = Celery("proj", broker=name, backend=name)
    yield app
    app.close()


class InProcessWorker:
    def __init__(self, app: Celery, pool: str = "threads", concurrency: int = 2) -> None:
        self.worker = app.Worker(pool=pool, concurrency=concurrency, hostname="unit@test")
        self.thread = threading.Thread(target=self.worker.start, daemon=True)

    def __enter__(self) -> "InProcessWorker":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.worker.stop(warm=True)
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_task_naming_and_registry(app):
    @app.task
    def add(x, y):
        return x + y

    @app.task(name="custom.name")
    def other():
        return 1

    assert add.name == f"{__name__}.add"
    assert app.tasks[add.name] is add
    assert other.name == "custom.name"
    with pytest.raises(NotRegistered):
        app.tasks["nope"]


def test_calling_a_task_runs_it_in_process(app):
    @app.task(bind=True)
    def who(self, x):
        return (self.request.id, self.request.called_directly, x)

    assert who(5) == (None, True, 5)


def test_apply_runs_eagerly_with_retries(app):
    attempts = []

    @app.task(bind=True, max_retries=3)
    def flaky(self):
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=10)
        return "ok"

    result = flaky.apply()
    assert result.get() == "ok" and result.state == states.SUCCESS
    assert attempts == [0, 1, 2]


def test_task_always_eager(app):
    app.conf.task_always_eager = True

    @app.task
    def add(x, y):
        return x + y

    result = add.delay(1, 2)
    assert isinstance(result, celeriac.EagerResult) and result.get() == 3


def test_eager_failure_propagates_when_asked(app):
    @app.task
    def boom():
        raise KeyError("k")

    assert isinstance(boom.apply().result, KeyError)
    with pytest.raises(KeyError):
        boom.apply(throw=True)


def test_wrong_arguments_fail_at_call_time(app):
    @app.task
    def add(x, y):
        return x + y

    with pytest.raises(TypeError, match="add"):
        add.delay(1, 2, 3)


def test_shared_task_without_any_app_fails_clearly(monkeypatch):
    from celeriac import _context

    monkeypatch.setattr(_context, "_default_app", [])
    token = _context.current_app_var.set(None)
    try:
        @shared_task
        def lonely(x):
            return x

        assert lonely(3) == 3  # a plain call needs no broker
        with pytest.raises(ImproperlyConfigured, match="no Celery app"):
            lonely.delay(3)
    finally:
        _context.current_app_var.reset(token)


def test_shared_task_binds_to_the_current_app(app):
    @shared_task
    def mul(x, y):
        return x * y

    assert app.tasks[mul.name](2, 3) == 6
    other = Celery("other", broker="memory://other-shared", backend="memory://other-shared")
    try:
        assert mul.name in other.tasks
        assert mul.app is other  # the newest app is current
    finally:
        other.close()
        app.set_current()
        app.set_default()


def test_misspelled_setting_warns_with_suggestion():
    with pytest.warns(UserWarning, match="task_serializer"):
        Celery("x", broker="memory://typo", task_serialiser="json", set_as_current=False)


def test_invalid_setting_fails_at_startup_naming_it():
    app = Celery("x", broker="memory://bad", worker_prefetch_multiplier="four",
                 set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="worker_prefetch_multiplier"):
        app.finalize()


def test_config_from_object(app):
    class Config:
        task_default_queue = "jobs"
        result_expires = 60

    app.config_from_object(Config)
    assert app.conf.task_default_queue == "jobs" and app.conf.result_expires == 60


def test_round_trip_with_in_process_worker(app):
    @app.task
    def add(x, y):
        return x + y

    @app.task
    async def async_add(x, y):
        return x + y

    with InProcessWorker(app):
        assert add.delay(2, 3).get(timeout=10) == 5
        assert async_add.delay(4, 4).get(timeout=10) == 8
        assert app.send_task(add.name, (7, 7)).get(timeout=10) == 14


def test_ignore_result_stores_nothing(app):
    done = threading.Event()

    @app.task(ignore_result=True)
    def quiet():
        done.set()
        return 1

    with InProcessWorker(app):
        result = quiet.delay()
        assert done.wait(10)
    assert result.state == states.PENDING


def test_ignore_result_precedence(app):
    """Call option, then the task's own ignore_result, then task_ignore_result."""
    app.conf.task_ignore_result = True
    ran = []

    @app.task
    def follows_setting():
        ran.append("setting")
        return 1

    @app.task(ignore_result=False)
    def keeps():
        ran.append("keeps")
        return 2

    with InProcessWorker(app):
        assert keeps.delay().get(timeout=10) == 2  # the task's explicit False beats the setting
        stored_by_call = follows_setting.apply_async(ignore_result=False)
        assert stored_by_call.get(timeout=10) == 1  # the call's choice beats both
        by_name = app.send_task(follows_setting.name)  # no header: follows the setting
        ignored = follows_setting.delay()
        wait_for(lambda: ran.count("setting") >= 3, 10,
                 message=lambda: f"ran: {ran}")
    assert ran.count("setting") == 3
    assert by_name.state == states.PENDING and ignored.state == states.PENDING


def test_track_started_records_started_state(app):
    app.conf.task_track_started = True
    seen = []
    gate = threading.Event()

    @app.task(bind=True)
    def slow(self):
        seen.append(app.AsyncResult(self.request.id).state)
        gate.set()
        return 1

    with InProcessWorker(app):
        assert slow.delay().get(timeout=10) == 1
    assert seen == [states.STARTED]


def test_get_inside_a_task_is_refused_when_it_would_wait(app):
    @app.task
    def waits():  # an id nothing will ever finish: a get() here could only wait
        return app.AsyncResult("never-sent").get(timeout=1)

    with InProcessWorker(app):
        with pytest.raises(RuntimeError, match="Never call result.get"):
            waits.delay().get(timeout=10)


def test_forget_and_result_expiry(app):
    app.conf.result_expires = 1.0

    @app.task
    def add(x, y):
        return x + y

    with InProcessWorker(app):
        kept, expiring = add.delay(1, 1), add.delay(2, 2)
        assert kept.get(timeout=10) == 2 and expiring.get(timeout=10) == 4
        done_at = time.monotonic()
        assert app.AsyncResult(expiring.id).state == states.SUCCESS
        app.AsyncResult(kept.id).forget()
        assert app.AsyncResult(kept.id).state == states.PENDING
    time.sleep(max(0.0, done_at + 1.2 - time.monotonic()))
    assert app.AsyncResult(expiring.id).state == states.PENDING, "result_expires must be honoured"


def test_no_warnings_on_plain_use(app):
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @app.task
        def add(x, y):
            return x + y

        add.s(1, 2)


def test_app_signals_are_sent_once_at_first_use_and_a_handler_may_send_tasks():
    """Celery's on_configure/on_after_configure/on_after_finalize: sent once, with sender=app,
    when the app is first used; a handler that sends a task uses the same connection as the
    call that triggered it (none is built twice)."""
    import uuid

    url = f"memory://signals-{uuid.uuid4().hex}"
    app = Celery("signals", broker=url, backend=url, set_as_current=False)
    seen = []
    handlers_transport = []

    def on_after_configure(sender, source, **_):
        seen.append(("after_configure", sender, source is sender.conf))
        sender.send_task("proj.from_handler")
        handlers_transport.append(sender.transport)

    app.on_configure.connect(lambda sender, **_: seen.append(("configure", sender)), weak=False)
    app.on_after_configure.connect(on_after_configure, weak=False)
    app.on_after_finalize.connect(lambda sender, **_: seen.append(("finalize", sender)),
                                  weak=False)
    try:
        app.send_task("proj.first")
        first = app.transport
        app.send_task("proj.second")
        assert [s[0] for s in seen] == ["configure", "after_configure", "finalize"]
        assert all(s[1] is app for s in seen) and seen[1][2] is True
        assert app.transport is first and handlers_transport == [first]
        names = [d.message.headers["task"] for d in app.transport.fetch(["celery"], 10, 0)]
        assert sorted(names) == ["proj.first", "proj.from_handler", "proj.second"]
    finally:
        app.close()
