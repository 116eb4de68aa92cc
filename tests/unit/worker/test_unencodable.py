"""A return value the result serializer cannot encode: the task fails with an EncodeError naming
the type and the task (stored, counted by its chord, its errbacks run), in an eager ``apply()``
and in an in-process worker on the memory broker (where results are written inline)."""

from __future__ import annotations

import pytest

from celeriac import chord, states
from celeriac.exceptions import ChordError, EncodeError
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker.executor import unencodable


class Opaque:
    """Nothing any serializer but pickle can encode."""


@pytest.fixture
def app():
    app = make_test_app("unencodable", task_store_eager_result=True)
    calls: dict[str, list] = {"on_failure": [], "errback": [], "linked": []}
    app.calls = calls

    @app.task(name="unenc.bad")
    def bad():
        return {"fine": [1, "two"], "not": [{1, 2}]}

    class Recording(app.Task):
        def on_failure(self, exc, task_id, args, kwargs, einfo):
            calls["on_failure"].append(exc)

    @app.task(name="unenc.watched", base=Recording)
    def watched():
        return Opaque()

    @app.task(name="unenc.retrying", autoretry_for=(TypeError,), max_retries=3)
    def retrying():
        return {1}

    @app.task(name="unenc.errback")
    def errback(request, exc, traceback):
        calls["errback"].append(exc)

    @app.task(name="unenc.linked")
    def linked(value):
        calls["linked"].append(value)

    @app.task(name="unenc.add")
    def add(x, y):
        return x + y

    @app.task(name="unenc.collect")
    def collect(values):
        return values

    yield app
    dispose_test_app(app)


def test_apply_stores_and_returns_an_encode_error_naming_the_type_and_the_task(app):
    result = app.tasks["unenc.bad"].apply()
    assert result.state == states.FAILURE
    exc = result.result
    assert isinstance(exc, EncodeError)
    assert str(exc) == (
        "task unenc.bad returned a value the 'json' result serializer cannot encode: set is not "
        "JSON serializable; return a JSON-friendly value, or choose a serializer that can, e.g. "
        "result_serializer='pickle' with 'pickle' in accept_content")
    stored = app.AsyncResult(result.id)
    assert stored.state == states.FAILURE
    with pytest.raises(EncodeError, match="set is not JSON serializable"):
        stored.get(timeout=1)
    with pytest.raises(EncodeError):
        app.tasks["unenc.bad"].apply(throw=True)


def test_apply_without_storing_returns_the_value_as_celery_does(app):
    app.conf.task_store_eager_result = False
    result = app.tasks["unenc.bad"].apply()
    assert result.state == states.SUCCESS and result.result["not"] == [{1, 2}]


def test_on_failure_and_errbacks_run_and_no_link_is_sent(app):
    sig = app.tasks["unenc.watched"].s()
    sig.link(app.tasks["unenc.linked"].s())
    sig.link_error(app.tasks["unenc.errback"].s())
    result = sig.apply()
    assert result.state == states.FAILURE
    [seen] = app.calls["on_failure"]
    assert isinstance(seen, EncodeError)
    assert f"{__name__}.Opaque is not JSON serializable" in str(seen)
    assert [type(e) for e in app.calls["errback"]] == [EncodeError]
    assert app.calls["linked"] == []


def test_autoretry_for_type_error_does_not_retry_an_unencodable_result(app):
    result = app.tasks["unenc.retrying"].apply()
    assert result.state == states.FAILURE and isinstance(result.result, EncodeError)


def test_pickle_names_what_cannot_be_pickled():
    app = make_test_app("unencodable-pickle", result_serializer="pickle",
                        accept_content=["json", "pickle"], task_store_eager_result=True)
    try:
        @app.task(name="unenc.lambda")
        def returns_a_lambda():
            return [1, lambda: 2]

        result = app.tasks["unenc.lambda"].apply()
        assert isinstance(result.result, EncodeError)
        assert "the 'pickle' result serializer cannot encode: function cannot be pickled" \
            in str(result.result)
        with pytest.raises(EncodeError, match="function cannot be pickled"):
            app.AsyncResult(result.id).get(timeout=1)
    finally:
        dispose_test_app(app)


def test_a_value_no_part_of_which_fails_is_described_by_the_serializer_error(app):
    # a tuple key: every part encodes alone, the dict as a whole does not
    with pytest.raises(EncodeError) as raised:
        app.backend.encode({(1, 2): "x"})
    error = unencodable(app.tasks["unenc.bad"], app.backend, {(1, 2): "x"}, raised.value)
    assert "cannot encode: TypeError: keys must be str" in str(error)
    assert isinstance(error.__cause__, TypeError)


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_in_a_worker_the_task_fails_and_the_worker_goes_on(app, pool):
    with start_worker(app, pool=pool, concurrency=2, perform_ping_check=False):
        with pytest.raises(EncodeError, match="task unenc.bad returned a value the 'json'"):
            app.tasks["unenc.bad"].delay().get(timeout=10)
        assert app.tasks["unenc.add"].delay(1, 2).get(timeout=10) == 3
        header = [app.tasks["unenc.add"].s(1, 1), app.tasks["unenc.bad"].s()]
        with pytest.raises(ChordError, match="set is not JSON serializable"):
            chord(header)(app.tasks["unenc.collect"].s()).get(timeout=10)
    assert app.transport.qsize("celery") == 0
    assert app.transport.dead_letters() == []


# ---- a returned AsyncResult / GroupResult is stored in its tuple form, as Celery stores it ------
def test_a_returned_async_result_is_stored_as_its_tuple_form(app):
    @app.task(name="unenc.returns_result")
    def returns_result():
        return app.AsyncResult("child-id")

    result = returns_result.apply()
    assert result.state == states.SUCCESS
    assert app.AsyncResult(result.id).get(timeout=1) == [["child-id", None], None]


def test_a_returned_group_result_is_stored_as_its_tuple_form(app):
    from celeriac.canvas.signature import result_from_tuple
    from celeriac.result import GroupResult

    @app.task(name="unenc.returns_group")
    def returns_group():
        return GroupResult("g-id", [app.AsyncResult("a"), app.AsyncResult("b")], app=app)

    with start_worker(app, pool="threads", concurrency=1):
        stored = app.tasks["unenc.returns_group"].delay().get(timeout=10)
    rebuilt = result_from_tuple(stored, app=app)
    assert isinstance(rebuilt, GroupResult)
    assert rebuilt.id == "g-id" and [r.id for r in rebuilt.results] == ["a", "b"]

