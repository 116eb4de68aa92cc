"""Signatures as data: Celery's dict layout, JSON and pickle round trips, partial application and
the ``|`` algebra that builds chains and chords. Pure: nothing is sent."""

from __future__ import annotations

import json
import pickle

import pytest

from celeriac import Signature, chain, chord, chunks, group, signature, subtask, xmap
from celeriac.canvas import maybe_signature, xstarmap
from celeriac.canvas.primitives import chord_size


@pytest.fixture
def add(app):
    @app.task(name="t.add")
    def add(x, y):
        return x + y

    return add


@pytest.fixture
def xsum(app):
    @app.task(name="t.xsum")
    def xsum(values):
        return sum(values)

    return xsum


def test_a_signature_is_a_dict_with_celerys_keys(add):
    sig = add.s(2, 2)
    assert dict(sig) == {"task": "t.add", "args": (2, 2), "kwargs": {}, "options": {},
                         "subtask_type": None, "immutable": False}
    assert add.si(1).immutable and add.signature((1,), immutable=True).immutable
    assert add.signature((1,), {"y": 2}, countdown=5).options == {"countdown": 5}
    assert add.subtask((1,), {}, {"queue": "q"}).options == {"queue": "q"}


@pytest.mark.parametrize("build", [
    lambda add, xsum: add.s(2, 2).set(countdown=1),
    lambda add, xsum: add.s(1) | add.s(2) | add.s(3),
    lambda add, xsum: group(add.s(i, i) for i in range(3)),
    lambda add, xsum: chord([add.s(1, 1), add.s(2, 2)], xsum.s()),
    lambda add, xsum: add.map([1, 2]),
    lambda add, xsum: add.starmap([(1, 2)]),
    lambda add, xsum: add.chunks([(1, 2), (3, 4)], 1),
    lambda add, xsum: group(add.s(1, 1) | add.s(2), chord([add.s(1, 1)], xsum.s())),
], ids=["task", "chain", "group", "chord", "map", "starmap", "chunks", "nested"])
def test_json_and_pickle_round_trips_keep_the_kind(app, add, xsum, build):
    sig = build(add, xsum)
    from_json = subtask(json.loads(json.dumps(sig)))
    assert type(from_json) is type(sig)
    assert json.loads(json.dumps(from_json)) == json.loads(json.dumps(sig))
    from_pickle = pickle.loads(pickle.dumps(sig))
    assert type(from_pickle) is type(sig) and from_pickle == sig


def test_nested_members_come_back_as_their_own_classes(add, xsum):
    data = json.loads(json.dumps(group(add.s(1, 1) | add.s(2), chord([add.s(1, 1)], xsum.s()))))
    rebuilt = signature(data)
    assert [type(t) for t in rebuilt.tasks] == [chain, chord]
    assert type(rebuilt.tasks[1].body) is Signature and type(rebuilt.tasks[1].tasks) is group


def test_clone_is_partial_application_and_a_deep_copy(add):
    sig = add.s(1, z=1).set(queue="a")
    clone = sig.clone((0,), {"z": 2}, priority=3)
    assert (clone.args, clone.kwargs, clone.options) == ((0, 1), {"z": 2},
                                                         {"queue": "a", "priority": 3})
    clone.link(add.s(9))
    assert "link" not in sig.options  # the copy's lists are its own
    immutable = add.si(5, 5).clone((1,), {"extra": 1})
    assert (immutable.args, immutable.kwargs) == ((5, 5), {})
    # an option that decides the chord a task counts toward never changes once set
    member = add.s(1).set(group_id="g1")
    assert member.clone(group_id="g2").options["group_id"] == "g1"


def test_set_link_and_link_error(add):
    sig = add.s(1)
    assert sig.set(countdown=3, immutable=True) is sig and sig.immutable
    callback, errback = add.s(2), add.s(3)
    assert sig.link(callback) is callback and sig.link_error(errback) is errback
    assert sig.options["link"] == [callback] and sig.options["link_error"] == [errback]
    assert sig.on_error(add.s(4)) is sig  # Celery's chaining form


def test_freeze_fixes_the_id_once(app, add):
    sig = add.s(1, 1)
    first = sig.freeze()
    assert sig.id == first.id and sig.freeze().id == first.id
    assert sig.options["reply_to"] == app.oid  # as Celery's frozen signatures carry it


