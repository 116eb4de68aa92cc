"""What the producer keeps between calls to make ``delay()`` cheap (the routing answer per task,
the default ``reply_to``, the headers' JSON text) never outlives what it was worked out from:
router functions still see every call, run-time changes to a task's attributes still count, and
headers a ``before_task_publish`` receiver changes are the ones sent."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from celeriac import Celery, signals
from celeriac.protocol import serialization
from celeriac.transport.base import Outgoing


class RecordingTransport:
    """Keeps what is published; says it stores JSON, as the Redis broker does."""

    transient_errors = ()
    json_headers = True

    def __init__(self) -> None:
        self.published: list[Outgoing] = []

    def declare(self, queue: Any) -> None:
        pass

    def publish(self, items: Any) -> None:
        self.published.extend(items)

    def close(self) -> None:
        pass


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("producer-cache", broker="memory://producer-cache",
                 backend="memory://producer-cache", set_as_current=False)
    app._transport = RecordingTransport()  # the app hands this one out from now on
    yield app
    app.close()


def _sent(app: Celery) -> list[Outgoing]:
    return app.transport.published  # type: ignore[attr-defined,no-any-return]


def test_a_router_function_is_asked_at_every_call(app: Celery) -> None:
    app.conf.task_routes = [lambda name, args, kwargs, options, task=None, **kw:
                            {"queue": f"q{args[0]}"}]
    app._producer = None  # task_routes is read when the producer is made

    @app.task(name="t.route")
    def route(n: int) -> None: ...

    for n in (1, 2, 1):
        route.delay(n)
    assert [item.queue for item in _sent(app)] == ["q1", "q2", "q1"]


def test_changes_to_a_task_after_its_first_send_are_sent(app: Celery) -> None:
    @app.task(name="t.plain")
    def plain() -> None: ...

    plain.delay()
    plain.queue, plain.priority, plain.time_limit = "elsewhere", 7, 30
    app.conf.task_ignore_result = True
    plain.delay()
    first, second = _sent(app)
    assert (first.queue, first.message.properties["priority"]) == ("celery", 0)
    assert (second.queue, second.message.properties["priority"]) == ("elsewhere", 7)
    assert second.message.headers["timelimit"] == [30, None]
    assert (first.message.headers["ignore_result"],
            second.message.headers["ignore_result"]) == (False, True)


def test_a_calls_own_queue_is_not_remembered_for_the_next(app: Celery) -> None:
    @app.task(name="t.q")
    def q() -> None: ...

    q.apply_async(queue="once")
    q.delay()
    assert [item.queue for item in _sent(app)] == ["once", "celery"]


def test_headers_json_is_the_headers_text_for_every_kind_of_call(app: Celery) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    add.delay(1)  # the producer learns at its first publish that the transport stores JSON
    add.delay(1)
    add.delay(1, y="é\n")
    add.apply_async((2, 3), countdown=5, expires=60)  # no template: the transport encodes
    add.apply_async((1,), time_limit=1)
    add.apply_async((1,), time_limit=1.0)  # equal keys, other JSON: "1" then "1.0"
    add.apply_async((1,), group_id="g", group_index=3, parent_id="p", root_id="r")
    add.apply_async((1,), headers={"mine": 1})
    texts = []
    for item in _sent(app):
        message = item.message
        if message.headers_json is not None:
            assert message.headers_json == serialization.json_dumps(message.headers)
            texts.append(message.headers_json)
    assert len(texts) == 5 and _sent(app)[0].message.headers_json is None
    assert '"timelimit": [1, null]' in texts[2] and '"timelimit": [1.0, null]' in texts[3]


def test_headers_a_before_publish_receiver_changes_are_the_ones_sent(app: Celery) -> None:
    @app.task(name="t.signalled")
    def signalled() -> None: ...

    def stamp(headers: dict[str, Any], **kwargs: Any) -> None:
        headers["stamped"] = "yes"

    signals.before_task_publish.connect(stamp)
    try:
        signalled.delay()
    finally:
        signals.before_task_publish.disconnect(stamp)
    message = _sent(app)[0].message
    assert message.headers["stamped"] == "yes"
    assert message.headers_json is None  # so the transport encodes the headers as they are now


def test_redis_envelope_of_a_sent_task_is_the_general_encoding(app: Celery) -> None:
    from celeriac.transport.redis import envelope

    @app.task(name="t.env")
    def env(x: Any) -> None: ...

    env.delay(0)  # the producer learns at its first publish that the transport stores JSON
    env.delay({"k": [1, 2.5, None]})
    message = _sent(app)[1].message
    assert message.headers_json is not None
    fast = envelope.encode(message, "celery", "tag-1")
    message.headers_json = None
    assert fast == envelope.encode(message, "celery", "tag-1")
    assert json.loads(fast)["headers"]["argsrepr"] == "({'k': [1, 2.5, None]},)"


def test_positional_calls_are_checked_against_the_signature(app: Celery) -> None:
    @app.task(name="t.two")
    def two(x: int, y: int = 0) -> None: ...

    @app.task(name="t.bound", bind=True)
    def bound(self: Any, x: int) -> None: ...

    for _ in range(2):  # the first call learns the function's arity, the second uses it
        two.delay(1)
        two.delay(1, 2)
        bound.delay(1)
        with pytest.raises(TypeError, match="t.two"):
            two.delay()
        with pytest.raises(TypeError, match="t.two"):
            two.delay(1, 2, 3)
        with pytest.raises(TypeError, match="t.bound"):
            bound.delay()
        with pytest.raises(TypeError, match="t.bound"):
            bound.delay(1, 2)
    assert len(_sent(app)) == 6


@pytest.mark.parametrize("options", [
    {},
    {"group_id": "g", "reply_to": "r", "queue": "q", "priority": 3, "time_limit": 1.5},
    {"root_id": "r", "parent_id": "p", "shadow": "s"},
])
def test_send_many_makes_each_message_as_build_would(app: Celery, options: dict) -> None:
    @app.task(name="t.member")
    def member(*args: Any, **kwargs: Any) -> None: ...

    app.producer.send_many([("t.member", (), {}, {})])  # learns the transport stores JSON
    calls = [("t.member", args, kwargs, {**options, "task_id": f"id-{i}", "group_index": i,
                                         "_task": member})
             for i, (args, kwargs) in enumerate([((), {}), ((1, "é"), {}), ((), {"k": [None]}),
                                                 ([2.5], {"x": "y"}), ((), {})])]
    calls.insert(2, ("t.member", (9,), {}, {**options, "task_id": "other", "countdown": 5}))
    app.producer.send_many(calls)
    sent = _sent(app)[1:]
    assert [item.message.headers["id"] for item in sent] == [c[3]["task_id"] for c in calls]
    for (name, args, kwargs, opts), item in zip(calls, sent):
        built = app.producer.build(name, args, kwargs, **opts)
        assert (item.queue, item.exchange, item.routing_key, item.not_before is None) == (
            built.queue, built.exchange, built.routing_key, built.not_before is None)
        ours, theirs = item.message, built.message
        if "countdown" not in opts:
            assert list(ours.headers.items()) == list(theirs.headers.items())
        assert (ours.body, ours.properties) == (theirs.body, theirs.properties)
        if ours.headers_json is not None:
            assert ours.headers_json == serialization.json_dumps(ours.headers)
    assert sum(item.message.headers_json is not None for item in sent) == 5


def test_send_many_routes_each_call_when_a_router_function_may_look_at_it(app: Celery) -> None:
    app.conf.task_routes = [lambda name, args, kwargs, options, task=None, **kw:
                            {"queue": f"q{args[0]}"}]
    app._producer = None
    app.producer.send_many([("t.any", (n,), {}, {}) for n in (1, 2, 2, 3)])
    assert [item.queue for item in _sent(app)] == ["q1", "q2", "q2", "q3"]
