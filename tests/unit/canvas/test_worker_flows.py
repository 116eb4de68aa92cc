"""Workflow edge cases run by an in-process worker on the in-memory broker: what happens when
the result store fails a chord, and task classes with their own ``apply_async``."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celery, chord, group
from celeriac.exceptions import ChordError
from celeriac.testing import start_worker


def in_process_worker(app: Celery) -> Any:
    """An in-process worker (threads, two slots) for one test's workflow."""
    return start_worker(app, pool="threads", concurrency=2, hostname="flows@test",
                        perform_ping_check=False)


def test_a_store_failure_while_joining_fails_the_body_instead_of_losing_it(app, monkeypatch):
    @app.task(name="flows.identity")
    def identity(x):
        return x

    @app.task(name="flows.total")
    def total(values):
        return sum(values)

    backend = app.backend
    real = backend.chord_results
    calls = []

    def flaky(group_id):
        calls.append(group_id)
        if len(calls) == 1:
            raise ConnectionError("blip")
        return real(group_id)

    monkeypatch.setattr(backend, "chord_results", flaky)
    with in_process_worker(app):
        result = chord([identity.s(1), identity.s(2)], total.s())()
        stored = result.get(timeout=10, propagate=False)
        assert isinstance(stored, ChordError) and "Join error" in str(stored)
        # the next chord is not affected
        assert chord([identity.s(3), identity.s(4)], total.s())().get(timeout=10) == 7


def test_a_task_class_with_its_own_apply_async_is_called_through_it_in_a_group(app):
    sent = []

    class Audited(app.Task):
        def apply_async(self, args=None, kwargs=None, **options):
            sent.append((self.name, tuple(args or ())))
            return super().apply_async(args, kwargs, **options)

    @app.task(name="flows.double", base=Audited)
    def double(x):
        return 2 * x

    with in_process_worker(app):
        assert group(double.s(1), double.s(2))().get(timeout=10) == [2, 4]
    assert sent == [("flows.double", (1,)), ("flows.double", (2,))]


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_the_body_gets_every_header_value_in_order_whatever_the_result_serializer(
        make_app, serializer):
    """The join's entries are decoded as one JSON array when they are JSON, one by one
    otherwise: the body's argument is the same either way, and a failed member still fails
    the body."""
    app = make_app(result_serializer=serializer, accept_content=["json", "pickle"],
                   result_accept_content=["json", "pickle"])

    @app.task(name="flows.echo")
    def echo(x):
        return x

    @app.task(name="flows.boom")
    def boom():
        raise ValueError("header boom")

    @app.task(name="flows.keep")
    def keep(values):
        return values

    values = [1, "two", [3, {"four": 4}], None, 5.5]
    with in_process_worker(app):
        result = chord([echo.s(v) for v in values], keep.s())()
        assert result.get(timeout=10) == values
        failed = chord([echo.s(1), boom.s()], keep.s())()
        stored = failed.get(timeout=10, propagate=False)
    assert isinstance(stored, ChordError) and "header boom" in str(stored)
