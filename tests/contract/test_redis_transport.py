"""The transport conformance suites (one per capability the broker declares), plus kombu-interop
and crash checks, on a real Redis server."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from typing import Any, Iterator

import pytest
import redis

from celeriac.backends.redis import RedisBackend
from celeriac.protocol.entities import Exchange, Queue
from celeriac.protocol.message import Message
from celeriac.testing.transport_suite import (
    MakeTransport,
    contracts_for,
    message,
    tags,
)
from celeriac.transport import transport_from_url
from celeriac.transport.base import Outgoing, capabilities_of
from celeriac.transport.redis import RedisTransport
from celeriac.transport.redis.envelope import decode, encode
from tests.vectors import CELERY_VECTORS

VECTORS = CELERY_VECTORS / "redis"
DB = 10
#: what the Redis broker declares; Broadcast is left out of the comparison until RedisTransport
#: lists its fanout mixin among its bases (then the set is all five capabilities)
EXPECTED_CAPABILITIES = {"Leases", "Deferral", "DeadLetterStore", "SharedConnectionSettling"}


def _probe() -> RedisTransport:
    """A transport only looked at for its capabilities: redis-py connects lazily, so this
    needs no server."""
    return RedisTransport("redis://127.0.0.1:6379/0")


def _raw(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["b64"])


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return f"{redis_server}/{DB}"


@pytest.fixture
def client(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:
    """A raw client on the test DB; deletes every key under the test's prefix afterwards."""
    raw = redis.Redis.from_url(redis_url)
    yield raw
    keys = list(raw.scan_iter(match=f"{redis_prefix}*", count=1000))
    if keys:
        raw.delete(*keys)
    raw.close()


@pytest.fixture
def make(redis_url: str, redis_prefix: str, client: redis.Redis) -> Iterator[MakeTransport]:
    opened: list[RedisTransport] = []

    def factory(**options: Any) -> RedisTransport:
        options.setdefault("global_keyprefix", redis_prefix)
        transport = RedisTransport.from_url(redis_url, **options)
        opened.append(transport)
        return transport

    yield factory
    for transport in opened:
        transport.close()


class TestRedisTransport(*contracts_for(_probe())):  # type: ignore[misc]
    """The shared suites. Their priority checks want each priority 0..9 served highest first, so
    the transports here use one list per priority and ``priority_order="high_first"``; the delayed
    publish checks need ``delayed_publish="delayed_set"`` (the default pushes ETA messages onto
    the queue, as Celery does). The shared-connection checks pair the transport with a result
    store on the same database (``matching_backend``) and with one on another
    (``other_backend``)."""

    @pytest.fixture
    def transport_factory(self, make: MakeTransport) -> MakeTransport:
        def factory(**options: Any) -> Any:
            options.setdefault("priority_steps", list(range(10)))
            options.setdefault("priority_order", "high_first")
            # the suite checks that a message published with not_before is not fetched early
            options.setdefault("delayed_publish", "delayed_set")
            return make(**options)

        return factory

    @pytest.fixture
    def matching_backend(self, redis_url: str, redis_prefix: str, client: redis.Redis
                         ) -> Iterator[RedisBackend]:
        backend = RedisBackend(url=redis_url, global_keyprefix=redis_prefix)
        yield backend
        backend.close()

    @pytest.fixture
    def other_backend(self, redis_server: str, redis_prefix: str) -> Iterator[RedisBackend]:
        backend = RedisBackend(url=f"{redis_server}/{DB + 1}", global_keyprefix=redis_prefix)
        yield backend  # never written to: only compared
        backend.close()


def test_redis_declares_the_expected_capabilities(make: MakeTransport) -> None:
    assert set(capabilities_of(make())) - {"Broadcast"} == EXPECTED_CAPABILITIES


def test_the_suites_follow_what_an_opened_transport_declares(make: MakeTransport) -> None:
    probe = _probe()
    try:
        assert TestRedisTransport.__bases__ == contracts_for(make()) == contracts_for(probe)
    finally:
        probe.close()


# ---- kombu layout --------------------------------------------------------------------------------
def test_url_scheme_builds_the_redis_transport(redis_url: str, redis_prefix: str,
                                                client: redis.Redis) -> None:
    transport = transport_from_url(redis_url, global_keyprefix=redis_prefix, visibility_timeout=7)
    try:
        assert isinstance(transport, RedisTransport) and transport.visibility_timeout == 7
        transport.publish([Outgoing("q", message("m"))])
        assert client.llen(f"{redis_prefix}q") == 1
    finally:
        transport.close()


