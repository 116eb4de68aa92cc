"""The AMQP content header celeriac writes, compared with what Celery 5.7 put on the wire.

The vectors in ``/work/shared/vectors/celery/amqp/send`` hold the raw content-header property
bytes of every message Celery sent (``raw_content_header_properties_b64``) and the typed
fields (``properties_typed``). Two checks, no broker needed:

- every captured message read by the transport (``wire.from_amqp``) and written again
  (``wire.to_amqp``) gives back the same bytes: no header changes type on the way through;
- a message celeriac's protocol layer builds for the same call carries the same property flags
  and, header by header, the same AMQP field types as Celery's.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from pathlib import Path
from typing import Any

import amqp
import pytest

from celeriac.protocol import v2
from celeriac.protocol.message import Message
from celeriac.transport.amqp import wire

VECTORS = Path("/work/shared/vectors/celery/amqp/send")
CASES = sorted(VECTORS.glob("*.json")) if VECTORS.is_dir() else []
BASIC_CLASS = 60


def _captured() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in CASES:
        doc = json.loads(path.read_text())
        for i, msg in enumerate(doc["messages"]):
            if "raw_content_header_properties_b64" in msg:
                out.append((f"{path.stem}[{i}]", msg))
    return out


CAPTURED = _captured()


def _read(raw: bytes) -> Any:
    msg = amqp.Message(b"")
    msg._load_properties(BASIC_CLASS, raw, 0)
    return msg


def test_the_vectors_are_there() -> None:
    assert len(CAPTURED) >= 20, f"expected Celery's captured AMQP messages in {VECTORS}"


@pytest.mark.parametrize(("case", "captured"), CAPTURED, ids=[c for c, _ in CAPTURED])
def test_a_captured_message_is_written_back_byte_for_byte(case: str,
                                                          captured: dict[str, Any]) -> None:
    raw = base64.b64decode(captured["raw_content_header_properties_b64"])
    message, not_before, route = wire.from_amqp(_read(raw))
    assert route is None
    # what a celeriac worker (or a dead-letter replay) would publish again
    written = wire.to_amqp(message)._serialize_properties()
    assert written == raw, f"{case}: the content header changed on the way through"
    typed = captured["properties_typed"]
    assert message.content_type == typed["content_type"]
    assert message.properties.get("correlation_id") == typed.get("correlation_id")
    if message.headers.get("eta"):
        assert not_before == pytest.approx(
            datetime.datetime.fromisoformat(message.headers["eta"]).timestamp())


def _letter(value: Any) -> str:
    """The field-table type py-amqp (and so Celery) writes for ``value`` (spec section 3.2)."""
    if isinstance(value, bool):
        return "t"
    if isinstance(value, int):
        return "I" if -2147483647 <= value <= 2147483647 else "L"
    return {str: "S", float: "d", type(None): "V", list: "A", tuple: "A", dict: "F"}[type(value)]


def _typed_letters(typed: dict[str, Any]) -> dict[str, str]:
    return {key: letter for key, (letter, _) in typed.items()}


@pytest.mark.parametrize("case", ["delay_basic", "countdown", "priority", "combined_options"])
def test_celeriac_sends_the_same_fields_with_the_same_types(case: str) -> None:
    doc = json.loads((VECTORS / f"{case}.json").read_text())
    captured = doc["messages"][0]
    typed = captured["properties_typed"]
    headers = {key: value for key, (_, value) in typed["headers"].items()}
    task_id = headers["id"]
    eta = (datetime.datetime.fromisoformat(headers["eta"]) if headers.get("eta") else None)
    expires = (datetime.datetime.fromisoformat(headers["expires"])
               if headers.get("expires") else None)
    limits = headers.get("timelimit") or [None, None]
    built: Message = v2.encode_task(
        name=headers["task"], task_id=task_id, args=captured["decoded_body"][0],
        kwargs=captured["decoded_body"][1], root_id=headers.get("root_id"),
        parent_id=headers.get("parent_id"), shadow=headers.get("shadow"), eta=eta,
        expires=expires, retries=headers.get("retries") or 0, time_limit=limits[0],
        soft_time_limit=limits[1], origin=headers.get("origin"),
        ignore_result=headers.get("ignore_result"), reply_to=typed.get("reply_to", ""),
        priority=typed.get("priority"), argsrepr=headers.get("argsrepr"),
        kwargsrepr=headers.get("kwargsrepr"))
    written = wire.to_amqp(built)
    raw = written._serialize_properties()
    assert f"0x{int.from_bytes(raw[:2], 'big'):04x}" == typed["_property_flags"]
    ours = {key: _letter(value) for key, value in built.headers.items()}
    theirs = _typed_letters(typed["headers"])
    # the same header names; where both carry a value of the same kind, the same AMQP type
    assert sorted(ours) == sorted(theirs)
    for key, letter in theirs.items():
        if letter != "V" and built.headers[key] is not None:
            assert ours[key] == letter, f"{case}: header {key!r} typed {ours[key]}, Celery {letter}"
    for prop in ("content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to"):
        assert written.properties.get(prop) == typed.get(prop), prop
    assert ("expiration" in written.properties) == ("expiration" in typed)


def test_a_header_amqp_cannot_carry_is_refused_before_sending() -> None:
    with pytest.raises(TypeError):
        wire.to_amqp(Message(b"x", headers={"id": object()}))


def test_private_headers_are_only_added_when_needed_and_removed_on_receipt() -> None:
    plain = Message(b"x", headers={"id": "1", "eta": "2030-01-01T00:00:00+00:00"},
                    properties={"delivery_mode": 2, "priority": 0})
    out = wire.to_amqp(plain, not_before=1.0)  # the eta header says it already
    assert set(out.properties["application_headers"]) == {"id", "eta"}
    odd = Message(b"y", headers={"id": "2"}, properties={"body_encoding": "base64"})
    sent = wire.to_amqp(odd, not_before=123.5, route=("ex", "rk"))
    back, not_before, route = wire.from_amqp(sent)
    assert (back, not_before, route) == (odd, 123.5, ("ex", "rk"))


_EDGES: list[Any] = [
    "é" * 10_000, b"\x00\xff", True, 1.5, float("inf"), None, 0, 2**31 - 1, -(2**31), 2**31,
    2**63 - 1, 2**63, -(2**63), -(2**63) - 1, decimal.Decimal("1.25"),
    decimal.Decimal("-2147483648"), decimal.Decimal("2147483648"), decimal.Decimal("NaN"),
    decimal.Decimal("1E+2"), decimal.Decimal("0." + "0" * 254 + "1"),
    decimal.Decimal("0." + "0" * 255 + "1"), datetime.datetime(2026, 1, 1),
    datetime.datetime(1969, 12, 31), [1, "a", [None, {"x": 2}]], (1, 2), {"k": object()},
    [object()], object(), {1, 2}, {"k": 2**64}, {"a" * 255: 1}, {"a" * 256: 1}, {"é" * 127: 1},
    {"é" * 128: 1}, {b"k": 1}, {1: 1}, {("t",): 1},
]


@pytest.mark.parametrize("value", _EDGES, ids=range(len(_EDGES)))
def test_check_table_accepts_exactly_what_py_amqp_can_encode(value: Any) -> None:
    """check_table walks the types instead of encoding the table: it must agree with
    py-amqp's encoder, which is what basic_publish runs."""
    headers = {"v": value}
    try:
        amqp.serialization.dumps("F", [headers])
    except Exception:  # noqa: BLE001 - any failure of the encoder means "cannot be carried"
        encodable = False
    else:
        encodable = True
    if encodable:
        wire.check_table(headers)
    else:
        with pytest.raises(TypeError):
            wire.check_table(headers)


