"""The arguments a retry runs with when it gives only positionals or only keywords (Celery 5.7's
rules: nothing reaches a parameter twice). Pure logic: the task's ``run`` signature and the
first call's request."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celery
from celeriac.task import Context


@pytest.fixture
def app() -> Any:
    app = Celery("retry-arguments", broker="memory://", backend="memory://",
                 set_as_current=False)
    yield app
    app.close()


def arguments(task: Any, first: tuple[tuple, dict], args: Any, kwargs: Any) -> tuple:
    request = Context(args=first[0], kwargs=first[1])
    return task._retry_arguments(request, args, kwargs)


def test_nothing_given_keeps_the_first_call_and_both_given_replace_it(app: Any) -> None:
    @app.task
    def f(foo, bar=0):
        pass

    assert arguments(f, ((1,), {"bar": 2}), None, None) == ((1,), {"bar": 2})
    assert arguments(f, ((1,), {"bar": 2}), (5,), {"bar": 6}) == ((5,), {"bar": 6})


def test_new_positionals_drop_the_old_keywords_they_fill(app: Any) -> None:
    @app.task
    def f(foo, bar, label=None):
        pass

    assert arguments(f, ((), {"foo": 1, "bar": 2, "label": "x"}), (2, 3), None) == \
        ((2, 3), {"label": "x"})


def test_new_keywords_take_the_place_of_the_old_positionals_they_name(app: Any) -> None:
    @app.task
    def f(foo, bar, *rest, flag=False):
        pass

    assert arguments(f, ((1, 2, 9), {}), None, {"foo": 7, "flag": True}) == \
        ((7, 2, 9), {"flag": True})


def test_a_positional_only_parameter_is_never_matched_by_name(app: Any) -> None:
    @app.task
    def f(foo, /, bar):
        pass

    assert arguments(f, ((1, 2), {}), None, {"foo": 5}) == ((1, 2), {"foo": 5})
    assert arguments(f, ((), {"foo": 1}), (3, 4), None) == ((3, 4), {"foo": 1})


def test_a_bound_task_matches_names_after_self(app: Any) -> None:
    @app.task(bind=True)
    def f(self, foo, bar):
        pass

    assert arguments(f, ((1, 2), {}), None, {"bar": 5}) == ((1, 5), {})
