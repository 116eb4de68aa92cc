"""The AMQP transport's own plain-socket frame reader (``read_frames``) and writer
(``_write_frames``), on a local socket pair standing in for the broker: whole frames go to
py-amqp's frame handler in order, a frame cut short waits in py-amqp's read buffer for its rest,
and nothing is lost when a frame's handler raises. No broker needed."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from amqp import exceptions as amqp_errors

from celeriac.transport.amqp import ConnectionLost, _write_frames, read_frames


def _frame(kind: int, payload: bytes, channel: int = 1) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._read_buffer = b""
        self.connected = True
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


class _Conn:
    """What read_frames uses of an ``amqp.Connection``."""

    def __init__(self, sock: socket.socket) -> None:
        self.transport = _Transport(sock)
        self.frames: list[tuple[int, int, bytes]] = []
        self.fail_on: bytes | None = None
        self.bytes_sent = 0

    def on_inbound_frame(self, frame: tuple[int, int, bytes]) -> None:
        if frame[2] == self.fail_on:
            self.fail_on = None
            raise amqp_errors.ChannelError("closed by the broker")
        self.frames.append(frame)


@pytest.fixture
def pair() -> Any:
    ours, broker = socket.socketpair()
    yield _Conn(ours), broker
    ours.close()
    broker.close()


def test_every_whole_frame_is_handled_in_order(pair: Any) -> None:
    conn, broker = pair
    frames = [_frame(1, b"method"), _frame(2, b"header" * 50), _frame(3, b""), _frame(8, b"")]
    broker.sendall(b"".join(frames))
    assert read_frames(conn) == sum(map(len, frames))
    assert conn.frames == [(1, 1, b"method"), (2, 1, b"header" * 50), (3, 1, b""), (8, 1, b"")]
    assert conn.transport._read_buffer == b""
    assert read_frames(conn) == 0  # nothing more there: no waiting


def test_a_frame_cut_short_waits_for_its_rest(pair: Any) -> None:
    conn, broker = pair
    whole = _frame(3, b"body" * 100, channel=2)
    for cut in (3, 7, len(whole) - 1):  # in the frame header, just after it, before the end
        broker.sendall(_frame(1, b"m") + whole[:cut])
        read_frames(conn)
        assert conn.frames == [(1, 1, b"m")]
        assert conn.transport._read_buffer == whole[:cut]  # py-amqp's own read carries on here
        broker.sendall(whole[cut:])
        read_frames(conn)
        assert conn.frames == [(1, 1, b"m"), (3, 2, b"body" * 100)]
        assert conn.transport._read_buffer == b""
        conn.frames.clear()


def test_frames_after_one_whose_handler_raised_are_kept(pair: Any) -> None:
    conn, broker = pair
    later = _frame(1, b"after")
    broker.sendall(_frame(1, b"before") + _frame(1, b"boom") + later)
    conn.fail_on = b"boom"
    with pytest.raises(amqp_errors.ChannelError):
        read_frames(conn)
    assert conn.frames == [(1, 1, b"before")]
    assert conn.transport._read_buffer == later  # handled by whoever reads next
    broker.sendall(_frame(8, b""))
    read_frames(conn)
    assert conn.frames == [(1, 1, b"before"), (1, 1, b"after"), (8, 1, b"")]


def test_a_bad_frame_end_is_refused(pair: Any) -> None:
    conn, broker = pair
    broker.sendall(_frame(1, b"m")[:-1] + b"\x00")
    with pytest.raises(amqp_errors.UnexpectedFrame):
        read_frames(conn)
    assert conn.transport.connected is False


def test_a_closed_connection_is_a_lost_connection(pair: Any) -> None:
    conn, broker = pair
    broker.close()
    with pytest.raises(ConnectionLost):
        read_frames(conn)
    assert conn.transport.connected is False
    conn.transport = None
    with pytest.raises(ConnectionLost):
        read_frames(conn)


def test_frames_are_written_whole_in_few_writes(pair: Any) -> None:
    conn, _ = pair
    frames = [_frame(1, bytes([n]) * 1000) for n in range(5)]
    _write_frames(conn, frames)
    assert conn.transport.written == [b"".join(frames)]
    assert conn.bytes_sent == 5
    _write_frames(conn, frames[:1])
    assert conn.transport.written[1] == frames[0]