def test_a_header_table_containing_itself_is_refused_as_a_type_error() -> None:
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(TypeError):
        wire.check_table({"v": looped})


# ---- priorities (Celery 5.7 observed on RabbitMQ 3.10: apply_async(priority=20) sends 20,
# apply_async(queue=...) without one sends no priority property, delay() sends 0) -----------
def _app_message(broker: str, call: Any) -> Message:
    from celeriac import Celery

    app = Celery(f"wire-{broker[:4]}", broker=broker, backend="sqlite:///:memory:",
                 set_as_current=False)
    app.conf.task_routes = {"routed": {"queue": "by_route"}}

    @app.task(name="plain")
    def plain() -> None: ...

    @app.task(name="routed")
    def routed() -> None: ...

    try:
        return call(app).message
    finally:
        app.close()


@pytest.mark.parametrize(("call", "priority"), [
    (lambda app: app.producer.build("plain", _task=app.tasks["plain"], priority=20), 20),
    (lambda app: app.producer.build("plain", _task=app.tasks["plain"], priority=255), 255),
    (lambda app: app.producer.build("plain", _task=app.tasks["plain"]), 0),
    (lambda app: app.producer.build("plain", _task=app.tasks["plain"], queue="q"), None),
    (lambda app: app.producer.build("plain", queue="q"), 0),  # app.send_task
    (lambda app: app.producer.build("routed", _task=app.tasks["routed"], queue="q"), 0),
])
def test_the_priority_property_is_sent_or_left_out_as_celery_does(call: Any,
                                                                  priority: int | None) -> None:
    built = _app_message("amqp://guest:guest@127.0.0.1:5672//", call)
    sent = wire.to_amqp(built)
    assert sent.properties.get("priority") == priority
    flags = int.from_bytes(sent._serialize_properties()[:2], "big")
    assert bool(flags & 0x0800) == (priority is not None)  # the priority property flag
    back, _, _ = wire.from_amqp(sent)
    assert back.properties.get("priority") == priority


