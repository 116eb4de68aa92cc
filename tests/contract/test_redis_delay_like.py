"""A plain ``delay()`` on a real Redis server, sent like the call before it
(``Producer.send_like``): every envelope stored is byte for byte what the general encoder writes
for the message ``Producer.build`` makes of that call with its id; a changed task setting, a
publish signal or a lost connection are each honoured."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any, Iterator

import pytest
import redis

from celeriac import Celery, signals
from celeriac.transport.redis.envelope import decode, encode
from celeriac.utils import redis_wire
from tests.conftest import app_on_redis_prefix

DB = 10


@pytest.fixture
def app(redis_server: str, redis_prefix: str) -> Iterator[Celery]:
    with app_on_redis_prefix("like", redis_server, redis_prefix, DB) as app:
        yield app


def _stored(app: Celery, key: str = "celery") -> list[bytes]:
    raw = redis.Redis.from_url(app.broker_url)
    try:
        return list(reversed(raw.lrange(app.transport.prefix + key, 0, -1)))
    finally:
        raw.close()


def _check(app: Celery, stored: list[bytes], queue: str = "celery") -> None:
    """Each envelope is the general encoding of ``build``'s message for its call and id."""
    for raw in stored:
        message, _ = decode(raw)
        args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        task = app.tasks[message.headers["task"]]
        built = app.producer.build(task.name, tuple(args), kwargs,
                                   task_id=message.headers["id"], _task=task).message
        built.headers_json = None  # the general encoder, from the headers dict
        tag = json.loads(raw)["properties"]["delivery_tag"]
        assert raw.decode() == encode(built, queue, tag)


def _spliced(app: Celery) -> int:
    """How many task settings the producer sends plain calls like."""
    return sum(1 for like in app.producer._likes.values() if like is not None)


def test_delay_in_a_loop_stores_what_the_general_encoder_writes(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop() -> None: ...

    @app.task(name="t.add")
    def add(x: int, y: Any = 0) -> Any: ...

    ids = [noop.delay().id for _ in range(3)]
    ids += [add.delay(1, 2).id, add.delay(x=1, y="é'\"").id, add.apply_async((3,)).id,
            add.delay(*["x" * 2000]).id]
    assert _spliced(app) == 2
    stored = _stored(app)
    assert [decode(raw)[0].headers["id"] for raw in stored] == ids
    assert len(set(ids)) == len(ids)
    _check(app, stored)


def test_a_changed_task_setting_makes_a_new_model(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop() -> None: ...

    noop.delay()
    noop.delay()
    _check(app, _stored(app))
    noop.time_limit, noop.ignore_result, noop.priority = 5, True, 2  # 2: still list 0
    noop.delay()
    noop.delay()
    celery = _stored(app)
    _check(app, celery[2:])
    noop.queue = "other"
    noop.delay()
    noop.delay()
    other = _stored(app, "other")
    _check(app, other, "other")
    assert len(celery) == 4 and len(other) == 2
    headers = [decode(raw)[0].headers for raw in celery + other]
    assert [h["timelimit"][0] for h in headers] == [None, None, 5, 5, 5, 5]
    assert [h["ignore_result"] for h in headers] == [False, False, True, True, True, True]
    assert [decode(raw)[0].properties["priority"] for raw in celery] == [0, 0, 2, 2]


def test_publish_signals_see_every_call(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop() -> None: ...

    noop.delay()
    noop.delay()
    seen: list[str] = []

    def before(sender: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append(headers["id"])

    signals.before_task_publish.connect(before)
    try:
        ids = [noop.delay().id for _ in range(2)]
    finally:
        signals.before_task_publish.disconnect(before)
    assert seen == ids
    _check(app, _stored(app))


def test_a_lost_connection_is_reopened_and_deferred_writes_go_first(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop() -> None: ...

    noop.delay()
    noop.delay()
    wire = redis_wire.wire_for(app.transport._client.connection_pool)
    wire._conn._sock.shutdown(socket.SHUT_RDWR)  # as a server restart leaves it
    sent = noop.delay().id
    marker = app.transport.prefix + "marker"
    wire.defer(("SET", marker, "1"))
    sent_after = noop.delay().id
    assert wire.pending == 0
    stored = _stored(app)
    assert [decode(raw)[0].headers["id"] for raw in stored][2:] == [sent, sent_after]
    raw = redis.Redis.from_url(app.broker_url)
    try:
        assert raw.get(marker) == b"1"
    finally:
        raw.close()
    _check(app, stored)


def test_a_send_tried_again_has_a_fresh_delivery_tag(app: Celery,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The LPUSH of a failed try may have been stored: the next try's envelope must not
    share its delivery tag (the unacked record of one would be the other's)."""
    @app.task(name="t.noop")
    def noop() -> None: ...

    noop.delay()
    noop.delay()  # the model: the calls after it are spliced
    tries: list[bytes] = []
    real = redis_wire.Wire.call_packed

    def flaky(self: redis_wire.Wire, packed: bytes, count: int) -> list[Any]:
        tries.append(packed)
        if len(tries) == 1:
            raise ConnectionError("lost on the way")
        return real(self, packed, count)

    monkeypatch.setattr(redis_wire.Wire, "call_packed", flaky)
    sent = noop.delay().id
    assert len(tries) == 2
    tags = [json.loads(packed.split(b"\r\n")[6])["properties"]["delivery_tag"]
            for packed in tries]
    assert tags[0] != tags[1]
    stored = _stored(app)
    assert decode(stored[-1])[0].headers["id"] == sent
    _check(app, stored)


def test_arguments_of_any_iterable_are_sent_as_build_takes_them(app: Celery) -> None:
    @app.task(name="t.add", typing=False)  # the typing check reads an iterator itself
    def add(*args: Any) -> None: ...

    ids = [add.apply_async(iter([1, 2])).id, add.apply_async([3, 4]).id,
           add.apply_async(x for x in (5, 6)).id]
    assert _spliced(app) == 1
    stored = _stored(app)
    assert [decode(raw)[0].headers["argsrepr"] for raw in stored] == [
        "(1, 2)", "(3, 4)", "(5, 6)"]
    assert [decode(raw)[0].headers["id"] for raw in stored] == ids
    _check(app, stored)


def test_an_overridden_send_task_is_still_called(redis_server: str, redis_prefix: str) -> None:
    sent: list[str] = []

    class App(Celery):
        def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any:
            sent.append(name)
            return super().send_task(name, *args, **kwargs)

    with app_on_redis_prefix("like", redis_server, redis_prefix, DB) as plain:
        app = App("like", broker=plain.broker_url, backend="memory://like",
                  set_as_current=False)
        app.conf.broker_transport_options = plain.conf.broker_transport_options
        try:
            noop = app.task(name="t.noop")(lambda: None)
            for _ in range(3):
                noop.delay()
            assert sent == ["t.noop"] * 3
            assert _spliced(app) == 1  # sent like the one before all the same
            _check(app, _stored(app))
        finally:
            app.close()


def test_a_send_task_patched_on_the_class_is_called(app: Celery,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task(name="t.noop")
    def noop() -> None: ...

    noop.delay()
    noop.delay()
    sent: list[str] = []
    real = Celery.send_task

    def send_task(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(Celery, "send_task", send_task)
    noop.delay()
    monkeypatch.setattr(app, "send_task", lambda name, *a, **k: sent.append(f"app {name}"))
    noop.delay()
    assert sent == ["t.noop", "app t.noop"]