def test_publish_writes_kombu_keys(make: MakeTransport, client: redis.Redis,
                                   redis_prefix: str) -> None:
    transport = make()
    transport.publish([Outgoing("celery", message(n, priority=p))
                       for n, p in (("a", 0), ("b", 5), ("c", 3), ("d", 9), ("e", 2))])
    p = redis_prefix
    assert client.smembers(f"{p}_kombu.binding.celery") == {b"celery\x06\x16\x06\x16celery"}
    assert [decode(e)[0].body for e in client.lrange(f"{p}celery", 0, -1)] == [b"e", b"a"]
    assert [decode(e)[0].body for e in client.lrange(f"{p}celery\x06\x163", 0, -1)] == [b"c", b"b"]
    assert client.llen(f"{p}celery\x06\x169") == 1
    assert client.llen(f"{p}celery\x06\x166") == 0


def test_one_message_at_a_time_lands_like_a_batch(make: MakeTransport, client: redis.Redis,
                                                 redis_prefix: str) -> None:
    transport = make()
    for body, priority in (("a", 0), ("b", 5), ("c", 0)):  # the first declares, later ones not
        transport.publish([Outgoing("celery", message(body, priority=priority))])
    p = redis_prefix
    assert client.smembers(f"{p}_kombu.binding.celery") == {b"celery\x06\x16\x06\x16celery"}
    assert [decode(e)[0].body for e in client.lrange(f"{p}celery", 0, -1)] == [b"c", b"a"]
    assert [decode(e)[0].body for e in client.lrange(f"{p}celery\x06\x163", 0, -1)] == [b"b"]
    client.delete(f"{p}celery")
    client.set(f"{p}celery", "not a list")  # the server refuses the push: the caller hears it
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        transport.publish([Outgoing("celery", message("d"))])


def test_default_priority_order_is_celerys_on_redis(make: MakeTransport) -> None:
    transport = make()
    transport.publish([Outgoing("q", message(n, priority=p))
                       for n, p in (("p9", 9), ("p5", 5), ("p0", 0), ("p7", 7))])
    assert tags(transport.fetch(["q"], 4, 1.0)) == ["p0", "p5", "p7", "p9"]


def test_a_celery_envelope_pushed_raw_is_fetched(make: MakeTransport, client: redis.Redis,
                                                 redis_prefix: str) -> None:
    vector = json.loads((VECTORS / "send/eta_expires.json").read_text())["messages"][0]
    raw = _raw(vector["raw"])
    client.lpush(f"{redis_prefix}celery", raw)
    transport = make()
    [got] = transport.fetch(["celery"], 1, 1.0)
    envelope = vector["envelope"]
    props = {k: v for k, v in envelope["properties"].items()
             if k not in ("delivery_info", "body_encoding", "delivery_tag")}
    assert got.message == Message(_raw(vector["body_bytes"]), envelope["content-type"],
                                  envelope["content-encoding"], envelope["headers"], props)
    assert (got.queue, got.delivery_count, got.redelivered) == ("celery", 1, False)
    tag = envelope["properties"]["delivery_tag"]
    assert got.extra["delivery_tag"] == tag
    # the in-flight record is kombu's: [envelope, exchange, routing key], envelope unchanged
    stored = client.hget(f"{redis_prefix}unacked", tag)
    assert stored == b"[" + raw + b', "", "celery"]'
    assert client.zscore(f"{redis_prefix}unacked_index", tag) == pytest.approx(time.time(), abs=5)
    assert transport.ack([got]) == [True]
    assert client.hlen(f"{redis_prefix}unacked") == 0
    assert client.zcard(f"{redis_prefix}unacked_index") == 0


def test_unacked_record_matches_a_celery_workers(make: MakeTransport, client: redis.Redis,
                                                 redis_prefix: str) -> None:
    snapshot = json.loads((VECTORS / "worker/snapshot_mid_chord_slow_running.json").read_text())
    [(tag, entry)] = snapshot["db5"]["unacked"]["fields"].items()
    celery_value = _raw(entry)
    celery_envelope, _, routing_key = json.loads(celery_value)
    # the same envelope, pushed to the queue and fetched by us, is recorded byte for byte alike
    client.lpush(f"{redis_prefix}{routing_key}", json.dumps(celery_envelope))
    transport = make()
    [got] = transport.fetch([routing_key], 1, 1.0)
    assert client.hget(f"{redis_prefix}unacked", tag) == celery_value
    assert got.message.task_name == "tasks.slow"
    assert transport.ack([got]) == [True]