def test_redis_keeps_kombus_priority_0_where_amqp_leaves_it_out() -> None:
    import json

    from celeriac.transport.redis.envelope import encode

    built = _app_message("redis://127.0.0.1:6379/0",
                         lambda app: app.producer.build("plain", _task=app.tasks["plain"],
                                                        queue="q"))
    assert json.loads(encode(built, "q", "tag"))["properties"]["priority"] == 0  # kombu's 0


@pytest.mark.parametrize("priority", [-1, 256, 1000])
def test_a_priority_amqp_cannot_carry_is_refused_before_sending(priority: int) -> None:
    with pytest.raises(ValueError, match="0..255"):
        wire.to_amqp(v2.encode_task(name="t", task_id="i", priority=priority))


def test_reply_to_is_the_apps_oid_without_an_rpc_result_store() -> None:
    from celeriac import Celery

    app = Celery("oid", broker="amqp://guest:guest@127.0.0.1:5672//",
                 backend="sqlite:///:memory:", set_as_current=False)
    try:
        built = app.producer.build("t")
        assert built.message.properties["reply_to"] == app.oid != ""
        assert app.producer.build("t", reply_to="mine").message.properties["reply_to"] == "mine"
    finally:
        app.close()


# ---- the frames the transport writes itself: the same bytes as py-amqp's writer ---------------
def test_the_property_order_is_py_amqps() -> None:
    assert list(wire.PROPERTY_ORDER) == [tuple(p) for p in amqp.Message.PROPERTIES]


@pytest.mark.parametrize(("case", "captured"), CAPTURED, ids=[c for c, _ in CAPTURED])
def test_encode_properties_writes_celerys_captured_bytes(case: str,
                                                         captured: dict[str, Any]) -> None:
    raw = base64.b64decode(captured["raw_content_header_properties_b64"])
    message, _, _ = wire.from_amqp(_read(raw))
    assert wire.encode_properties(wire.to_amqp(message).properties) == raw, case


class _Text(str):
    pass


@pytest.mark.parametrize("value", _EDGES, ids=range(len(_EDGES)))
def test_encode_properties_agrees_with_py_amqp_on_every_edge(value: Any) -> None:
    """Byte for byte what ``Message._serialize_properties`` writes, or refused where it
    refuses (an exception either way)."""
    msg = amqp.Message(b"", application_headers={"v": value, "w": _Text("s")},
                       content_type="application/json", delivery_mode=2, priority=9,
                       correlation_id="c", reply_to="r", expiration="1000", message_id="m",
                       timestamp=1_700_000_000, type="t", user_id="guest", app_id="a",
                       cluster_id="x")
    try:
        expected = msg._serialize_properties()
    except Exception:  # noqa: BLE001 - py-amqp cannot write it: neither may we
        with pytest.raises(Exception):  # noqa: B017, PT011
            wire.encode_properties(msg.properties)
        return
    assert wire.encode_properties(msg.properties) == expected