def test_pipe_builds_chains(add):
    a, b, c = add.s(1), add.s(2), add.s(3)
    built = a | b | c
    assert type(built) is chain and [t.args for t in built.tasks] == [(1,), (2,), (3,)]
    assert [t.args for t in (a | (b | c)).tasks] == [(1,), (2,), (3,)]
    assert [t.args for t in ((a | b) | (c | add.s(4))).tasks] == [(1,), (2,), (3,), (4,)]
    # a one-member group is just its task
    assert [type(t) for t in (a | group(b)).tasks] == [Signature, Signature]


def test_pipe_turns_group_then_task_into_a_chord(add, xsum):
    g = group(add.s(1, 1), add.s(2, 2))
    assert type(g | xsum.s()) is chord
    upgraded = add.s(1, 1) | g | xsum.s()
    assert [type(t) for t in upgraded.tasks] == [Signature, chord]
    assert upgraded.tasks[1].body.task == "t.xsum"
    assert (g | group()) is g  # an empty group adds nothing
    extended = chord(g, xsum.s()) | add.s(10)
    assert type(extended) is chord and type(extended.body) is chain


def test_chord_size_counts_what_the_body_waits_for(add, xsum):
    header = group(add.s(1, 1), group(add.s(2, 2), add.s(3, 3)), add.s(1) | add.s(2),
                   chord([add.s(1, 1), add.s(2, 2)], xsum.s()))
    assert chord_size(header) == 1 + 2 + 1 + 1
    assert chord_size(group()) == 0


def test_map_starmap_and_chunks_in_celerys_shape(add):
    assert dict(add.map([1, 2]))["kwargs"]["it"] == [1, 2]
    assert add.map([1]).task == "celery.map" and add.starmap([(1, 2)]).task == "celery.starmap"
    assert type(add.starmap([])) is xstarmap and type(add.map([])) is xmap
    parts = add.chunks(zip(range(5), range(5)), 2)
    assert type(parts) is chunks
    as_group = parts.group()
    assert [t["kwargs"]["it"] for t in as_group.tasks] == [[(0, 0), (1, 1)], [(2, 2), (3, 3)],
                                                          [(4, 4)]]
    with pytest.raises(ValueError):
        add.chunks([(1, 2)], 0)


def test_maybe_signature(add):
    assert maybe_signature(None) is None
    sig = add.s(1)
    assert maybe_signature(sig) is sig
    assert type(maybe_signature(dict(add.s(1) | add.s(2)))) is chain
    assert [type(s) for s in maybe_signature([dict(sig), sig])] == [Signature, Signature]


def test_a_signature_can_be_called_in_process(add):
    assert add.s(2)(3) == 5


def test_a_signature_takes_attributes_as_celerys_does(add):
    """Celery's signature is a plain dict subclass: code that hangs its own attributes on one
    keeps working (the app sits in a slot; the instance dict is made only when needed)."""
    sig = add.s(1, 2)
    sig.note = "mine"
    assert vars(sig) == {"note": "mine"} and sig.note == "mine"
    assert sig == {**sig}  # still only Celery's keys as the dict's items


def test_task_s_builds_what_signature_builds(app, add):
    """``task.s(*args)`` builds its signature itself: the same items in the same order, fresh
    kwargs and options, the task's app."""
    built, reference = add.s(1, 2), add.signature((1, 2), {})
    assert type(built) is Signature and list(built.items()) == list(reference.items())
    assert built.app is app and add.s().args == ()
    assert built.kwargs is not add.s(1, 2).kwargs and built.options is not add.s(1, 2).options
    assert add.s(1, y=2).kwargs == {"y": 2}


def test_task_s_goes_through_an_overridden_signature(app):
    class Marked(app.Task):
        def signature(self, args=None, kwargs=None, options=None, **extra):
            return super().signature(args, kwargs, options, queue="marked", **extra)

    @app.task(name="t.marked", base=Marked)
    def marked(x):
        return x

    assert marked.s(1).options == {"queue": "marked"}


def test_a_group_gives_members_without_an_app_its_app(app, add):
    member = Signature("t.add", (1, 2))
    assert member._app is None
    group([member, add.s(3, 4)], app=app).apply_async()
    assert member._app is app
