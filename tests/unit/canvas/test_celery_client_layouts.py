"""Workflows in the layout a Celery 5.7 client sends, run by a celeriac worker (in-process, on the
in-memory broker): what Celery's own integration suite (tests/celery_suite) showed to differ."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celery, chord, group, states
from celeriac.exceptions import ChordError
from celeriac.testing import start_worker


def in_process_worker(app: Celery) -> Any:
    """An in-process worker (threads, two slots) for one test's workflow."""
    return start_worker(app, pool="threads", concurrency=2, hostname="layouts@test",
                        perform_ping_check=False)


@pytest.fixture
def tasks(app: Celery) -> dict:
    @app.task(name="layouts.add")
    def add(x, y=0):
        return x + y

    @app.task(name="layouts.fail")
    def fail(*args):
        raise ValueError("header failed")

    @app.task(name="layouts.tsum")
    def tsum(values):
        return sum(values)

    return {"add": add, "fail": fail, "tsum": tsum}


def test_a_failed_chord_fails_the_chain_its_group_body_carries(app, tasks):
    """``chain(chord([a, fail], group(b, c)), chord([d, e], tsum))`` from a Celery client: the
    first chord's body is a group whose own ``chain`` option holds the second chord. When the
    first header fails, the second chord's body (the chain's result) is failed too, at once,
    instead of staying PENDING for ever."""
    add, fail, tsum = tasks["add"], tasks["fail"], tasks["tsum"]
    second = chord([add.s(1), add.s(2)], tsum.s())
    last = second.freeze()  # tsum's result: what the whole chain's caller waits on
    body = group(add.s(1), add.s(2))
    body.options["chain"] = [dict(second)]  # Celery's layout (wire order)
    with in_process_worker(app):
        chord([add.s(1, 1), fail.s()], body).apply_async()
        with pytest.raises(ChordError):
            last.get(timeout=10)
        assert last.state == states.FAILURE


def test_a_failed_chord_body_lists_its_task_style_errbacks_as_children(app, tasks):
    """Celery's ``chord_error_from_stack`` sends the body's task-style errbacks (one group, each
    given the body's id) before storing the body's failure, which then lists that group as its
    child: Celery's suite finds the errback's result through ``res.children[0].children[0]``."""
    add, fail = tasks["add"], tasks["fail"]

    @app.task(name="layouts.errback")
    def errback(request_id):
        return request_id

    body = add.s(100).on_error(errback.s())
    with in_process_worker(app):
        res = chord([add.s(1, 1), fail.s()], body).apply_async()
        with pytest.raises(ChordError):
            res.get(timeout=10)
        [sent] = res.children
        [errback_result] = sent.children
        assert errback_result.get(timeout=10) == res.id


def test_the_members_of_a_group_body_fail_with_the_header_tasks_exception(app, tasks):
    """``chain(group(a, fail), group(b, c))``: the members of the group body are stored with the
    header task's own exception (Celery 5.7), so ``get()`` raises what the header raised."""
    add, fail = tasks["add"], tasks["fail"]
    with in_process_worker(app):
        result = chord([add.si(1, 1), fail.si()], group(add.si(2, 2), add.si(3, 3)))()
        with pytest.raises(ValueError, match="header failed"):
            result.get(timeout=10)
        stored = [r.get(timeout=10, propagate=False) for r in result.results]
        assert [type(e) for e in stored] == [ValueError, ValueError]
        assert [r.state for r in result.results] == [states.FAILURE, states.FAILURE]


def test_a_chord_body_with_its_own_link_error_option_runs_it_once(app, tasks):
    """``chord(header, chord(...)).apply_async(link_error=errback)`` from a Celery client puts
    the errback in the body chord's own ``link_error`` option: it runs once when the header
    fails, given the id of the body's result."""
    add, fail, tsum = tasks["add"], tasks["fail"], tasks["tsum"]
    seen = []

    @app.task(name="layouts.note")
    def note(request, exc, traceback):
        seen.append((request.id, type(exc).__name__))

    inner = chord([tsum.s(), tsum.s()], tsum.s())
    last = inner.freeze()
    inner.options["link_error"] = [dict(note.s())]  # Celery's layout
    with in_process_worker(app):
        chord([add.si(1, 1), fail.si()], inner).apply_async()
        with pytest.raises(ChordError):
            last.get(timeout=10)
    assert seen == [(last.id, "ChordError")]


def test_a_group_bodys_own_link_error_runs_for_every_member_once(app, tasks):
    """A Celery client puts a chord's ``link_error`` in its group body's own option when the
    group has one already: when the header fails, each member runs its own errbacks and the
    group's, each once, and the group's own id is stored as failed (Celery 5.7)."""
    add, fail = tasks["add"], tasks["fail"]
    seen = []

    @app.task(name="layouts.note_group")
    def note(request, exc, traceback):
        seen.append((request.id, type(exc).__name__))

    body = group(add.si(2, 2), add.si(3, 3).on_error(note.s()))
    body.options["link_error"] = [dict(note.s())]  # Celery's layout
    body.options["task_id"] = "the-group-body"
    with in_process_worker(app):
        result = chord([add.si(1, 1), fail.si()], body)()
        with pytest.raises(ValueError, match="header failed"):
            result.get(timeout=10)
    members = [r.id for r in result.results]
    assert sorted(seen) == sorted((member, "ValueError") for member in members)
    assert app.backend.get_task_meta("the-group-body")["status"] == states.FAILURE

