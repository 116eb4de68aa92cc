"""Request fields and retries the way Celery 5.7's integration suite reads them: the run's time
limits in ``self.request``, and a retry keeping the message's priority and custom headers."""

from __future__ import annotations

import pytest

from celeriac.testing import dispose_test_app, make_test_app, start_worker


@pytest.fixture
def app():
    app = make_test_app("request_fields")

    @app.task(name="fields.limits", bind=True)
    def limits(self):
        return [self.request.time_limit, self.request.soft_time_limit]

    @app.task(name="fields.declared", bind=True, time_limit=60, soft_time_limit=45)
    def declared(self):
        return [self.request.time_limit, self.request.soft_time_limit]

    @app.task(name="fields.retry_once", bind=True, max_retries=1)
    def retry_once(self):
        if not self.request.retries:
            raise self.retry(countdown=0)
        return {"priority": self.request.delivery_info.get("priority"),
                "header": (self.request.headers or {}).get("x-test-header")}

    yield app
    dispose_test_app(app)


def test_time_limits_are_the_messages_else_the_tasks_own(app):
    with start_worker(app, pool="threads", concurrency=1):
        assert app.tasks["fields.limits"].delay().get(timeout=10) == [None, None]
        assert app.tasks["fields.limits"].apply_async(
            time_limit=30, soft_time_limit=20).get(timeout=10) == [30, 20]
        assert app.tasks["fields.declared"].delay().get(timeout=10) == [60, 45]
        assert app.tasks["fields.declared"].apply_async(
            time_limit=10, soft_time_limit=5).get(timeout=10) == [10, 5]


def test_a_retry_keeps_the_priority_and_the_callers_headers(app):
    with start_worker(app, pool="threads", concurrency=1):
        result = app.tasks["fields.retry_once"].apply_async(
            priority=7, headers={"x-test-header": "test-value"})
        assert result.get(timeout=10) == {"priority": 7, "header": "test-value"}


def test_a_retry_switching_between_args_and_kwargs_replaces_what_clashes(app):
    """Celery 5.7 (#6494): ``retry(kwargs={"foo": 2})`` of a call made with ``(1, 2)`` runs
    with ``foo=2, bar=2``; ``retry(args=(2, 3))`` of a call made with ``foo=1, bar=2`` too."""

    @app.task(name="fields.to_kwargs", bind=True, max_retries=1)
    def to_kwargs(self, foo, bar):
        if not self.request.retries:
            raise self.retry(kwargs={"foo": foo + 1}, countdown=0)
        return [foo, bar]

    @app.task(name="fields.to_args", bind=True, max_retries=1)
    def to_args(self, foo, bar, label=None):
        if not self.request.retries:
            raise self.retry(args=(foo + 1, bar + 1), countdown=0)
        return [foo, bar, label]

    with start_worker(app, pool="threads", concurrency=1):
        assert to_kwargs.apply_async(args=(1, 2)).get(timeout=10) == [2, 2]
        assert to_args.apply_async(kwargs={"foo": 1, "bar": 2, "label": "x"}).get(
            timeout=10) == [2, 3, "x"]


def test_a_retry_keeps_the_messages_expiry_time_limits_and_shadow(app):
    seen = []

    @app.task(name="fields.retry_keeps", bind=True, max_retries=1)
    def retry_keeps(self):
        request = self.request
        seen.append((request.expires, request.time_limit, request.soft_time_limit,
                     request.shadow))
        if not request.retries:
            raise self.retry(countdown=0)
        return "done"

    with start_worker(app, pool="threads", concurrency=1):
        result = retry_keeps.apply_async(expires=600, time_limit=30, soft_time_limit=20,
                                         shadow="fields.shown-as")
        assert result.get(timeout=10) == "done"
    first, again = seen
    assert first[0] is not None and first[1:] == (30, 20, "fields.shown-as")
    assert again == first, "the retry's message carries the first one's expiry and limits"
