"""The bulk publish paths on a real Redis server (``send_many``, a group's members, a chord's
header): every envelope stored is byte for byte what the general encoder writes for the message
``Producer.build`` makes of that call, in kombu's list (priority sub-list included) and in call
order, and the ids handed back are the ones sent."""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import pytest
import redis

from celeriac import Celery, chord, group
from celeriac.transport.redis.envelope import decode, encode
from tests.conftest import app_on_redis_prefix

DB = 10


@pytest.fixture
def app(redis_server: str, redis_prefix: str) -> Iterator[Celery]:
    with app_on_redis_prefix("bulk", redis_server, redis_prefix, DB) as app:
        yield app


def _stored(app: Celery, key: str) -> list[bytes]:
    """The list's envelopes, oldest first (kombu LPUSHes, consumers BRPOP)."""
    raw = redis.Redis.from_url(app.broker_url)
    try:
        return list(reversed(raw.lrange(app.transport.prefix + key, 0, -1)))
    finally:
        raw.close()


def _check(app: Celery, stored: list[bytes], calls: list[tuple[str, Any, Any, dict]],
           queue: str = "celery") -> None:
    """Each stored envelope is the general encoding of ``build``'s message for its call."""
    assert len(stored) == len(calls)
    for raw, (name, args, kwargs, options) in zip(stored, calls):
        message, _ = decode(raw)
        tag = message_tag(raw)
        built = app.producer.build(name, args, kwargs, **options).message
        assert message.headers == built.headers
        assert (message.body, message.properties) == (built.body, built.properties)
        built.headers_json = None  # the general encoder, from the headers dict
        assert raw.decode() == encode(built, queue, tag)


def message_tag(raw: bytes) -> str:
    return str(json.loads(raw)["properties"]["delivery_tag"])


def test_send_many_stores_what_the_general_encoder_writes(app: Celery) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    calls: list[tuple[str, Any, Any, dict]] = [
        ("t.add", (i, i), {}, {}) for i in range(5)]
    calls += [("t.add", (), {"x": "é", "y": [None]}, {"task_id": f"given-{i}", "group_id": "g",
                                                      "group_index": i}) for i in range(3)]
    calls.append(("t.other", ["a"], {}, {"root_id": "r", "parent_id": "p"}))
    ids = app.producer.send_many(calls)
    assert ids[5:8] == ["given-0", "given-1", "given-2"] and len(set(ids)) == len(ids)
    _check(app, _stored(app, "celery"),
           [(name, args, kwargs, {**options, "task_id": task_id})
            for (name, args, kwargs, options), task_id in zip(calls, ids)])


def test_a_priority_goes_to_kombus_sub_list_in_order(app: Celery) -> None:
    calls = [("t.p", (i,), {}, {"priority": priority})
             for i, priority in enumerate([5, 5, 0, 5, 9, 9])]
    ids = app.producer.send_many(calls)
    sep = "\x06\x16"
    lists = {f"celery{sep}3": [0, 1, 3], "celery": [2], f"celery{sep}9": [4, 5]}
    for key, members in lists.items():
        _check(app, _stored(app, key),
               [(*calls[i][:3], {**calls[i][3], "task_id": ids[i]}) for i in members])