def test_expired_celery_entry_is_restored_with_kombus_flags(make: MakeTransport,
                                                            client: redis.Redis,
                                                            redis_prefix: str) -> None:
    snapshot = json.loads((VECTORS / "worker/snapshot_mid_chord_slow_running.json").read_text())
    [(tag, entry)] = snapshot["db5"]["unacked"]["fields"].items()
    [[_, score]] = snapshot["db5"]["unacked_index"]["members_with_scores"]
    # a Celery worker died holding this message long ago
    client.hset(f"{redis_prefix}unacked", tag, _raw(entry))
    client.zadd(f"{redis_prefix}unacked_index", {tag: score - 10_000_000})
    transport = make(visibility_timeout=60)
    [got] = transport.fetch(["celery"], 1, 1.0)
    assert got.redelivered and got.extra["delivery_tag"] == tag
    expected = json.loads(_raw(entry))[0]
    assert got.message.headers == expected["headers"]  # flags are transport state, not headers
    stored = json.loads(client.hget(f"{redis_prefix}unacked", tag))
    assert stored[0]["headers"]["redelivered"] is True
    assert stored[0]["properties"]["delivery_info"]["redelivered"] is True
    assert transport.ack([got]) == [True]


def test_a_consumer_dying_before_ack_loses_nothing(make: MakeTransport) -> None:
    dead, alive = make(visibility_timeout=0.2), make(visibility_timeout=0.2)
    alive.publish([Outgoing("q", message("m"))])
    [first] = dead.fetch(["q"], 1, 1.0)
    dead.close()  # "killed" between fetch and ack: the in-flight record is already there
    assert alive.fetch(["q"], 1, 0) == []
    [again] = alive.fetch(["q"], 1, 3.0)
    assert (tags([again]), again.redelivered, again.delivery_count) == (["m"], True, 2)
    assert again.message == first.message
    assert alive.ack([again]) == [True]


@pytest.mark.parametrize(("binding_key", "routing_key"), [
    ("feed.#", "feed.rss"), ("feed.*", "feed.atom"), ("#", "any.thing"), ("feed.rss", "feed.rss"),
])
def test_a_celery_workers_expired_topic_routed_lease_goes_back_to_the_bound_queue(
        make: MakeTransport, client: redis.Redis, redis_prefix: str, binding_key: str,
        routing_key: str) -> None:
    """A Celery worker's unacked record names the exchange and routing key it was published
    with; kombu's restore finds the queue through the exchange's bindings, so a routing key that
    only matches a topic pattern must not land in a list named after the routing key."""
    topic = Exchange("rt-tasks", type="topic")
    dead, alive = make(visibility_timeout=0.2), make(visibility_timeout=0.2)
    dead.declare(Queue("feedq", exchange=topic, routing_key=binding_key))
    dead.publish([Outgoing("", message("m"), exchange="rt-tasks", routing_key=routing_key,
                           exchange_type="topic")])
    [first] = dead.fetch(["feedq"], 1, 1.0)
    tag = first.extra["delivery_tag"]
    record = json.loads(client.hget(f"{redis_prefix}unacked", tag))
    record[1:] = ["rt-tasks", routing_key]  # as a Celery worker records it
    client.hset(f"{redis_prefix}unacked", tag, json.dumps(record))
    dead.close()  # died holding it
    [again] = alive.fetch(["feedq"], 1, 3.0)
    assert (tags([again]), again.redelivered) == (["m"], True)
    assert alive.qsize(routing_key) == 0  # no stray list named after the routing key
    assert alive.ack([again]) == [True]


def test_by_default_delayed_messages_go_on_the_queue_like_celerys(make: MakeTransport,
                                                                  client: redis.Redis,
                                                                  redis_prefix: str) -> None:
    """Celery workers read only the list: an ETA message must be there for them too."""
    transport = make()
    transport.publish([Outgoing("q", message("later"), time.time() + 30)])
    assert client.llen(f"{redis_prefix}q") == 1
    assert client.zcard(f"{redis_prefix}celeriac.delayed.q") == 0


def test_delayed_messages_wait_in_the_celeriac_set(make: MakeTransport, client: redis.Redis,
                                                   redis_prefix: str) -> None:
    transport = make(delayed_publish="delayed_set")
    due = time.time() + 0.3
    transport.publish([Outgoing("q", message("later"), due)])
    assert client.llen(f"{redis_prefix}q") == 0
    assert client.zcard(f"{redis_prefix}celeriac.delayed.q") == 1
    assert transport.fetch(["q"], 1, 0.1) == []
    assert tags(transport.fetch(["q"], 1, 2.0)) == ["later"]
    assert time.time() >= due - 0.01
    assert client.zcard(f"{redis_prefix}celeriac.delayed.q") == 0


