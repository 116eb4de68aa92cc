"""What the AMQP transport's event-driven fetch relies on in py-amqp's plain-socket reader.

``AMQPTransport._read`` (celeriac/transport/amqp/__init__.py) waits for the consumer
connection's socket to be readable, holding no lock, instead of polling ``drain_events`` with
short timeouts. That is only right if every frame not yet parsed is still in the socket: if
py-amqp's TCP transport ever read ahead into a buffer of its own, a delivery could sit there
unseen by the poll until the next bytes arrived. This test fails, naming the version, when a
py-amqp release starts reading ahead (pyproject.toml holds py-amqp to major 5; see also
tests/unit/utils/test_amqp_private_attrs.py). No broker is needed: a local socket plays one.
"""

from __future__ import annotations

import select
import socket
import struct

import amqp


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, 1, len(payload)) + payload + b"\xce"


def test_py_amqp_reads_a_plain_socket_no_further_than_the_frame_it_parses() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    transport = amqp.transport.Transport(f"127.0.0.1:{server.getsockname()[1]}",
                                         connect_timeout=2)
    try:
        transport.connect()
        peer, _ = server.accept()
        with peer:
            assert peer.recv(8).startswith(b"AMQP")  # the protocol header
            frames = [_frame(1, b"\x00\x3c\x00\x3c" + b"m" * 40), _frame(2, b"h" * 30),
                      _frame(3, b"b" * 300)]  # a delivery's three frames, sent at once
            peer.sendall(b"".join(frames))
            poller = select.poll()
            poller.register(transport.sock.fileno(), select.POLLIN)
            for index, frame in enumerate(frames):
                assert poller.poll(2000), (
                    f"py-amqp {amqp.__version__}: frame {index + 1} of 3 was read into the "
                    "transport's own buffer before it was parsed (read-ahead): "
                    "AMQPTransport._read's socket poll would not see it")
                kind, channel, payload = transport.read_frame()
                assert (kind, channel, payload) == (frame[0], 1, frame[7:-1])
            assert not poller.poll(0)
    finally:
        transport.close()
        server.close()