def test_group_members_are_sent_as_freezing_each_copy_would(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop(*args: Any, **kwargs: Any) -> None: ...

    members = [noop.s(), noop.s(1), noop.s(), noop.s(x=2).set(priority=0), noop.s()]
    members[2].freeze()  # a member with an id of its own keeps it
    result = group(members, app=app).apply_async(root_id="the-root")
    assert [r.id for r in result.results][2] == members[2].id
    for member in (members[0], members[1], members[3], members[4]):
        assert "task_id" not in member.options  # the caller's signatures stay as they were
    options = {"group_id": result.id, "reply_to": app.oid, "root_id": "the-root"}
    _check(app, _stored(app, "celery"), [
        ("t.noop", m.args, m.kwargs, {**options, **m.options, "task_id": r.id,
                                      "group_index": i, "_task": noop})
        for i, (m, r) in enumerate(zip(members, result.results))])


def test_a_group_of_several_batches_sends_what_freezing_each_copy_would(app: Celery) -> None:
    """Runs of like members across batch boundaries (``PUBLISH_BATCH``), broken by members
    of another task, with options, arguments or an id of their own: each stored envelope is
    the general encoding of that member's call, in member order."""
    from celeriac.canvas.primitives import PUBLISH_BATCH

    @app.task(name="t.noop")
    def noop(*args: Any, **kwargs: Any) -> None: ...

    @app.task(name="t.other")
    def other(*args: Any, **kwargs: Any) -> None: ...

    members = [noop.s() for _ in range(2 * PUBLISH_BATCH + 5)]
    members[PUBLISH_BATCH - 1] = other.s(1)  # the last of a batch
    members[PUBLISH_BATCH] = noop.s().set(priority=3)  # the first of the next
    members[PUBLISH_BATCH + 1] = noop.s(2, x="é")
    members[PUBLISH_BATCH + 2] = noop.s().set(task_id="its-own")
    members[2 * PUBLISH_BATCH + 1] = other.s()
    result = group(members, app=app).apply_async(root_id="the-root")
    ids = [r.id for r in result.results]
    assert ids[PUBLISH_BATCH + 2] == "its-own" and len(set(ids)) == len(ids)
    options = {"group_id": result.id, "reply_to": app.oid, "root_id": "the-root"}
    _check(app, _stored(app, "celery"), [
        (m.task, m.args, m.kwargs, {**options, **m.options, "task_id": r.id, "group_index": i,
                                    "_task": app.tasks[m.task]})
        for i, (m, r) in enumerate(zip(members, result.results)) if i != PUBLISH_BATCH])
    # the member with a priority of its own went to kombu's sub-list for it
    _check(app, _stored(app, "celery\x06\x163"), [
        ("t.noop", (), {}, {**options, "priority": 3, "task_id": ids[PUBLISH_BATCH],
                            "group_index": PUBLISH_BATCH, "_task": noop})])


def test_a_chord_header_carries_its_body_in_every_member(app: Celery) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.total")
    def total(values: list) -> int:
        return sum(values)

    body = total.s()
    body.link(add.si(1, 1))
    result = chord([add.s(i, i) for i in range(4)], body, app=app).apply_async()
    header = result.parent
    stored = _stored(app, "celery")
    embedded = [json.loads(base64.b64decode(json.loads(raw)["body"]))[2]["chord"]
                for raw in stored]
    assert embedded[0]["options"]["task_id"] == result.id
    assert embedded[0]["options"]["link"][0]["task"] == "t.add"
    assert all(chord_body == embedded[0] for chord_body in embedded)
    _check(app, stored, [
        ("t.add", (i, i), {}, {"task_id": r.id, "group_id": header.id, "group_index": i,
                               "reply_to": app.oid, "chord": embedded[0], "_task": add})
        for i, r in enumerate(header.results)])


def test_publish_signal_receivers_see_and_change_every_member(app: Celery) -> None:
    from celeriac import signals

    @app.task(name="t.noop")
    def noop() -> None: ...

    seen: list[str] = []

    def receiver(headers: dict, **_: Any) -> None:
        seen.append(headers["id"])
        headers["x-mark"] = len(seen)

    signals.before_task_publish.connect(receiver)
    try:
        result = group(noop.s() for _ in range(5)).apply_async()
    finally:
        signals.before_task_publish.disconnect(receiver)
    ids = [r.id for r in result.results]
    assert seen == ids
    stored = [decode(raw)[0].headers for raw in _stored(app, "celery")]
    assert [(h["id"], h["x-mark"]) for h in stored] == list(zip(ids, range(1, 6)))
