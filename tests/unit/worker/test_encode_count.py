"""Each value a task's success makes is encoded once per use: the result write, the chord count
and each follow-up message; no extra encode only to check that the result can be stored."""

from __future__ import annotations

import uuid

import pytest

from celeriac import states
from celeriac.protocol import serialization
from celeriac.task import Context
from celeriac.testing import dispose_test_app, make_test_app
from celeriac.worker.executor import execute


@pytest.fixture
def app():
    app = make_test_app("encode-count")

    @app.task(name="count.add")
    def add(x, y):
        return x + y

    @app.task(name="count.show")
    def show(value):
        return value

    yield app
    dispose_test_app(app)


@pytest.fixture
def json_dumps(monkeypatch):
    """Counts the JSON encoder's runs (instrumentation only: it still encodes), wherever they
    come from: the serializer, or a task body encoded in parts (protocol/v2.py)."""
    calls: list[object] = []
    real = serialization._json_encode

    def counting(obj):
        calls.append(obj)
        return real(obj)

    monkeypatch.setattr(serialization, "_json_encode", counting)
    return calls


def _context(app, **fields):
    task_id = str(uuid.uuid4())
    base = dict(id=task_id, task="count.add", args=(1, 2), kwargs={}, retries=0, root_id=task_id,
                parent_id=None, group=None, group_index=None, chord=None, callbacks=None,
                errbacks=None, chain=None, delivery_info={}, hostname="test@host",
                is_eager=False, called_directly=False, ignore_result=None)
    return Context(**{**base, **fields})


def _chord(app):
    group_id = str(uuid.uuid4())
    app.backend.set_chord_size(group_id, 2)
    return dict(group=group_id, group_index=0, chord=dict(app.tasks["count.show"].s()))


@pytest.mark.parametrize("shape, encodes", [
    ("plain", 1),            # the result write
    ("link", 2),             # the result write, the callback's message
    ("chain", 2),            # the result write, the next step's message
    ("chord", 2),            # the result write, the chord count
    ("chord+link", 3),       # the result write, the chord count, the callback's message
])
def test_a_success_encodes_each_value_once_per_use(app, json_dumps, shape, encodes):
    fields: dict = {}
    if "link" in shape:
        fields["callbacks"] = [dict(app.tasks["count.show"].s())]
    if shape == "chain":
        fields["chain"] = [dict(app.tasks["count.show"].s())]
    if "chord" in shape:
        fields.update(_chord(app))
    ctx = _context(app, **fields)
    outcome = execute(app.tasks["count.add"], ctx)
    assert outcome.state == states.SUCCESS
    assert len(json_dumps) == encodes, json_dumps
    meta = app.backend.get_task_meta(ctx.id)
    assert meta["status"] == states.SUCCESS and meta["result"] == 3
    follow_ups = 1 if ("link" in shape or shape == "chain") else 0
    assert len(meta["children"]) == follow_ups == app.transport.qsize("celery")


def test_the_children_are_the_ids_the_follow_ups_were_sent_with(app):
    fields = {"callbacks": [dict(app.tasks["count.show"].s()), dict(app.tasks["count.show"].s())],
              "chain": [dict(app.tasks["count.show"].s())]}
    ctx = _context(app, **fields)
    execute(app.tasks["count.add"], ctx)
    children = [child[0][0] for child in app.backend.get_task_meta(ctx.id)["children"]]
    assert len(children) == 3
    for child in children:  # each was sent, and each is waiting in the queue
        assert app.AsyncResult(child).state == states.PENDING
    assert app.transport.qsize("celery") == 3


def test_a_group_callback_still_gets_one_check_and_is_listed(app, json_dumps):
    from celeriac import group

    callback = group(app.tasks["count.show"].s(), app.tasks["count.show"].s())
    ctx = _context(app, callbacks=[dict(callback)])
    execute(app.tasks["count.add"], ctx)
    meta = app.backend.get_task_meta(ctx.id)
    assert meta["status"] == states.SUCCESS and len(meta["children"]) == 1
    # the check, two group members' messages, the result write
    assert len(json_dumps) == 4


def test_an_unencodable_result_sends_no_follow_up(app):
    @app.task(name="count.bad")
    def bad():
        return {1, 2}

    for fields in ({"callbacks": [dict(app.tasks["count.show"].s())]},
                   {"chain": [dict(app.tasks["count.show"].s())]},
                   {"callbacks": [dict(app.tasks["count.show"].s())], **_chord(app)}):
        ctx = _context(app, task="count.bad", args=(), **fields)
        outcome = execute(app.tasks["count.bad"], ctx)
        assert outcome.state == states.FAILURE
        assert app.backend.get_task_meta(ctx.id)["status"] == states.FAILURE
        assert app.transport.qsize("celery") == 0
