"""The amqp:// transport's own bookkeeping, on a fake connection that records what is written:
the prefetch it asks for as ETA messages come and go, and counting what it holds while other
threads settle. What the broker does with those frames is tested on RabbitMQ
(tests/integration/test_amqp_*.py, tests/contract)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import pytest

from celeriac.protocol.message import Message
from celeriac.transport.amqp import AMQPTransport, _ConsumerConnection
from celeriac.transport.amqp.wire import to_amqp
from celeriac.transport.base import Delivery


class FakeChannel:
    channel_id = 1

    def __init__(self) -> None:
        self.auto_decode = True
        self.connection = True  # open (py-amqp sets it to None once the channel closes)
        self.qos: list[int] = []
        self.acked: list[int] = []

    def basic_qos(self, size: int, count: int, global_: bool) -> None:
        self.qos.append(count)

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)


class FakeTransport:
    """Reads back the basic.ack frames the transport writes straight to the socket."""

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), 21):  # a basic.ack frame is 21 bytes
            kind, _, size, class_id, method_id, tag, _, end = struct.unpack(
                ">BHIHHQBB", data[start:start + 21])
            assert (kind, size, class_id, method_id, end) == (1, 13, 60, 80, 0xCE)
            self.channel.acked.append(tag)


class FakeConnection:
    def __init__(self) -> None:
        self._channel = FakeChannel()
        self.sock, self._peer = socket.socketpair()
        self.frame_writer = lambda *args, **kwargs: None
        self.transport = FakeTransport(self._channel)
        self.bytes_sent = 0

    def channel(self) -> FakeChannel:
        return self._channel

    def close(self) -> None:
        self.sock.close()
        self._peer.close()


@pytest.fixture
def consumer() -> Any:
    transport = AMQPTransport("amqp://guest:guest@127.0.0.1:5672//", heartbeat=0)
    conn = FakeConnection()
    current = _ConsumerConnection(conn, 1, tls=False)
    current.declared.add("q")
    current.consumers["q"] = "ctag"
    current.queues_of["ctag"] = "q"
    transport._consumer = current
    yield transport, current, conn._channel
    conn.close()


def _arrival(tag: int, not_before: float | None) -> Any:
    msg = to_amqp(Message(b"x", headers={"id": f"t{tag}"}), not_before=not_before)
    msg.delivery_info = {"consumer_tag": "ctag", "delivery_tag": tag, "redelivered": False,
                         "exchange": "", "routing_key": "q"}
    return msg


def _fetch(transport: AMQPTransport, current: Any, max_n: int,
           arrivals: list[Any]) -> list[Delivery]:
    """One fetch, the broker pushing ``arrivals`` at its first read."""
    pushed = list(arrivals)

    def read(current: Any, wait: float) -> bool:
        current.arrived.extend(pushed)
        got = bool(pushed)
        pushed.clear()
        return got

    transport._read = read  # type: ignore[method-assign]
    return transport._fetch(current, ["q"], max_n, time.monotonic())


def test_prefetch_follows_held_eta_messages_down_as_well_as_up(consumer: Any) -> None:
    transport, current, channel = consumer
    later = time.time() + 3600
    # asks for 2; the broker pushes three early ETA messages and one due now
    got = _fetch(transport, current, 2, [_arrival(1, later), _arrival(2, later),
                                         _arrival(3, later), _arrival(4, None)])
    assert [d.receipt[1] for d in got] == [4]
    assert len(current.waiting) == 3
    # the first basic_qos, then one for the read that held three: not one per message
    assert channel.qos == [2, 5]
    # the task runs and is acked; the three ETA messages are still held
    assert transport.ack(got) == [True]
    _fetch(transport, current, 2, [])
    assert channel.qos == [2, 5]  # unchanged: 3 held for their ETA + 2 asked for
    # their ETA passes: they are handed out, run and acked: the window shrinks back
    current.waiting = [(0.0, seq, d) for seq, (_, _, d) in enumerate(current.waiting)]
    released = _fetch(transport, current, 3, [])
    assert sorted(d.receipt[1] for d in released) == [1, 2, 3]
    assert transport.ack(released) == [True, True, True]
    _fetch(transport, current, 2, [])
    # the window is the most ever asked for at once (3 here): asking for less again, as a
    # worker does while its early-acked task runs, is no reason for a round trip
    assert channel.qos == [2, 5, 3]
    # a fetch that changes nothing sends no basic_qos (it is a round trip)
    sent = len(channel.qos)
    _fetch(transport, current, 2, [])
    assert len(channel.qos) == sent


def test_a_fetch_that_may_not_wait_reads_the_socket_once_without_waiting(consumer: Any) -> None:
    """A zero timeout still takes what the broker pushed since the last read (the solo
    worker's refill at a task's start): one read that does not wait, and none when messages
    are ready already."""
    transport, current, channel = consumer
    _fetch(transport, current, 2, [])  # the first basic_qos, and its burst read
    waits: list[float] = []
    pushed = [_arrival(1, None), _arrival(2, None), _arrival(3, None)]

    def read(current: Any, wait: float) -> bool:
        waits.append(wait)
        current.arrived.extend(pushed)
        got = bool(pushed)
        pushed.clear()
        return got

    transport._read = read  # type: ignore[method-assign]
    got = transport.fetch(["q"], 2, 0.0)
    assert [d.receipt[1] for d in got] == [1, 2]
    assert waits == [0.0]
    assert transport.ack(got) == [True, True]  # early acks: the window stays at 2
    got = transport.fetch(["q"], 2, 0.0)
    assert [d.receipt[1] for d in got] == [3]  # ready already: no read
    assert waits == [0.0]
    assert transport.ack(got) == [True]
    assert transport.fetch(["q"], 2, 0.0) == []
    assert waits == [0.0, 0.0]


def test_qsize_counts_a_copy_while_other_threads_settle(consumer: Any,
                                                        monkeypatch: Any) -> None:
    transport, current, channel = consumer
    monkeypatch.setattr(transport, "_count", lambda queue, purge: 0)
    message = Message(b"x", headers={"id": "t"})
    deliveries = [Delivery(message, "q", (1, tag), 1, False, {"delivery_tag": tag}, "", "q")
                  for tag in range(1, 20001)]
    for delivery in deliveries:
        current.held[delivery.receipt[1]] = "q"
    errors: list[BaseException] = []
    done = threading.Event()

    def settle() -> None:
        try:
            for delivery in deliveries:
                transport.ack([delivery])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=settle)
    thread.start()
    counts = []
    try:
        while not done.is_set():
            counts.append(transport.qsize("q"))
    except RuntimeError as exc:  # "dictionary changed size during iteration"
        errors.append(exc)
    thread.join()
    assert not errors
    assert counts == sorted(counts, reverse=True)  # only ever settled meanwhile
    assert transport.qsize("q") == 0



def test_the_fetching_thread_ticks_py_amqps_heartbeat_at_most_every_tenth_of_a_second() -> None:
    """``tick`` on every pass of a busy fetch reaches py-amqp's ``heartbeat_tick`` only once
    its next time has come, then sets the next one at most 0.1 s (an eighth of the heartbeat
    interval, when shorter) on; never with heartbeats off."""
    conn = FakeConnection()
    ticks: list[float] = []
    conn.heartbeat_tick = lambda: ticks.append(time.monotonic())  # type: ignore[attr-defined]
    current = _ConsumerConnection(conn, 1, tls=False)
    try:
        for _ in range(100):
            current.tick(0)
        assert ticks == []
        current.tick(60)
        assert len(ticks) == 1
        assert current.next_tick <= time.monotonic() + 0.1
        current.next_tick = time.monotonic() + 3600  # not due yet
        for _ in range(100):
            current.tick(60)
        assert len(ticks) == 1
        current.next_tick = time.monotonic() - 1  # due
        current.tick(0.4)
        assert len(ticks) == 2
        assert current.next_tick <= time.monotonic() + 0.05  # 0.4 s / 8
    finally:
        conn.close()


class _PollSpy:
    """A real ``select.poll`` that records each call's timeout (ms)."""

    def __init__(self, fileno: int) -> None:
        import select

        self.poller = select.poll()
        self.poller.register(fileno, select.POLLIN)
        self.calls: list[int] = []

    def poll(self, timeout: int) -> list[Any]:
        self.calls.append(timeout)
        return self.poller.poll(timeout)


