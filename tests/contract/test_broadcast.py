"""Runs the broadcast (fanout) suite on the memory, SQLite and Redis brokers, plus cross-process
SQLite, the Redis channel layout and real kombu fanout both ways."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from celeriac.protocol.message import Message
from celeriac.testing.broadcast_suite import (
    bodies,
    collect,
    note,
)
from celeriac.transport import memory, sqlite_broadcast
from celeriac.transport.memory import MemoryTransport as _Memory
from celeriac.transport.redis import RedisTransport as _Redis
from celeriac.transport.redis.fanout import patterns_for
from celeriac.transport.sqlite import SQLiteTransport as _SQLite
from tests.conftest import REPO

DB = 10  # shared with the transport contract tests; nothing here writes a key outside its names


# BroadcastContract itself runs on every broker through contracts_for (test_transports.py,
# test_redis_transport.py); this module holds the broker-specific broadcast checks.


# ---- memory --------------------------------------------------------------------------------------
def test_memory_brokers_of_other_names_hear_nothing() -> None:
    name = f"bcast-{uuid.uuid4().hex}"
    try:
        listener = _Memory.from_url(f"memory://{name}").subscribe("ex")
        _Memory.from_url(f"memory://{name}-other").broadcast("ex", note("elsewhere"))
        _Memory().broadcast("ex", note("private"))  # an unnamed transport is private
        assert listener.get(0.1) == []
        _Memory.from_url(f"memory://{name}").broadcast("ex", note("here"))
        assert bodies(listener.get(1.0)) == ["here"]
    finally:
        memory.reset(name)
        memory.reset(f"{name}-other")


# ---- SQLite --------------------------------------------------------------------------------------
_CHILD = """
import sys
from celeriac.protocol.message import Message
from celeriac.transport.sqlite import SQLiteTransport

t = SQLiteTransport(sys.argv[1])
for i in range(3):
    t.broadcast("ex", Message(b"child %d" % i, headers={"pid": i}), "worker.heartbeat")