def test_reject_requeue_sets_kombus_flags_and_fences(make: MakeTransport, client: redis.Redis,
                                                     redis_prefix: str) -> None:
    transport = make()
    transport.publish([Outgoing("q", message("m", priority=5))])
    [d] = transport.fetch(["q"], 1, 1.0)
    assert transport.reject(d, requeue=True)
    [raw] = client.lrange(f"{redis_prefix}q\x06\x163", 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["redelivered"] is True
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q",
                                                       "redelivered": True}
    assert transport.ack([d]) == [False]
    [again] = transport.fetch(["q"], 1, 1.0)
    assert again.message == message("m", priority=5)
    assert (again.redelivered, again.delivery_count) == (True, 2)
    assert transport.ack([again]) == [True]
    assert client.hlen(f"{redis_prefix}celeriac.deliveries") == 0


def test_publish_wakes_a_waiting_fetch_fast(make: MakeTransport) -> None:
    consumer, producer = make(polling_interval=5.0), make()
    consumer.fetch(["q"], 1, 0.01)  # the listener is up
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(consumer.fetch(["q"], 1, 3.0)))
    thread.start()
    time.sleep(0.05)
    sent = time.monotonic()
    producer.publish([Outgoing("q", message("m"))])
    thread.join()
    assert tags(got) == ["m"]
    assert time.monotonic() - sent < 0.5  # woken by the publish, not by the 5 s poll


def test_waiting_fetches_read_the_wake_ups_themselves(make: MakeTransport) -> None:
    """Two fetches wait on one transport: one reads the wake-up connection, the other waits for
    what it counts; each is woken by a publish to its own queue, and no listener thread runs."""
    consumer, producer = make(polling_interval=5.0), make()
    consumer.fetch(["a", "b"], 1, 0.01)
    got: dict[str, list[Any]] = {"a": [], "b": []}
    threads = [threading.Thread(target=lambda q=q: got[q].extend(consumer.fetch([q], 1, 3.0)))
               for q in ("a", "b")]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    sent = time.monotonic()
    producer.publish([Outgoing("b", message("mb"))])
    threads[1].join()
    producer.publish([Outgoing("a", message("ma"))])
    threads[0].join()
    assert (tags(got["a"]), tags(got["b"])) == (["ma"], ["mb"])
    assert time.monotonic() - sent < 1.0  # both woken by their publishes, not the 5 s poll
    assert not [t for t in threading.enumerate() if t.name == "celeriac-redis-wake"]


def _waits_by_polling(consumer: RedisTransport, producer: RedisTransport) -> None:
    """``consumer`` has no wake-ups: a wait is not over at once, and a message comes by the look
    after the polling interval."""
    started = time.monotonic()
    assert consumer.fetch(["q"], 1, 0.15) == []
    assert time.monotonic() - started >= 0.14  # waited, did not return (or spin) at once
    producer.publish([Outgoing("q", message("m"))])
    assert tags(consumer.fetch(["q"], 1, 2.0)) == ["m"]


def test_without_hiredis_waiting_fetches_poll(make: MakeTransport, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """redis-py's own parser keeps replies where poll() cannot see them: without hiredis there
    is no wake-up connection, said once, and fetches look every polling interval."""
    import celeriac.transport.redis as redis_transport

    monkeypatch.setattr(redis_transport, "_hiredis", None)
    consumer, producer = make(polling_interval=0.05), make()
    with caplog.at_level("WARNING", logger="celeriac"):
        _waits_by_polling(consumer, producer)
        _waits_by_polling(consumer, producer)
    said = [r.getMessage() for r in caplog.records if "wake-ups are unavailable" in r.getMessage()]
    assert len(said) == 1 and "hiredis" in said[0]


def test_a_broker_user_refused_the_wake_up_channels_still_consumes(
        make: MakeTransport, redis_url: str, redis_prefix: str, client: redis.Redis) -> None:
    """Redis 7 gives a new ACL user no channel: its PSUBSCRIBE is refused (NOPERM), and its
    fetches poll instead of timing out on a subscription that never comes."""
    user = f"celeriac-test-{redis_prefix.strip(':')}"
    client.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "+@all",
                           "resetchannels")
    try:
        scheme, rest = redis_url.split("://", 1)
        consumer = RedisTransport.from_url(f"{scheme}://{user}:secret@{rest}",
                                           global_keyprefix=redis_prefix, polling_interval=0.05)
        try:
            started = time.monotonic()
            _waits_by_polling(consumer, make())
            assert time.monotonic() - started < 3.0  # no 5 s wait for a subscription
        finally:
            consumer.close()
    finally:
        client.execute_command("ACL", "DELUSER", user)


