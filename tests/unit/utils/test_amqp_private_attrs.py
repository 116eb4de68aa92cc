"""What celeriac relies on inside py-amqp beyond its documented API, checked against the
installed version.

``transport/amqp`` pipelines publisher confirms through ``channel.events['basic_ack']`` and
``['basic_nack']`` (callbacks py-amqp calls while ``drain_events`` reads the broker's confirms),
and serialises every frame written on the consumer connection by wrapping
``connection.frame_writer``. Neither is documented: pyproject.toml holds py-amqp to major 5, and
these tests fail, naming the attribute and the version, when a release changes one of them.
No broker is needed: the confirm callbacks are driven through py-amqp's own method dispatch.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import amqp
import pytest
from amqp import spec
from packaging.requirements import Requirement
from packaging.version import Version

from celeriac.transport.amqp import _locked_writer, _Producer

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def _gone(what: str) -> str:
    return (f"py-amqp {amqp.__version__}: {what} is gone or changed (used by "
            "celeriac/transport/amqp). Adapt that code before widening the amqp range in "
            "pyproject.toml.")


def test_the_installed_py_amqp_is_in_the_range_pyproject_pins() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for extra in ("amqp", "test"):
        pins = [Requirement(r) for r in extras[extra] if Requirement(r).name == "amqp"]
        assert pins, f"the {extra!r} extra no longer names amqp"
        for pin in pins:
            assert pin.specifier.contains(Version(amqp.__version__)), (
                f"py-amqp {amqp.__version__} is outside {pin} (the {extra!r} extra)")
            assert pin.specifier.contains("5.2") and not pin.specifier.contains("6.0")


def _channel() -> Any:
    try:
        return amqp.Channel(amqp.Connection(host="127.0.0.1:1"), channel_id=1)  # never connected
    except Exception as exc:  # noqa: BLE001 - the test reports which assumption broke
        pytest.fail(_gone(f"building amqp.Channel(connection, channel_id) ({exc!r})"))


def _payload(fmt: str, args: tuple[Any, ...]) -> bytes:
    return b"\0\0\0\0" + amqp.serialization.dumps(fmt, args)


def test_channel_events_carry_the_publisher_confirms() -> None:
    channel = _channel()
    events = getattr(channel, "events", None)
    assert events is not None, _gone("Channel.events")
    for name in ("basic_ack", "basic_nack"):
        assert isinstance(events[name], set), _gone(f"Channel.events[{name!r}] (a set)")
    seen: list[tuple[str, int, bool]] = []
    events["basic_ack"].add(lambda tag, multiple: seen.append(("ack", tag, multiple)))
    events["basic_nack"].add(lambda tag, multiple: seen.append(("nack", tag, multiple)))
    # what py-amqp does when drain_events reads basic.ack / basic.nack from the broker
    # (a method frame's payload: class and method ids, then the arguments)
    channel.dispatch_method(spec.Basic.Ack, _payload("Lb", (3, True)), None)
    channel.dispatch_method(spec.Basic.Nack, _payload("Lb", (4, False)), None)
    assert seen == [("ack", 3, True), ("nack", 4, False)], _gone(
        "the basic_ack/basic_nack callbacks' (delivery_tag, multiple) arguments")


def test_the_producer_bookkeeping_settles_pipelined_confirms() -> None:
    producer = _Producer(conn=None)
    producer.unconfirmed = {1, 2, 3, 4, 5}
    producer._on_ack(3, True)
    assert producer.unconfirmed == {4, 5}
    producer._on_nack(5, False)
    assert (producer.unconfirmed, producer.nacked) == ({4}, {5})
    producer._on_ack(4, False)
    assert producer.unconfirmed == set()


def test_every_frame_goes_through_connection_frame_writer() -> None:
    prop = getattr(amqp.Connection, "frame_writer", None)
    assert isinstance(prop, property) and prop.fset is not None, _gone(
        "the settable Connection.frame_writer property")
    connection = amqp.Connection(host="127.0.0.1:1")  # never connected
    written: list[tuple[Any, ...]] = []
    connection.frame_writer = lambda *args: written.append(args)

    class Lock:
        held = 0

        def __enter__(self) -> None:
            Lock.held += 1

        def __exit__(self, *exc: object) -> None:
            pass

    _locked_writer(connection, Lock())
    connection.send_heartbeat()  # heartbeats are written through it too
    assert written == [(8, 0, None, None, None)] and Lock.held == 1, _gone(
        "Connection.send_heartbeat writing through frame_writer")


def test_a_frame_start_left_in_the_read_buffer_is_where_py_amqps_read_carries_on() -> None:
    """``read_frames`` (transport/amqp) parses what one ``recv`` brought and leaves the start
    of an unfinished frame in the transport's ``_read_buffer``; py-amqp's own reads (the
    replies to ``basic_qos``, ``basic_cancel``...) must start from there. It also hands whole
    frames to ``Connection.on_inbound_frame`` and writes to ``transport.sock`` and
    ``transport.write``."""
    import socket
    import struct

    server = socket.create_server(("127.0.0.1", 0))
    transport = amqp.transport.Transport(f"127.0.0.1:{server.getsockname()[1]}",
                                         connect_timeout=2)
    try:
        transport.connect()
        peer, _ = server.accept()
        with peer:
            for name in ("sock", "write", "_read_buffer"):
                assert hasattr(transport, name), _gone(f"TCPTransport.{name}")
            frame = struct.pack(">BHI", 1, 1, 5) + b"hello" + b"\xce"
            transport._read_buffer = frame[:4]
            peer.sendall(frame[4:])
            assert transport.read_frame() == (1, 1, b"hello"), _gone(
                "TCPTransport.read_frame starting from _read_buffer")
            assert transport._read_buffer == b""
    finally:
        transport.close()
        server.close()
    connection = amqp.Connection(host="127.0.0.1:1")  # never connected
    for name in ("on_inbound_frame", "frame_max", "bytes_sent", "transport"):
        assert hasattr(type(connection), name) or hasattr(connection, name), _gone(
            f"Connection.{name}")
    channel = _channel()
    assert channel.channel_id == 1 and channel.connection is not None, _gone(
        "Channel.channel_id and Channel.connection")
