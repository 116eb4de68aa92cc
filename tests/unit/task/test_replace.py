"""``Task.replace`` and ``Task.add_to_chord`` without a worker: eager runs (``apply()`` and
``task_always_eager``), a direct call, bad input, and what a replacement is set up to carry
(pure logic on a request). The worker side is tests/integration/test_replace.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator

import pytest

from celeriac import chain, chord, group
from celeriac.canvas import replacing
from celeriac.exceptions import Ignore, ImproperlyConfigured
from celeriac.task import Context
from tests.apps import memory_apps


@pytest.fixture
def rt() -> Iterator[SimpleNamespace]:
    with memory_apps("replace") as make:
        app = make()

        @app.task(name="r.add")
        def add(x, y):
            return x + y

        @app.task(name="r.tsum")
        def tsum(values):
            return sum(values)

        @app.task(name="r.add_replaced", bind=True)
        def add_replaced(self, x, y):
            return self.replace(add.s(x, y))

        @app.task(name="r.add_to_all", bind=True)
        def add_to_all(self, nums, val):
            return self.replace(group(add.s(n, val) for n in nums))

        @app.task(name="r.to_chain", bind=True)
        def to_chain(self, x):
            return self.replace(add.s(x, 1) | add.s(10))

        @app.task(name="r.to_chord", bind=True)
        def to_chord(self, nums):
            return self.replace(chord([add.s(n, 1) for n in nums], tsum.s()))

        @app.task(name="r.delivery", bind=True)
        def delivery(self):
            return self.request.delivery_info

        yield SimpleNamespace(app=app, add=add, tsum=tsum, add_replaced=add_replaced,
                              add_to_all=add_to_all, to_chain=to_chain, to_chord=to_chord,
                              delivery=delivery)


# ---- eager ---------------------------------------------------------------------------------
@pytest.mark.parametrize("always_eager", [False, True], ids=["apply", "always_eager"])
def test_eager_replacement_in_every_position(rt, always_eager):
    rt.app.conf.task_always_eager = always_eager

    def run(sig):
        return (sig.apply_async() if always_eager else sig.apply()).get()

    assert run(rt.add_replaced.s(1, 2)) == 3
    assert run(rt.to_chain.s(1)) == 12
    assert run(rt.add_to_all.s([1, 2], 1)) == [2, 3]
    assert run(rt.to_chord.s([1, 2])) == 5
    assert run(rt.add.s(1, 1) | rt.add_replaced.s(10) | rt.add.s(100)) == 112
    assert run(group(rt.add.s(1, 1), rt.to_chain.s(1), rt.add_to_all.s([1], 1))) == \
        [2, 12, [2]]
    assert run(chord([rt.add_replaced.s(1, 2), rt.to_chord.s([1])], rt.tsum.s())) == 5
    assert run(chord([rt.add.s(1, 1), rt.add.s(2, 2)], rt.add_to_all.s(10))) == [12, 14]


def test_an_eager_replaced_tasks_callback_runs_once_with_the_replacements_value(rt):
    seen = []
    rt.app.conf.task_always_eager = True  # (apply() alone sends callbacks to the broker)

    @rt.app.task(name="r.seen")
    def record(value):
        seen.append(value)

    assert rt.add_replaced.apply((2, 3), link=record.s()).get() == 5
    assert seen == [5]


def test_eager_delivery_info_has_celerys_keys(rt):
    assert rt.delivery.apply(priority=4).get() == {
        "is_eager": True, "exchange": None, "routing_key": None, "priority": 4}


# ---- outside a worker ----------------------------------------------------------------------
def test_replace_called_directly_sends_the_replacement_and_raises_ignore(rt):
    # as on Celery: the task's code stops there, the replacement is sent anyway
    with pytest.raises(Ignore):
        rt.add_replaced(1, 2)
    assert rt.app.transport.qsize("celery") == 1


def test_bad_input_is_named(rt):
    with pytest.raises(TypeError, match="takes a signature"):
        replacing.prepare(rt.app, Context(id="x"), "r.add")
    with pytest.raises(ImproperlyConfigured, match="empty chain"):
        replacing.prepare(rt.app, Context(id="x"), chain())
    with pytest.raises(ImproperlyConfigured, match="part of a chord"):
        replacing.prepare(rt.app, Context(id="x"), rt.add.s(1, 1).set(chord={"task": "b"}))
    with pytest.raises(ValueError, match="not member of any chord"):
        replacing.addition(rt.app, Context(id="x"), rt.add.s(1, 1))
    in_chord = Context(id="x", group="g", group_index=0, chord={"task": "r.tsum"})
    with pytest.raises(TypeError, match="a group has several"):
        replacing.addition(rt.app, in_chord, group(rt.add.s(1, 1)))


# ---- what a replacement carries (pure logic) -----------------------------------------------
def _worker_request(**fields):
    base = dict(id="replaced-id", root_id="root-id", group="group-id", group_index=2,
                chord={"task": "r.tsum", "args": [], "kwargs": {}, "options": {},
                       "subtask_type": None, "immutable": False},
                called_directly=False, is_eager=False, replaced_task_nesting=1)
    return Context(**{**base, **fields})


def test_a_signature_takes_the_replaced_tasks_id_and_place(rt):
    callback, errback = rt.add.s(100), rt.tsum.s()
    request = _worker_request(callbacks=[dict(callback)], errbacks=[dict(errback)])
    sig = replacing.prepare(rt.app, request, rt.add.s(1, 2))
    options = sig.options
    assert (options["task_id"], options["group_id"], options["group_index"],
            options["root_id"]) == ("replaced-id", "group-id", 2, "root-id")
    assert options["chord"]["task"] == "r.tsum"
    assert [s["task"] for s in options["link"]] == ["r.add"]
    assert [s["task"] for s in options["link_error"]] == ["r.tsum"]
    assert options["headers"] == {"replaced_task_nesting": 2}


def test_a_group_becomes_a_chord_joined_by_accumulate_with_the_replaced_tasks_place(rt):
    sig = replacing.prepare(rt.app, _worker_request(), group(rt.add.s(1, 1), rt.add.s(2, 2)))
    assert isinstance(sig, chord)
    body = sig.body
    assert body.task == "celery.accumulate" and body.kwargs == {"index": 0}
    assert (body.options["task_id"], body.options["group_id"], body.options["group_index"]) == \
        ("replaced-id", "group-id", 2)
    members = sig.tasks.tasks
    assert all(m.options["group_id"] != "group-id" for m in members)  # the inner group's own
    assert rt.app.tasks["celery.accumulate"]([1, 2], index=0) == [1, 2]


def test_the_rest_of_the_replaced_tasks_chain_follows_the_replacement(rt):
    after = rt.add.s(1000).set(task_id="next-id")
    request = _worker_request(group=None, group_index=None, chord=None, chain=[dict(after)])
    sig = replacing.prepare(rt.app, request, rt.add.s(1, 2) | rt.add.s(10))
    assert isinstance(sig, chain)
    ids = [step.options.get("task_id") for step in sig.tasks]
    assert ids[1:] == ["replaced-id", "next-id"] and ids[0] not in ids[1:]
    assert all(step.options["headers"]["replaced_task_nesting"] == 2 for step in sig.tasks)


def test_the_callers_signature_is_left_as_it_was(rt):
    given = rt.add.s(1, 2)
    replacing.prepare(rt.app, _worker_request(), given)
    assert "task_id" not in given.options
