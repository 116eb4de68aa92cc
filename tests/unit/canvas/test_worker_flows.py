"""Workflow edge cases run by an in-process worker on the in-memory broker: what happens when
the result store fails a chord, and task classes with their own ``apply_async``."""

from __future__ import annotations

from typing import Any

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