def test_a_read_that_may_not_wait_reads_the_socket_without_polling_it() -> None:
    """The solo worker's refill at each task start (``_read`` with no wait) goes straight to
    a non-blocking ``recv``, no ``poll`` first: the frames the broker pushed are handled, and
    nothing there reads as nothing. A read that may wait polls first, as before."""
    transport = AMQPTransport("amqp://guest:guest@127.0.0.1:5672//", heartbeat=0)
    sock, peer = socket.socketpair()
    handled: list[Any] = []
    conn: Any = type("Conn", (), {})()
    conn.sock = sock
    conn.transport = type("Transport", (), {"sock": sock, "_read_buffer": b"",
                                            "connected": True})()
    conn.on_inbound_frame = handled.append
    conn.channel = lambda: FakeChannel()
    conn.frame_writer = lambda *args, **kwargs: None
    current = _ConsumerConnection(conn, 1, tls=False)
    spy = _PollSpy(sock.fileno())
    current.poller = spy  # type: ignore[assignment]
    try:
        heartbeat = struct.pack(">BHI", 8, 0, 0) + b"\xce"
        peer.sendall(heartbeat * 2)
        time.sleep(0.05)
        assert transport._read(current, 0.0) is False  # no message, but both frames handled
        assert handled == [(8, 0, b""), (8, 0, b"")]
        assert transport._read(current, 0.0) is False  # nothing there: nothing read
        assert len(handled) == 2
        assert spy.calls == []
        peer.sendall(heartbeat)
        assert transport._read(current, 1.0) is False  # a read that may wait polls first
        assert len(handled) == 3 and spy.calls == [1000]
    finally:
        sock.close()
        peer.close()
