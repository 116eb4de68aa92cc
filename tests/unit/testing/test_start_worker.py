"""celeriac.testing: the in-process worker (start_worker), throwaway apps, and the pytest plugin.

Everything runs on private memory:// brokers in this process; the plugin tests run a user's test
files through pytester (in a pytest subprocess when a worker starts), as a project would.
"""

from __future__ import annotations

import threading

import pytest

from celeriac import states
from celeriac.testing import EmbeddedWorker, dispose_test_app, make_test_app, start_worker

pytest_plugins = ["pytester"]


def _make_app():
    app = make_test_app("tests.testing")

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.fail")
    def fail():
        raise ValueError("boom")

    return app


@pytest.fixture
def app():
    app = _make_app()
    yield app
    dispose_test_app(app)


# Stopping a worker takes up to a second (its fetch waits that long), so the tests that only
# need a running worker share one.
@pytest.fixture(scope="module")
def running():
    app = _make_app()
    with start_worker(app, pool="solo") as worker:
        yield app, worker
    dispose_test_app(app)


def _worker_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("celeriac-test-worker")}


def test_solo_runs_a_task_end_to_end(running):
    app, worker = running
    assert isinstance(worker, EmbeddedWorker) and worker.pool_kind == "solo"
    assert app.tasks["t.add"].delay(2, 3).get(timeout=10) == 5


def test_a_failing_task_raises_from_get(running):
    app, _ = running
    result = app.tasks["t.fail"].delay()
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=10)
    assert result.state == states.FAILURE


def test_the_app_is_the_default_while_the_worker_runs(running):
    from celeriac import _context

    app, _ = running
    assert _context._default_app == [app]  # what the worker's threads resolve shared tasks to


def test_threads_pool_without_ping_check_still_waits_until_consuming(app):
    before = _worker_threads()
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False) as worker:
        assert worker.pool_kind == "threads" and worker.concurrency == 2
        assert app.tasks["t.add"].delay(20, 22).get(timeout=10) == 42
    assert _worker_threads() == before


def test_the_worker_stops_when_the_block_ends(app):
    from celeriac import _context

    default_before = list(_context._default_app)
    before = _worker_threads()
    # A worker on another queue only: the ping check must be sent where it consumes.
    with start_worker(app, queues=["only-here"]) as worker:
        assert worker.queues == ["only-here"]
        assert app.tasks["t.add"].apply_async((1, 1), queue="only-here").get(timeout=10) == 2
    assert _worker_threads() == before
    assert _context._default_app == default_before
    late = app.tasks["t.add"].apply_async((5, 5), queue="only-here")
    # Nothing consumes any more: the message waits in the queue and the result stays pending.
    assert app.transport.qsize("only-here") == 1
    assert late.state == states.PENDING


def test_celery_ping_is_a_builtin(app):
    assert app.tasks["celery.ping"]() == "pong"
    assert "celery.ping" not in app.tasks.regular()


@pytest.mark.parametrize("pool", ["prefork", "processes"])
def test_prefork_is_refused_with_the_fix(app, pool):
    before = _worker_threads()
    with pytest.raises(ValueError, match=r"use pool='solo' or pool='threads'") as info:
        with start_worker(app, pool=pool):
            pass  # pragma: no cover
    assert "\n" not in str(info.value)
    assert _worker_threads() == before


def test_a_worker_that_cannot_start_is_reported():
    app = make_test_app(broker="nosuchscheme://nowhere")
    before = _worker_threads()
    try:
        with pytest.raises(RuntimeError, match="failed to start") as info:
            with start_worker(app, ping_task_timeout=5):
                pass  # pragma: no cover
        assert info.value.__cause__ is not None
        assert _worker_threads() == before
    finally:
        dispose_test_app(app)


def test_make_test_app_isolates_state():
    first, second = make_test_app(), make_test_app()
    try:
        assert first.broker_url != second.broker_url
        assert first.broker_url.startswith("memory://")
        assert first.result_backend_url == first.broker_url
        first.send_task("t.nothing")
        assert first.transport.qsize("celery") == 1
        assert second.transport.qsize("celery") == 0
    finally:
        dispose_test_app(first)
        dispose_test_app(second)
    from celeriac import _context

    assert _context.current_app_var.get() is not first  # not made current


#: the inner pytest runs skip unrelated installed plugins, which only cost start-up time
INNER_ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")

# The plugin is enabled in the user's conftest.py (as Celery's documentation advises): a marker
# used in the file that enables it would be read before the plugin registers it.
USER_CONFTEST = '''
pytest_plugins = ("celeriac.testing.pytest_plugin",)
'''

USER_TESTS = '''
import pytest

from celeriac import shared_task


@shared_task(name="user.mul")
def mul(x, y):
    return x * y


@pytest.fixture(scope="session")
def celery_config():
    return {"task_default_queue": "user-queue"}


def test_round_trip(celery_app, celery_worker):
    @celery_app.task(name="user.add")
    def add(x, y):
        return x + y

    @celery_app.task(name="user.fail")
    def fail():
        raise KeyError("nope")

    celery_worker.reload()
    assert add.delay(4, 4).get(timeout=10) == 8
    assert mul.delay(3, 5).get(timeout=10) == 15   # a shared task, on the current app
    assert celery_worker.queues == ["user-queue"]
    with pytest.raises(KeyError):
        fail.delay().get(timeout=10)


@pytest.mark.celery(result_extended=True)
def test_marker_adds_settings(celery_app):
    assert celery_app.conf.result_extended is True
    assert celery_app.conf.task_default_queue == "user-queue"


def test_each_test_has_its_own_app(celery_app):
    assert celery_app.transport.qsize("user-queue") == 0
    celery_app.send_task("user.never")


def test_session_worker(celery_session_app, celery_session_worker):
    assert mul.delay(2, 2).get(timeout=10) == 4
'''


def test_plugin_fixtures_in_a_users_test_file(pytester):
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*INNER_ARGS, "-W", "error", timeout=60)
    result.assert_outcomes(passed=4)


def test_plugin_enabled_in_a_test_file_refuses_prefork_clearly(pytester):
    pytester.makepyfile(test_user='''
import pytest

pytest_plugins = ("celeriac.testing.pytest_plugin",)


@pytest.fixture(scope="session")
def celery_worker_pool():
    return "prefork"


def test_needs_a_worker(celery_worker):
    pass
''')
    # No worker starts here, so it runs in this process (quicker than a second subprocess).
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*use pool='solo' or pool='threads'*"])