def test_a_waker_stopped_while_a_fetch_reads_it_is_closed_by_that_fetch(
        make: MakeTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    """``stop`` leaves the socket to the thread reading it; that read may end without an error
    (its wait timed out just before the shutdown), and the socket is closed all the same, not
    left for the garbage collector (a ResourceWarning)."""
    import celeriac.transport.redis as redis_transport

    consumer = make(polling_interval=5.0)
    waker = consumer._waiter()
    assert waker is not None
    seen = waker.mark(["q"])
    reading, release = threading.Event(), threading.Event()
    real_take = redis_transport._Waker._take

    def slow_take(self: Any, timeout: float, spin_until: float = 0.0) -> None:
        reading.set()
        release.wait(5)  # returns normally, as a poll that timed out does

    monkeypatch.setattr(redis_transport._Waker, "_take", slow_take)
    thread = threading.Thread(target=waker.wait, args=(["q"], seen, 5.0))
    thread.start()
    assert reading.wait(5)
    waker.stop()
    assert waker._conn._sock is not None  # the reader closes it, not stop()
    release.set()
    thread.join(5)
    monkeypatch.setattr(redis_transport._Waker, "_take", real_take)
    assert not thread.is_alive() and waker._conn._sock is None


def test_a_fetch_whose_wake_up_connection_is_lost_polls_instead_of_spinning(
        make: MakeTransport) -> None:
    """The wake-up connection dies while a fetch waits (a server restart, another client's
    CLIENT KILL TYPE pubsub): the fetch falls back to a look per polling interval, and the next
    fetch subscribes again."""
    consumer = make(polling_interval=0.05)
    assert consumer.fetch(["q"], 4, 0.01) == []  # subscribes
    waker = consumer._waker
    assert waker is not None and waker.alive
    looks: list[int] = []
    real_lease = consumer._lease
    consumer._lease = lambda order, n: looks.append(n) or real_lease(order, n)  # type: ignore
    waker._sock.shutdown(socket.SHUT_RDWR)  # as the server closing it
    started = time.monotonic()
    assert consumer.fetch(["q"], 4, 0.5) == []
    assert time.monotonic() - started >= 0.45
    assert not waker.alive
    assert len(looks) <= 0.5 / 0.05 + 3, f"{len(looks)} looks in 0.5 s"
    consumer.fetch(["q"], 4, 0.01)
    assert consumer._waker is not waker and consumer._waker.alive  # subscribed again


def test_close_ends_a_waiting_fetch(make: MakeTransport) -> None:
    """A fetch waiting when its transport is closed returns at once, where it used to go on
    looking (and reconnecting) until its deadline."""
    consumer = make(polling_interval=0.05)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(consumer.fetch(["q"], 4, 5.0)))
    thread.start()
    time.sleep(0.2)  # waiting by now
    closed = time.monotonic()
    consumer.close()
    thread.join(10)
    assert got == [[]]
    assert time.monotonic() - closed < 1.0
    assert consumer.fetch(["q"], 4, 0.01) == []  # usable again: it reconnects


def test_a_fetch_after_a_short_one_waits_without_looking_again(make: MakeTransport,
                                                                 client: redis.Redis,
                                                                 redis_prefix: str) -> None:
    """The last look found the queue short and nothing was published since: the next fetch
    goes straight to waiting. A message pushed without a wake-up (a Celery producer's) is still
    found by the look after the polling interval, and a publish wakes it at once."""
    consumer, producer = make(polling_interval=0.2), make()
    producer.publish([Outgoing("q", message("m1"))])
    assert tags(consumer.fetch(["q"], 4, 1.0)) == ["m1"]  # short: one of four
    looks: list[int] = []
    real_lease = consumer._lease
    consumer._lease = lambda order, n: looks.append(n) or real_lease(order, n)  # type: ignore
    started = time.monotonic()
    assert consumer.fetch(["q"], 4, 0.1) == []
    assert looks == [4]  # one look, after the wait, not before it
    assert time.monotonic() - started >= 0.09
    looks.clear()
    producer.publish([Outgoing("q", message("m2"))])
    assert tags(consumer.fetch(["q"], 4, 1.0)) == ["m2"]  # a wake-up came: looked at once
    assert looks == [4]
    looks.clear()
    assert consumer.fetch(["q"], 4, 0.01) == []  # short again
    client.lpush(f"{redis_prefix}q", encode(message("m3"), "q", "tag-m3"))  # no wake-up
    started = time.monotonic()
    assert tags(consumer.fetch(["q"], 4, 2.0)) == ["m3"]
    assert 0.15 <= time.monotonic() - started < 1.5  # the look after the 0.2 s interval