def test_encode_properties_leaves_out_what_is_none() -> None:
    for properties in ({}, {"priority": None, "content_type": "x"}, {"application_headers": {}}):
        msg = amqp.Message(b"", **properties)
        assert wire.encode_properties(msg.properties) == msg._serialize_properties()


class _Recorder:
    """What py-amqp's frame writer sends, recorded as one byte string."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: Any) -> None:
        self.sent += bytes(data)


def _py_amqp_frames(frame_max: int, method: Any, fmt: str, args: tuple[Any, ...],
                    msg: Any = None) -> bytes:
    from amqp.method_framing import frame_writer

    recorder = _Recorder()
    conn: Any = type("Conn", (), {"frame_max": frame_max, "bytes_sent": 0})()
    frame_writer(conn, recorder)(1, 3, method, amqp.serialization.dumps(fmt, args), msg)
    return bytes(recorder.sent)


@pytest.mark.parametrize("body", [b"", b"x" * 10, b"y" * 5000, "text é"])
def test_publish_frames_are_py_amqps_basic_publish(body: Any) -> None:
    from amqp import spec

    frame_max = 1024  # a body above it is split into several body frames
    sent = wire.to_amqp(Message(b"", headers={"id": "1", "task": "t"},
                                properties={"delivery_mode": 2, "priority": 0}))
    theirs = amqp.Message(body, **sent.properties)
    ours = amqp.Message(body, **sent.properties)
    expected = _py_amqp_frames(frame_max, spec.Basic.Publish, "Bssbb",
                               (0, "ex", "rk", False, False), theirs)
    assert wire.publish_frames(3, "ex", "rk", ours, frame_max) == expected


def test_ack_frame_is_py_amqps_basic_ack() -> None:
    from amqp import spec

    for tag in (1, 2**40):
        expected = _py_amqp_frames(131072, spec.Basic.Ack, "Lb", (tag, False))
        assert wire.ack_frame(3, tag) == expected


# ---- content headers read without py-amqp's generic decoder: the same values and types --------
@pytest.mark.parametrize(("case", "captured"), CAPTURED, ids=[c for c, _ in CAPTURED])
def test_decode_properties_reads_celerys_captured_bytes_as_py_amqp_does(
        case: str, captured: dict[str, Any]) -> None:
    from amqp.serialization import decode_properties_basic

    raw = base64.b64decode(captured["raw_content_header_properties_b64"])
    ours, theirs = wire.decode_properties(raw, 0), decode_properties_basic(raw, 0)
    assert ours == theirs, case
    assert repr(ours) == repr(theirs), case  # the same types too (True, not 1; str, not bytes)


def _edge_message(value: Any) -> Any:
    return amqp.Message(b"", application_headers={"v": value, "w": [1.5, 2**40, True, b"\xff"]},
                        content_type="x", delivery_mode=2, priority=9, correlation_id="c",
                        reply_to="r", expiration="1", message_id="m", timestamp=1_700_000_000,
                        type="t", user_id="u", app_id="a", cluster_id="x")


def _sendable(value: Any) -> bool:
    try:
        _edge_message(value)._serialize_properties()
    except Exception:  # noqa: BLE001 - not something anyone can send
        return False
    return True


#: the edges py-amqp can write at all (the rest are checked by the encoder's tests)
_SENDABLE_EDGES = [value for value in _EDGES if _sendable(value)]


@pytest.mark.parametrize("value", _SENDABLE_EDGES, ids=range(len(_SENDABLE_EDGES)))
def test_decode_properties_agrees_with_py_amqp_on_every_edge(value: Any) -> None:
    from amqp.serialization import decode_properties_basic

    raw = b"junk" + _edge_message(value)._serialize_properties()
    ours, theirs = wire.decode_properties(raw, 4), decode_properties_basic(raw, 4)
    assert repr(ours) == repr(theirs)


def test_the_frame_handler_hands_over_what_py_amqps_does() -> None:
    """Deliveries (with a split body, without a body, on two channels at once), other methods
    and heartbeats, through ``wire.frame_handler`` and py-amqp's own: the same calls."""
    import struct

    from amqp.exceptions import UnexpectedFrame
    from amqp.method_framing import frame_handler as py_amqp_frame_handler

    sent = wire.to_amqp(Message(b"", headers={"id": "1", "task": "t", "n": [1, None]},
                                properties={"delivery_mode": 2, "priority": 0}))
    header_props = wire.encode_properties(sent.properties)

    def header(size: int) -> bytes:
        return struct.pack(">HHQ", 60, 0, size) + header_props

    deliver = struct.pack(">HH", 60, 60) + amqp.serialization.dumps(
        "sLbss", ("ctag", 7, False, "", "q"))
    frames = [(1, 1, deliver), (2, 1, header(6)), (1, 2, deliver), (3, 1, b"abc"),
              (8, 0, b""), (2, 2, header(0)), (3, 1, b"def"),
              (1, 1, struct.pack(">HH", 60, 31) + b"\x00\x00\x00\x01\x00")]

    def run(factory: Any) -> list[Any]:
        conn: Any = type("Conn", (), {"bytes_recv": 0})()
        calls: list[Any] = []
        handle = factory(conn, lambda channel, sig, args, content: calls.append((
            channel, sig, args, None if content is None else (
                content.body, repr(content.properties), type(content).__mro__[-3]))))
        returned = [handle(frame) for frame in frames]
        with pytest.raises(UnexpectedFrame):
            handle((3, 1, b"stray"))
        return [returned, calls, conn.bytes_recv]

    assert run(wire.frame_handler) == run(py_amqp_frame_handler)