t.broadcast("ex", Message(b"not for us"), "task.sent")
t.close()
"""


def test_sqlite_broadcast_from_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "broker.db")
    transport = _SQLite(path)
    subscription = transport.subscribe("ex", "worker.*")
    try:
        subprocess.run([sys.executable, "-c", _CHILD, path], cwd=REPO, check=True, timeout=60)
        got = collect(subscription, 3)
        assert bodies(got) == [f"child {i}" for i in range(3)]
        assert [m.headers for m in got] == [{"pid": i} for i in range(3)]
        assert subscription.get(0.1) == []
    finally:
        subscription.close()
        transport.close()


def test_sqlite_wakes_a_waiting_subscriber_in_another_transport(tmp_path: Path) -> None:
    path = str(tmp_path / "broker.db")
    listener, publisher = _SQLite(path), _SQLite(path)
    subscription = listener.subscribe("ex")
    timer = threading.Timer(0.1, publisher.broadcast, args=("ex", note("m")))
    timer.start()
    try:
        assert bodies(subscription.get(10.0)) == ["m"]
    finally:
        timer.join()
        subscription.close()
        listener.close()
        publisher.close()


def test_sqlite_old_broadcasts_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _SQLite(str(tmp_path / "broker.db"))
    try:
        monkeypatch.setattr(sqlite_broadcast, "BROADCAST_MAX_ROWS", 5)
        for i in range(30):
            transport.broadcast("ex", note(f"m{i}"))
        with transport._connection() as conn:
            assert conn.execute("SELECT count(*) FROM celeriac_broadcast").fetchone()[0] == 5
        monkeypatch.setattr(sqlite_broadcast, "BROADCAST_RETENTION", -1.0)  # all old by now
        transport.broadcast("ex", note("last"))
        with transport._connection() as conn:
            assert conn.execute("SELECT count(*) FROM celeriac_broadcast").fetchone()[0] == 1
        late = transport.subscribe("ex")  # ids keep growing after pruning: nothing old comes back
        transport.broadcast("ex", note("new"))
        assert bodies(collect(late, 1)) == ["new"]
        assert late.get(0.1) == []
    finally:
        transport.close()


# ---- Redis ---------------------------------------------------------------------------------------
@pytest.fixture
def redis_url(redis_server: str) -> str:
    return f"{redis_server}/{DB}"


def test_redis_patterns_cover_each_binding() -> None:
    base = "p:/3.ex"
    assert patterns_for(base, "#") == ["p:/3.ex", "p:/3.ex/*"]
    assert patterns_for(base, "") == ["p:/3.ex"]
    assert patterns_for(base, "worker.*") == ["p:/3.ex/worker.*"]
    assert patterns_for(base, "a.#.b") == ["p:/3.ex/a*b"]
    assert patterns_for(base, "#.b") == ["p:/3.ex/*b"]
    assert patterns_for("/0.we[ir]d*", "k?") == [r"/0.we\[ir\]d\*/k\?"]


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("prefix", ["", "celeriac-test-bcast:"])
def test_redis_publishes_kombus_channel_and_envelope(redis_url: str, raw: redis.Redis,
                                                     prefix: str) -> None:
    exchange = f"bcast-{uuid.uuid4().hex[:12]}"
    listener = raw.pubsub()
    listener.psubscribe(f"{prefix}/{DB}.{exchange}*")
    assert listener.get_message(timeout=5.0)["type"] == "psubscribe"
    transport = _Redis.from_url(redis_url, global_keyprefix=prefix)
    try:
        sent = Message(b"\x00body", "application/x-test", "binary", {"h": [1, "two"]},
                       {"correlation_id": "c-1", "priority": 0})
        transport.broadcast(exchange, sent, "worker.heartbeat")
        transport.broadcast(exchange, sent)
        seen: list[tuple[str, Any]] = []
        while len(seen) < 2:
            event = listener.get_message(timeout=5.0)
            assert event is not None, seen
            if event["type"] == "pmessage":
                seen.append((event["channel"].decode(), json.loads(event["data"])))
        assert [channel for channel, _ in seen] == [f"{prefix}/{DB}.{exchange}/worker.heartbeat",
                                                    f"{prefix}/{DB}.{exchange}"]
        for (_, envelope), key in zip(seen, ["worker.heartbeat", ""]):
            assert list(envelope) == ["body", "content-encoding", "content-type", "headers",
                                      "properties"]
            assert base64.b64decode(envelope["body"]) == b"\x00body"
            props = envelope["properties"]
            assert props["delivery_info"] == {"exchange": exchange, "routing_key": key}
            assert props["body_encoding"] == "base64" and uuid.UUID(props["delivery_tag"])
            assert (envelope["headers"], props["correlation_id"]) == ({"h": [1, "two"]}, "c-1")
    finally:
        listener.close()
        transport.close()


# ---- real kombu ----------------------------------------------------------------------------------
@pytest.fixture
def kombu_exchange(raw: redis.Redis) -> Iterator[str]:
    """A fresh fanout exchange name; the binding keys kombu writes for it go afterwards."""
    exchange = f"bcast-{uuid.uuid4().hex[:12]}"
    yield exchange
    keys = list(raw.scan_iter(match=f"*{exchange}*", count=1000))
    if keys:
        raw.delete(*keys)


@pytest.mark.redis
@pytest.mark.parametrize("prefix", ["", "celeriac-test-bcast:"])
def test_kombu_fanout_publish_reaches_celeriac(redis_url: str, kombu_exchange: str,
                                               prefix: str) -> None:
    import kombu

    transport = _Redis.from_url(redis_url, global_keyprefix=prefix)
    every, workers, bare = (transport.subscribe(kombu_exchange, binding)
                            for binding in ("#", "worker.*", ""))
    try:
        with kombu.Connection(redis_url, transport_options={"global_keyprefix": prefix}) as conn:
            exchange = kombu.Exchange(kombu_exchange, type="fanout")
            producer = conn.Producer()
            producer.publish({"hostname": "w1@host"}, exchange=exchange, declare=[exchange],
                             routing_key="worker.heartbeat", serializer="json",
                             headers={"hostname": "w1@host"}, correlation_id="c-1")
            producer.publish(b"\x00\xffraw", exchange=exchange, routing_key="",
                             content_type="application/x-test", content_encoding="binary")
        [heartbeat, raw_one] = collect(every, 2)
        assert json.loads(heartbeat.body) == {"hostname": "w1@host"}
        assert (heartbeat.content_type, heartbeat.content_encoding) == ("application/json",
                                                                        "utf-8")
        assert heartbeat.headers == {"hostname": "w1@host"}
        assert heartbeat.properties["correlation_id"] == "c-1"
        assert "delivery_tag" not in heartbeat.properties  # the transport's own, taken off
        assert (raw_one.body, raw_one.content_type, raw_one.content_encoding) == (
            b"\x00\xffraw", "application/x-test", "binary")
        assert collect(workers, 1) == [heartbeat]
        assert collect(bare, 1) == [raw_one]
        for subscription in (every, workers, bare):
            assert subscription.get(0.1) == []
    finally:
        for subscription in (every, workers, bare):
            subscription.close()
        transport.close()


class _Interrupted(Exception):
    """kombu's connection was killed from outside (another test's CLIENT KILL TYPE pubsub)."""


def _kombu_hears(redis_url: str, prefix: str, exchange_name: str, binding: str,
                 routing_key: str, sent: Message) -> list[Any]:
    """Messages tagged "real" that a kombu fanout consumer bound with ``binding`` got after
    celeriac broadcast ``sent`` once (kombu subscribes lazily: probes go first until it hears)."""
    import kombu

    transport = _Redis.from_url(redis_url, global_keyprefix=prefix)
    received: list[tuple[str, Any]] = []
    failures: list[BaseException] = []
    arrived = threading.Condition()
    stop = threading.Event()

    def on_message(message: Any) -> None:
        with arrived:
            received.append((message.headers.get("id", ""), message))
            arrived.notify_all()

    def heard(tag: str) -> Any:
        return lambda: failures or any(t == tag for t, _ in received)

    with kombu.Connection(redis_url, transport_options={"global_keyprefix": prefix}) as conn:
        exchange = kombu.Exchange(exchange_name, type="fanout")
        queue = kombu.Queue(f"{exchange_name}.q", exchange=exchange, routing_key=binding)

        def drain() -> None:
            while not stop.is_set():
                try:
                    conn.drain_events(timeout=0.05)
                except TimeoutError:
                    pass
                except conn.connection_errors as exc:
                    with arrived:
                        failures.append(exc)
                        arrived.notify_all()
                    return

        with conn.Consumer(queue, on_message=on_message, no_ack=True):
            worker = threading.Thread(target=drain, daemon=True)
            worker.start()
            try:
                deadline = time.monotonic() + 10.0
                with arrived:
                    while not heard("probe")():
                        assert time.monotonic() < deadline, "kombu never subscribed"
                        transport.broadcast(exchange_name, note("probe"), routing_key)
                        arrived.wait_for(heard("probe"), 0.1)
                    transport.broadcast(exchange_name, sent, routing_key)
                    assert arrived.wait_for(heard("real"), 10.0), received
            finally:
                stop.set()
                worker.join(10.0)
                transport.close()
    if failures:
        raise _Interrupted(failures[0])
    return [m for tag, m in received if tag == "real"]


@pytest.mark.redis
@pytest.mark.parametrize("prefix", ["", "celeriac-test-bcast:"])
@pytest.mark.parametrize(("binding", "routing_key"), [("#", "worker.heartbeat"), ("", "")])
def test_celeriac_broadcast_reaches_a_kombu_fanout_consumer(
        redis_url: str, kombu_exchange: str, prefix: str, binding: str, routing_key: str) -> None:
    sent = Message(b"\x00\xff binary", "application/x-test", "binary",
                   {"id": "real", "nested": {"a": [1, None]}}, {"correlation_id": "c-9"})
    for attempt in range(3):
        try:
            [got] = _kombu_hears(redis_url, prefix, f"{kombu_exchange}-{attempt}", binding,
                                 routing_key, sent)
            break
        except _Interrupted:
            if attempt == 2:
                raise
    assert (got.body, got.content_type, got.content_encoding) == (
        b"\x00\xff binary", "application/x-test", "binary")
    assert got.headers == sent.headers
    assert got.properties["correlation_id"] == "c-9"
    assert got.delivery_info["exchange"] == f"{kombu_exchange}-{attempt}"
    assert got.delivery_info["routing_key"] == routing_key


@pytest.mark.redis
def test_redis_subscription_survives_a_killed_connection(redis_url: str, raw: redis.Redis) -> None:
    exchange = f"bcast-{uuid.uuid4().hex[:12]}"
    transport = _Redis.from_url(redis_url)
    subscription = transport.subscribe(exchange)
    try:
        host, port = subscription._pubsub.connection._sock.getsockname()  # type: ignore[attr-defined]
        [client] = [c for c in raw.client_list() if c["addr"] == f"{host}:{port}"]
        assert raw.client_kill_filter(_id=client["id"]) == 1
        assert subscription.get(0.3) == []  # notices, reconnects and subscribes again
        transport.broadcast(exchange, note("after the kill"))
        assert bodies(collect(subscription, 1)) == ["after the kill"]
    finally:
        subscription.close()
        transport.close()


# ---- RabbitMQ ------------------------------------------------------------------------------------
@pytest.fixture
def amqp_vhost() -> Iterator[tuple[str, str]]:
    """(url, vhost): a RabbitMQ virtual host of this test's own (for Celery's exchange names)."""
    from urllib.parse import urlsplit

    from tests.conftest import private_vhost

    with private_vhost() as url:
        yield url, urlsplit(url).path[1:]


def _exchange_flags(vhost: str, name: str) -> tuple[str, str, str]:
    from tests.conftest import rabbitmqctl

    for line in rabbitmqctl("list_exchanges", "-p", vhost, "name", "type", "durable",
                            "auto_delete").splitlines():
        fields = line.split("\t")
        if fields[0] == name:
            return fields[1], fields[2], fields[3]
    raise AssertionError(f"no exchange {name!r} in {vhost!r}")


def test_amqp_declares_celerys_exchanges_with_celerys_flags(amqp_vhost: tuple[str, str]) -> None:
    from celeriac.transport.amqp import AMQPTransport

    url, vhost = amqp_vhost
    transport = AMQPTransport(url)
    try:
        transport.broadcast("celeryev", note("e"), "worker.heartbeat")
        transport.subscribe("celery.pidbox").close()
        transport.broadcast("reply.celery.pidbox", note("r"), "some-oid")
        transport.broadcast("my.exchange", note("m"))
        assert _exchange_flags(vhost, "celeryev") == ("topic", "true", "false")
        assert _exchange_flags(vhost, "celery.pidbox") == ("fanout", "false", "false")
        assert _exchange_flags(vhost, "reply.celery.pidbox") == ("direct", "false", "false")
        assert _exchange_flags(vhost, "my.exchange") == ("fanout", "false", "false")
    finally:
        transport.close()


def test_amqp_an_exchange_declared_otherwise_is_used_as_it_is(amqp_vhost: tuple[str, str]
                                                              ) -> None:
    from celeriac.transport.amqp import AMQPTransport

    url, vhost = amqp_vhost
    setup = AMQPTransport(url)
    setup._admin(lambda channel: channel.exchange_declare("mine", "topic", durable=True,
                                                          auto_delete=False))
    transport = AMQPTransport(url)
    subscription = transport.subscribe("mine", "a.*")
    try:
        transport.broadcast("mine", note("a.b"), "a.b")
        transport.broadcast("mine", note("c"), "c")
        assert bodies(collect(subscription, 1)) == ["a.b"]
        assert subscription.get(0.1) == []
        assert _exchange_flags(vhost, "mine") == ("topic", "true", "false")
    finally:
        subscription.close()
        transport.close()
        setup.close()


def test_amqp_fanout_subscriptions_filter_by_their_binding(amqp_vhost: tuple[str, str]) -> None:
    """celery.pidbox is fanout: RabbitMQ sends every subscriber everything, the subscription
    keeps what its binding takes."""
    from celeriac.transport.amqp import AMQPTransport

    url, _ = amqp_vhost
    transport = AMQPTransport(url)
    workers, every = transport.subscribe("celery.pidbox", "worker.*"), transport.subscribe(
        "celery.pidbox")
    try:
        for key in ("worker.a", "task.b", "worker.c.d", "worker.e"):
            transport.broadcast("celery.pidbox", note(key), key)
        assert bodies(collect(every, 4)) == ["worker.a", "task.b", "worker.c.d", "worker.e"]
        assert bodies(collect(workers, 2)) == ["worker.a", "worker.e"]
        assert workers.get(0.1) == []
    finally:
        workers.close()
        every.close()
        transport.close()


def test_amqp_a_subscriptions_queue_is_private_and_goes_with_it(amqp_vhost: tuple[str, str]
                                                                ) -> None:
    from celeriac.transport.amqp import AMQPTransport
    from tests.conftest import rabbitmqctl

    url, vhost = amqp_vhost
    transport = AMQPTransport(url)
    try:
        subscription: Any = transport.subscribe("celeryev", "worker.#")

        def queues() -> dict[str, list[str]]:
            lines = rabbitmqctl("list_queues", "-p", vhost, "name", "durable", "auto_delete",
                                "exclusive").splitlines()
            return {f[0]: f[1:] for f in (line.split("\t") for line in lines)
                    if f[0].startswith("celeriac.subscriber.")}

        assert queues() == {subscription.queue: ["false", "true", "true"]}
        subscription.close()
        assert queues() == {}
    finally:
        transport.close()


def test_amqp_subscription_survives_a_closed_connection(amqp_vhost: tuple[str, str]) -> None:
    from celeriac.transport.amqp import AMQPTransport
    from tests.conftest import rabbitmqctl

    url, vhost = amqp_vhost
    transport = AMQPTransport(url)
    subscription: Any = transport.subscribe("celeryev")
    try:
        port = subscription._conn.sock.getsockname()[1]
        pids = [line.split("\t")[0] for line in rabbitmqctl(
            "list_connections", "-p", vhost, "pid", "peer_port").splitlines()
            if line.split("\t")[-1] == str(port)]
        assert len(pids) == 1, pids
        rabbitmqctl("close_connection", pids[0], "celeriac test")
        assert subscription.get(0.3) == []  # notices, reconnects and binds again
        transport.broadcast("celeryev", note("after"), "worker.online")
        assert bodies(collect(subscription, 1)) == ["after"]
    finally:
        subscription.close()
        transport.close()


def test_amqp_celeriac_and_kombu_broadcast_to_each_other(amqp_vhost: tuple[str, str]) -> None:
    """Celery's own declarations of celeryev and celery.pidbox (kombu) agree with celeriac's,
    and messages cross both ways byte for byte."""
    import kombu

    from celeriac.transport.amqp import AMQPTransport

    url, _ = amqp_vhost
    transport = AMQPTransport(url)
    events = transport.subscribe("celeryev", "worker.#")
    pidbox = transport.subscribe("celery.pidbox")
    received: list[Any] = []
    try:
        with kombu.Connection(url) as conn:
            ev = kombu.Exchange("celeryev", type="topic", durable=True)
            box = kombu.Exchange("celery.pidbox", type="fanout", durable=False)
            queue = kombu.Queue(f"celeryev.{uuid.uuid4()}", exchange=ev, routing_key="worker.#",
                                auto_delete=True, durable=False)
            with conn.Consumer(queue, on_message=received.append, no_ack=True):
                producer = conn.Producer()
                producer.publish({"hostname": "w1"}, exchange=ev, declare=[ev],
                                 routing_key="worker.heartbeat", serializer="json",
                                 headers={"hostname": "w1"})
                producer.publish({"method": "ping"}, exchange=box, declare=[box],
                                 routing_key="", serializer="json")
                sent = Message(b"\x00\xff binary", "application/x-test", "binary",
                               {"id": "real", "nested": {"a": [1, None]}},
                               {"correlation_id": "c-9"})
                transport.broadcast("celeryev", sent, "worker.online")
                while len(received) < 2:
                    conn.drain_events(timeout=10)
        [heartbeat, online] = collect(events, 2)
        assert json.loads(heartbeat.body) == {"hostname": "w1"}
        assert heartbeat.headers == {"hostname": "w1"}
        assert online == sent
        [ping] = collect(pidbox, 1)
        assert json.loads(ping.body) == {"method": "ping"}
        got = received[1]
        assert (got.body, got.content_type, got.content_encoding) == (
            b"\x00\xff binary", "application/x-test", "binary")
        assert got.headers == sent.headers and got.properties["correlation_id"] == "c-9"
        assert got.delivery_info["routing_key"] == "worker.online"
    finally:
        events.close()
        pidbox.close()
        transport.close()
