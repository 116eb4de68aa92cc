"""A group of several batches on a real Redis server: each batch's replies are read while the
next is built (``RedisTransport.send_runs_ahead``), and ``apply_async`` still returns only once
every member is stored, raises what the server refused, and sends again a batch whose
connection was lost before its replies were read."""

from __future__ import annotations

import gc
from typing import Any, Iterator

import pytest
import redis

from celeriac import Celery, group
from celeriac.canvas.primitives import PUBLISH_BATCH
from celeriac.transport.redis.envelope import decode
from tests.conftest import app_on_redis_prefix

DB = 10


@pytest.fixture
def app(redis_server: str, redis_prefix: str) -> Iterator[Celery]:
    with app_on_redis_prefix("ahead", redis_server, redis_prefix, DB) as app:
        yield app


def _stored(app: Celery, key: str = "celery") -> list[dict[str, Any]]:
    """The headers of the list's messages, oldest first."""
    raw = redis.Redis.from_url(app.broker_url)
    try:
        return [decode(item)[0].headers
                for item in reversed(raw.lrange(app.transport.prefix + key, 0, -1))]
    finally:
        raw.close()


def _in_flight(app: Celery) -> Any:
    state = getattr(app.transport._ahead, "state", None)
    return None if state is None else state.batch


def test_every_batch_is_stored_in_order_when_apply_async_returns(app: Celery) -> None:
    @app.task(name="t.echo")
    def echo(i: int) -> int:
        return i

    count = 2 * PUBLISH_BATCH + 7  # two batches sent ahead, then the rest
    result = group((echo.s(i) for i in range(count)), app=app).apply_async()
    assert _in_flight(app) is None
    stored = _stored(app)
    assert [h["id"] for h in stored] == [r.id for r in result.results]
    assert [h["argsrepr"] for h in stored] == [f"({i},)" for i in range(count)]
    assert [h["group_index"] for h in stored] == list(range(count))
    assert gc.isenabled()


def test_a_refused_batch_sent_ahead_is_raised_by_apply_async(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop() -> None: ...

    raw = redis.Redis.from_url(app.broker_url)
    try:
        raw.set(app.transport.prefix + "celery", "not a list")
    finally:
        raw.close()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        group((noop.s() for _ in range(PUBLISH_BATCH + 1)), app=app).apply_async()
    assert _in_flight(app) is None  # given up: never sent later with another publish
    assert gc.isenabled()
    noop.apply_async(queue="other")  # the transport still publishes
    assert len(_stored(app, "other")) == 1


def test_a_batch_whose_connection_was_lost_is_sent_again(app: Celery) -> None:
    @app.task(name="t.noop")
    def noop(i: int) -> None: ...

    ids = [f"id-{i}" for i in range(3)]
    calls = [(task_id, (i,), {}, i) for i, task_id in enumerate(ids)]
    app.producer.send_groups([("t.noop", {"group_id": "g"}, calls)], more=True)
    state = app.transport._ahead.state
    assert state.batch is not None
    state.conn.disconnect()  # lost before its replies were read
    app.producer.settle()
    assert _in_flight(app) is None
    stored = [h["id"] for h in _stored(app)]
    # at least once: the first copy was written before the connection went
    assert stored[-3:] == ids and set(stored) == set(ids)


def test_a_batch_sent_ahead_is_stored_before_a_member_published_on_its_own(
        app: Celery) -> None:
    from celeriac import Task

    class Own(Task):
        def apply_async(self, *args: Any, **kwargs: Any) -> Any:
            return super().apply_async(*args, **kwargs)

    @app.task(name="t.noop")
    def noop() -> None: ...

    @app.task(name="t.own", base=Own)
    def own() -> None: ...

    members = [noop.s() for _ in range(PUBLISH_BATCH)] + [own.s(), noop.s()]
    result = group(members, app=app).apply_async()
    assert [h["id"] for h in _stored(app)] == [r.id for r in result.results]
    assert [h["task"] for h in _stored(app)][-2:] == ["t.own", "t.noop"]