def _deliveries_through(factory: Any, *, auto_decode: bool = False,
                        closing: bool = False) -> tuple[list[Any], int]:
    """A basic.deliver (redelivered, routed, non-ASCII names, split body) fed through
    ``factory``'s frame handler into a real py-amqp channel: what its consumer callback got,
    and how many methods went through py-amqp's generic dispatch."""
    import struct

    conn = amqp.Connection("127.0.0.1:1")  # never connected: only its channel table is used
    channel = amqp.Channel(conn, channel_id=1, auto_decode=auto_decode)
    channel.is_closing = closing
    got: list[Any] = []
    channel.callbacks["ctag-é"] = got.append
    generic: list[Any] = []

    def dispatch(*args: Any) -> Any:
        generic.append(args[1])
        return conn.on_inbound_method(*args)

    sent = wire.to_amqp(Message(b"", headers={"id": "1", "task": "t", "n": [1, None]},
                                properties={"delivery_mode": 2, "priority": 3}))
    header = struct.pack(">HHQ", 60, 0, 6) + wire.encode_properties(sent.properties)
    deliver = struct.pack(">HH", 60, 60) + amqp.serialization.dumps(
        "sLbss", ("ctag-é", 2**40 + 7, True, "ex", "rk.ü"))
    handle = factory(conn, dispatch)
    for frame in [(1, 1, deliver), (2, 1, header), (3, 1, b"abc"), (3, 1, b"def")]:
        handle(frame)
    return [(m.delivery_info, m.body, repr(m.properties), m.channel is channel)
            for m in got], len(generic)


def test_a_delivery_reaches_its_consumer_as_through_py_amqps_dispatch() -> None:
    """``wire.frame_handler`` hands a basic.deliver straight to the consumer's callback, with
    the same delivery_info, body and properties py-amqp's own dispatch gives."""
    from amqp.method_framing import frame_handler as py_amqp_frame_handler

    ours, generic = _deliveries_through(wire.frame_handler)
    theirs, _ = _deliveries_through(py_amqp_frame_handler)
    assert generic == 0  # not through py-amqp's dispatch
    assert ours == theirs
    assert ours[0][0] == {"consumer_tag": "ctag-é", "delivery_tag": 2**40 + 7,
                          "redelivered": True, "exchange": "ex", "routing_key": "rk.ü"}


@pytest.mark.parametrize("case", ["auto_decode", "closing"])
def test_a_delivery_py_amqp_must_handle_goes_through_its_dispatch(case: str) -> None:
    """A channel that decodes bodies, or is closing (py-amqp drops what arrives then), gets
    the delivery through py-amqp's own path, with its own outcome."""
    from amqp.method_framing import frame_handler as py_amqp_frame_handler

    options = {case: True}
    ours, generic = _deliveries_through(wire.frame_handler, **options)
    theirs, _ = _deliveries_through(py_amqp_frame_handler, **options)
    assert generic == 1
    assert ours == theirs
