"""The per-thread raw Redis connection (utils/redis_wire.py) against a real server: deferred
commands ride along in order, failures keep writes and drop reads, one bad handler harms nobody."""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import pytest
import redis

from celeriac.utils import redis_wire
from celeriac.utils.forks import ForkLocal

DB = 9  # shared with the backend contract tests; every key here carries its own prefix


@pytest.fixture
def client(redis_server: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(f"{redis_server}/{DB}") as client:
        yield client


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    prefix = f"wire-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)


def _wire(client: redis.Redis) -> redis_wire.Wire:
    pool = client.connection_pool

    def connect():
        conn = pool.connection_class(**pool.connection_kwargs)
        conn.connect()
        return conn

    return redis_wire.Wire(connect)


def test_deferred_commands_go_first_in_order(client, prefix):
    wire = _wire(client)
    wire.defer(("RPUSH", prefix + "log", "a"), ("RPUSH", prefix + "log", "b"))
    assert client.lrange(prefix + "log", 0, -1) == []  # nothing sent yet
    assert wire.call(("RPUSH", prefix + "log", "c")) == [3]
    assert client.lrange(prefix + "log", 0, -1) == [b"a", b"b", b"c"]
    wire.close()


def test_a_failing_handler_costs_nobody_else_their_replies(client, prefix):
    wire = _wire(client)
    seen = []
    wire.defer_read(("INCR", prefix + "n"), lambda reply: 1 / 0)
    wire.defer_read(("INCR", prefix + "n"), seen.append)
    assert wire.call(("GET", prefix + "n")) == [b"2"]
    assert seen == [2]
    wire.close()


def test_a_failed_round_trip_keeps_the_writes_and_drops_the_reads(client, prefix):
    wire = _wire(client)
    seen = []
    wire.defer(("RPUSH", prefix + "log", "kept"))
    wire.defer_read(("RPUSH", prefix + "log", "dropped"), seen.append)
    wire.defer_read(("RPUSH", prefix + "log", "retained"), seen.append, retain=True)
    real = wire._connect

    def unreachable():
        raise redis.ConnectionError("server gone")

    wire._connect = unreachable
    with pytest.raises(redis.ConnectionError):
        wire.call(("PING",))
    wire._connect = real
    wire.flush()
    assert client.lrange(prefix + "log", 0, -1) == [b"kept", b"retained"]
    assert seen == [2]
    wire.close()


def test_an_error_reply_is_raised_by_checked_calls(client, prefix):
    wire = _wire(client)
    client.set(prefix + "text", "x")
    assert isinstance(wire.call(("INCR", prefix + "text"))[0], redis.ResponseError)
    with pytest.raises(redis.ResponseError):
        wire.call_checked(("INCR", prefix + "text"))
    wire.close()


def test_arguments_redis_cannot_carry_are_refused_at_once(client):
    wire = _wire(client)
    with pytest.raises(TypeError):
        wire.defer(("SET", "k", None))
    with pytest.raises(TypeError):
        wire.defer(("SET", "k", True))
    assert wire.pending == 0


def test_scripts_are_loaded_again_after_the_server_forgets_them(client, prefix):
    sha = redis_wire.script_sha(f"return '{prefix}'")
    client.script_flush()
    wire = _wire(client)
    assert wire.call_one("EVALSHA", sha, 0) == prefix.encode()
    wire.close()


def test_packed_commands_go_after_the_deferred_ones_a_forgotten_script_among_them(
        client, prefix):
    sha = redis_wire.script_sha(f"return redis.call('RPUSH', KEYS[1], 'script') .. '{prefix}'")
    client.script_flush()
    wire = _wire(client)
    seen = []
    wire.defer_read(("EVALSHA", sha, 1, prefix + "log"), seen.append)
    packed = b"".join(redis_wire._pack_one(c) for c in (("RPUSH", prefix + "log", "a"),
                                                       ("RPUSH", prefix + "log", "b")))
    # the forgotten script runs again once loaded, after the rest of its round trip
    assert wire.call_packed(packed, 2) == [1, 2]
    assert seen == [f"3{prefix}".encode()]
    assert wire.call_packed(packed, 2) == [4, 5]  # nothing deferred: straight out
    assert client.lrange(prefix + "log", 0, -1) == [b"a", b"b", b"script", b"a", b"b"]
    wire.close()


def test_polling_for_a_reply_ends_as_soon_as_it_is_there(client, prefix):
    wire = redis_wire.Wire(redis_wire.connector(client.connection_pool), busy_poll=5.0)
    started = time.monotonic()
    for n in range(1, 4):
        assert wire.call(("INCR", prefix + "n")) == [n]
    # a poll that missed the reply would spend its whole 5 s on each of the three calls
    assert time.monotonic() - started < 5.0
    wire.close()


def test_a_reply_slower_than_the_poll_is_still_read_whole(client, prefix):
    wire = redis_wire.Wire(redis_wire.connector(client.connection_pool), busy_poll=0.001)
    assert wire.call(("BLPOP", prefix + "empty", "0.2"), ("PING",)) == [None, b"PONG"]
    assert wire.call(("INCR", prefix + "n")) == [1]  # the stream is still in step
    wire.close()


def test_blocking_replies_skips_the_poll_of_this_threads_wires_within_it(client, monkeypatch):
    monkeypatch.setattr(redis_wire, "_busy_polls", {})
    monkeypatch.setattr(redis_wire, "_wires", ForkLocal(redis_wire._ThreadWires))
    wire = redis_wire.wire_for(client.connection_pool)
    polled = []
    monkeypatch.setattr(redis_wire.Wire, "_await_reply", lambda self, conn: polled.append(self))
    assert wire.call(("PING",)) == [b"PONG"] and polled == [wire]
    with redis_wire.blocking_replies():
        with redis_wire.blocking_replies():  # nested: only the outer one gives the poll back
            assert wire.call(("PING",)) == [b"PONG"]
        assert wire.call(("PING",)) == [b"PONG"]
    assert polled == [wire]
    assert wire.call(("PING",)) == [b"PONG"] and polled == [wire, wire]
    wire.close()


def test_the_smallest_busy_poll_asked_for_wins(client, monkeypatch):
    monkeypatch.setattr(redis_wire, "_busy_polls", {})
    monkeypatch.setattr(redis_wire, "_wires", ForkLocal(redis_wire._ThreadWires))
    pool = client.connection_pool
    wire = redis_wire.wire_for(pool)
    assert wire.busy_poll == redis_wire.DEFAULT_BUSY_POLL
    redis_wire.set_busy_poll(pool, 0.001)
    redis_wire.set_busy_poll(pool, 0.01)
    assert wire.busy_poll == 0.001 and redis_wire.wire_for(pool) is wire
    redis_wire.set_busy_poll(pool, 0)
    assert wire.busy_poll == 0
    assert wire.call(("PING",)) == [b"PONG"]  # no polling at all, still a normal round trip
    with pytest.raises(ValueError, match="busy_poll"):
        redis_wire.set_busy_poll(pool, -1)
    wire.close()


def test_a_connection_the_server_closed_is_replaced_on_the_next_call(client, prefix):
    wire = _wire(client)
    own_id = wire.call(("CLIENT", "ID"))[0]
    assert client.client_kill_filter(_id=own_id) == 1
    assert wire.call(("INCR", prefix + "n"), ("GET", prefix + "missing")) == [1, None]
    assert wire.call(("CLIENT", "ID"))[0] != own_id  # a fresh connection, read in step
    wire.close()


def test_resp3_pushes_are_skipped_and_false_is_a_reply(client, prefix):
    wire = redis_wire.Wire(redis_wire.connector(client.connection_pool, protocol=3))
    wire.call(("CLIENT", "TRACKING", "on"), ("GET", prefix + "tracked"))
    client.set(prefix + "tracked", "changed")  # the server pushes an invalidation to the wire
    assert [wire.call(("INCR", prefix + "n")) for _ in range(3)] == [[1], [2], [3]]
    assert wire.call(("EVAL", "redis.setresp(3); return false", 0), ("PING",)) == [False, b"PONG"]
    wire.close()


# ---- plain sockets read and written with os.readv / os.write ------------------------------------
def test_a_plain_socket_is_written_and_read_without_the_socket_layer(client, prefix, monkeypatch):
    """A round trip whose reply the busy poll saw arrive reads it with ``os.readv`` and sends
    with ``os.write`` (the socket's own calls would each ``poll`` first, the socket having a
    timeout); the replies are the same."""
    reads: list[int] = []
    writes: list[int] = []
    real_readv, real_write = redis_wire._readv, redis_wire._write

    def readv(fd: int, buffers):
        reads.append(fd)
        return real_readv(fd, buffers)

    def write(fd: int, data) -> int:
        writes.append(fd)
        return real_write(fd, data)

    monkeypatch.setattr(redis_wire, "_readv", readv)
    monkeypatch.setattr(redis_wire, "_write", write)
    wire = _wire(client)
    wire.busy_poll = 1.0  # the reply is seen arriving, however slow the machine
    assert wire.call(("SET", prefix + "k", "v"), ("GET", prefix + "k")) == [b"OK", b"v"]
    assert wire.call(("INCR", prefix + "n")) == [1]
    fd = wire._conn._sock.fileno()
    assert writes.count(fd) == 2 and reads.count(fd) >= 2
    wire.close()


def test_a_command_larger_than_the_send_buffer_and_a_reply_larger_than_one_read(client, prefix):
    """What one ``os.write`` does not take goes through redis-py, which waits for room; a reply
    longer than the read buffer comes in several reads, the later ones through the socket when
    the rest has not arrived yet."""
    wire = _wire(client)
    wire.busy_poll = 1.0  # the GET's reply is seen arriving: its first part read with readv
    big = b"x" * (8 << 20)  # far more than a loopback socket's send buffer
    assert wire.call(("SET", prefix + "big", big)) == [b"OK"]
    assert wire.call(("GET", prefix + "big"), ("STRLEN", prefix + "big")) == [big, len(big)]
    assert client.strlen(prefix + "big") == len(big)
    wire.close()


def test_a_tls_socket_is_not_read_around(client) -> None:
    """Only a plain ``socket.socket`` is read with ``os.readv``: a subclass (``ssl.SSLSocket``
    is one) must be read through its own layer."""
    import socket

    class Wrapped(socket.socket):  # stands for ssl.SSLSocket: a socket.socket subclass
        pass

    class Conn:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

    wire = _wire(client)
    with Wrapped() as wrapped, socket.socket() as plain:
        assert wire._plain_fd(Conn(wrapped)) == -1
        assert wire._plain_fd(Conn(plain)) == plain.fileno()
    wire.close()


def test_what_one_write_leaves_goes_through_redis_py(client, prefix, monkeypatch):
    """A short ``os.write`` (a full send buffer) hands the rest to redis-py's send."""
    wire = _wire(client)
    assert wire.call(("PING",)) == [b"PONG"]  # connected: the next call writes the socket
    real_write = redis_wire._write
    handed: list[bytes] = []

    def short_write(fd: int, data) -> int:
        return real_write(fd, bytes(data[:7]))

    conn = wire._conn
    real_send = conn.send_packed_command

    def send(items, check_health=True):
        handed.extend(items)
        return real_send(items, check_health=check_health)

    monkeypatch.setattr(redis_wire, "_write", short_write)
    monkeypatch.setattr(conn, "send_packed_command", send)
    command = ("SET", prefix + "k", "value")
    assert wire.call(command) == [b"OK"]
    assert handed == [redis_wire._pack_one(command)[7:]]  # the rest, after the 7 bytes written
    assert client.get(prefix + "k") == b"value"
    wire.close()


def test_a_killed_connection_is_replaced_and_its_descriptor_with_it(client, prefix):
    """After the server closes the wire's connection, the next call works on a new one, read
    and written through the new socket's descriptor."""
    wire = _wire(client)
    assert wire.call(("CLIENT", "SETNAME", prefix.rstrip(":"))) == [b"OK"]
    old_fd = wire._fd
    for entry in client.client_list():
        if entry.get("name") == prefix.rstrip(":"):
            client.client_kill_filter(_id=entry["id"])
    assert wire.call(("INCR", prefix + "n")) == [1]  # one quiet retry on a fresh connection
    assert wire._fd == wire._conn._sock.fileno()
    assert old_fd is not None
    wire.close()
