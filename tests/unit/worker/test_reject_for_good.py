"""``Reject(requeue=False)``: the task never runs again, so (as on Celery 5.7) its result is a
FAILURE holding the ``Reject``, and whatever waits on it (a caller, the rest of its chain, its
errbacks) learns of it at once. ``Reject(requeue=True)`` stores nothing: the task runs again."""

from __future__ import annotations

import pytest

from celeriac import signals, states
from celeriac.exceptions import Reject
from celeriac.testing import dispose_test_app, make_test_app, start_worker


@pytest.fixture
def app():
    app = make_test_app("reject")
    app.errbacks = []
    app.tries = []

    @app.task(name="reject.for_good", acks_late=True)
    def for_good():
        raise Reject("not for me", requeue=False)

    @app.task(name="reject.early_acked")  # Reject without acks_late: Celery stores it as well
    def early_acked():
        raise Reject("not for me either", requeue=False)

    @app.task(name="reject.then_run", bind=True, acks_late=True)
    def then_run(self):
        app.tries.append(self.request.id)
        if len(app.tries) == 1:
            raise Reject("once more", requeue=True)
        return "second"

    @app.task(name="reject.identity")
    def identity(x):
        return x

    @app.task(name="reject.errback")
    def errback(request, exc, traceback):
        app.errbacks.append(type(exc).__name__)

    yield app
    dispose_test_app(app)


@pytest.mark.parametrize("name", ["reject.for_good", "reject.early_acked"])
def test_a_reject_without_requeue_is_stored_as_a_failure(app, name):
    failures = []

    def on_failure(sender=None, exception=None, **_):
        failures.append(type(exception).__name__)

    signals.task_failure.connect(on_failure)
    try:
        with start_worker(app, pool="threads", concurrency=1):
            result = app.tasks[name].delay()
            with pytest.raises(Reject):
                result.get(timeout=10)
    finally:
        signals.task_failure.disconnect(on_failure)
    assert result.state == states.FAILURE and result.failed()
    assert failures == ["Reject"]


def test_the_rest_of_the_chain_and_the_errbacks_learn_of_it(app):
    sig = app.tasks["reject.for_good"].s() | app.tasks["reject.identity"].s()
    sig.link_error(app.tasks["reject.errback"].s())
    with start_worker(app, pool="threads", concurrency=1):
        result = sig.delay()
        with pytest.raises(Reject):
            result.get(timeout=10)
    assert result.parent.state == states.FAILURE
    assert app.errbacks == ["Reject"]


def test_a_reject_with_requeue_stores_nothing_and_runs_again(app):
    with start_worker(app, pool="threads", concurrency=1):
        result = app.tasks["reject.then_run"].delay()
        assert result.get(timeout=10) == "second"
    assert app.tries == [result.id, result.id]
