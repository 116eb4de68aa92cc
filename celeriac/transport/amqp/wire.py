"""A ``Message`` as an AMQP content header and body, the way Celery (kombu over py-amqp) sends it.

Layer: transport. Headers travel as the ``headers`` field table, typed by py-amqp exactly as
Celery's are (str ``S``, bool ``t``, small int ``I``, big int ``L``, float ``d``, None ``V``,
list ``A``, dict ``F``); ``content_type``, ``content_encoding`` and the AMQP basic properties the
message carries (``correlation_id``, ``reply_to``, ``delivery_mode``, ``priority``,
``expiration``...) are the content header's own properties. Nothing is added that the message
does not have, so a task message is byte for byte what Celery puts on the wire.

Three private headers exist only for what AMQP has no place for, and are never added to what
the producer builds for a task: ``x-celeriac-not-before`` (a ``not_before`` on a message without
an ``eta`` header), ``x-celeriac-route`` (the exchange and routing key an already-routed message
records) and ``x-celeriac-properties`` (properties that are not AMQP ones). They are removed
again on receipt.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import decimal
import struct
from typing import Any

import amqp  # type: ignore[import-untyped]

from ...protocol.message import Message

#: the AMQP 0-9-1 basic properties besides content type, encoding and headers
BASIC_PROPERTIES = frozenset({
    "delivery_mode", "priority", "correlation_id", "reply_to", "expiration", "message_id",
    "timestamp", "type", "user_id", "app_id", "cluster_id"})
NOT_BEFORE = "x-celeriac-not-before"
ROUTE = "x-celeriac-route"
EXTRA_PROPERTIES = "x-celeriac-properties"
_PRIVATE = (NOT_BEFORE, ROUTE, EXTRA_PROPERTIES)
#: the integer ranges py-amqp writes into a field table (``I``/``L``; ``D``'s value; ``T``)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT64_MAX = 2**64 - 1


def to_amqp(message: Message, *, not_before: float | None = None,
            route: tuple[str, str] | None = None) -> Any:
    """The ``amqp.Message`` to publish. Raises TypeError (before anything is sent) for a header
    value AMQP cannot carry, ValueError for a priority outside 0..255. A message without a
    ``priority`` property is sent without one."""
    headers = dict(message.headers)
    properties: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in message.properties.items():
        if key in BASIC_PROPERTIES:
            properties[key] = value
        else:
            extra[key] = value
    if extra:
        headers[EXTRA_PROPERTIES] = extra
    priority = properties.get("priority")
    if priority is not None and not 0 <= priority <= 255:
        # an AMQP octet; RabbitMQ caps it at the queue's x-max-priority (Celery fails here too,
        # in py-amqp's encoder, after the connection is in use)
        raise ValueError(f"an AMQP message priority is 0..255, not {priority!r}")
    if not_before is not None and headers.get("eta") is None:
        headers[NOT_BEFORE] = float(not_before)
    if route is not None:
        headers[ROUTE] = list(route)
    check_table(headers)
    return amqp.Message(message.body, content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        application_headers=headers, **properties)


# ---- writing frames without py-amqp's generic encoder -------------------------------------------
#: the basic properties in content-header order, with their AMQP types (py-amqp's
#: ``amqp.Message.PROPERTIES``; tests/unit/transport/test_amqp_wire.py checks they agree)
PROPERTY_ORDER: tuple[tuple[str, str], ...] = (
    ("content_type", "s"), ("content_encoding", "s"), ("application_headers", "F"),
    ("delivery_mode", "o"), ("priority", "o"), ("correlation_id", "s"), ("reply_to", "s"),
    ("expiration", "s"), ("message_id", "s"), ("timestamp", "L"), ("type", "s"),
    ("user_id", "s"), ("app_id", "s"), ("cluster_id", "s"))
_OCTET = [bytes((n,)) for n in range(256)]
_U8 = struct.Struct(">B").pack
_U16 = struct.Struct(">H").pack
_U32 = struct.Struct(">I").pack
_U64 = struct.Struct(">Q").pack
_LONGSTR = struct.Struct(">cI").pack
_INT = struct.Struct(">ci").pack
_LONG = struct.Struct(">cq").pack
_DOUBLE = struct.Struct(">cd").pack
_FRAME_HEAD = struct.Struct(">BHI").pack
#: basic.publish's method frame payload up to the exchange: class 60, method 40, reserved 0
_PUBLISH = struct.Struct(">HHH").pack(60, 40, 0)
#: basic.ack as a whole frame: type 1, channel, size 13, class 60, method 80, tag, flags, end
_ACK_FRAME = struct.Struct(">BHIHHQBB")


def _shortstr(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        raw = value
    else:
        raise TypeError(f"a short string must be str or bytes, not {type(value).__name__}")
    if len(raw) > 255:
        raise struct.error("a short string is at most 255 bytes")
    return _OCTET[len(raw)] + raw


#: field-table keys as written (length octet + UTF-8): task headers use a handful of names
_KEYS: dict[str, bytes] = {}
_KEYS_KEPT = 1024


def _key(key: Any) -> bytes:
    written = _KEYS.get(key) if isinstance(key, str) else None
    if written is None:
        written = _shortstr(key)
        if isinstance(key, str) and len(_KEYS) < _KEYS_KEPT:
            _KEYS[key] = written
    return written


def _write_table(table: dict[Any, Any], out: list[bytes]) -> None:
    """Append ``table`` as py-amqp writes a field table (length first), byte for byte."""
    parts: list[bytes] = []
    append = parts.append
    keys = _KEYS
    for key, value in table.items():
        written = keys.get(key) if type(key) is str else None
        append(written if written is not None else _key(key))
        kind = type(value)
        if kind is str:  # the common cases inline: strings and None
            raw = value.encode("utf-8", "surrogatepass")
            append(_LONGSTR(b"S", len(raw)))
            append(raw)
        elif value is None:
            append(b"V")
        else:
            _write_item(value, parts)
    data = b"".join(parts)
    out.append(_U32(len(data)))
    out.append(data)


def _write_item(value: Any, out: list[bytes]) -> None:
    """One field value, with py-amqp's type choices (the order of its ``isinstance`` tests)."""
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8", "surrogatepass")
        out.append(_LONGSTR(b"S", len(raw)))
        out.append(raw)
    elif value is None:
        out.append(b"V")
    elif kind is bool:
        out.append(b"t\x01" if value else b"t\x00")
    elif kind is int:
        out.append(_LONG(b"L", value) if value > 2147483647 or value < -2147483647
                   else _INT(b"I", value))
    elif kind is dict:
        out.append(b"F")
        _write_table(value, out)
    elif kind is list or kind is tuple:
        out.append(b"A")
        parts: list[bytes] = []
        for item in value:
            _write_item(item, parts)
        data = b"".join(parts)
        out.append(_U32(len(data)))
        out.append(data)
    elif kind is float:
        out.append(_DOUBLE(b"d", value))
    else:  # subclasses and the rarer types: py-amqp's own encoder, same bytes
        out.append(amqp.serialization.dumps("F", [{"": value}])[5:])


def encode_properties(properties: dict[str, Any]) -> bytes:
    """The property flags and list of a basic content header, exactly as py-amqp's
    ``Message._serialize_properties`` writes them (a property is sent when not None), in a
    fraction of its time: task headers are mostly strings, None and small ints."""
    flags = 0
    out: list[bytes] = []
    bit = 15
    for key, kind in PROPERTY_ORDER:  # 14 properties: one flags word
        value = properties.get(key)
        if value is not None:
            flags |= 1 << bit
            if kind == "s":
                out.append(_shortstr(value or ""))
            elif kind == "F":
                _write_table(value or {}, out)
            elif kind == "o":
                out.append(_U8(value))
            else:  # "L": the timestamp
                out.append(_U64(value))
        bit -= 1
    return _U16(flags) + b"".join(out)


def publish_frames(channel_id: int, exchange: str, routing_key: str, msg: Any,
                   frame_max: int) -> bytes:
    """basic.publish of ``msg`` (an ``amqp.Message`` from ``to_amqp``) as the bytes py-amqp's
    frame writer sends: the method frame, the content header, the body in frames of at most
    ``frame_max``; written by the caller with others in one ``sendall``."""
    body = msg.body
    if isinstance(body, str):
        body = body.encode(msg.properties.setdefault("content_encoding", "utf-8"))
    method = b"".join((_PUBLISH, _shortstr(exchange or ""), _shortstr(routing_key or ""),
                       b"\x00"))
    header = struct.pack(">HHQ", 60, 0, len(body)) + encode_properties(msg.properties)
    frames = [_FRAME_HEAD(1, channel_id, len(method)), method, b"\xce",
              _FRAME_HEAD(2, channel_id, len(header)), header, b"\xce"]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        part = body[start:start + chunk]
        frames += (_FRAME_HEAD(3, channel_id, len(part)), part, b"\xce")
    return b"".join(frames)


def ack_frame(channel_id: int, delivery_tag: int) -> bytes:
    """basic.ack of one delivery (not ``multiple``) as a whole frame."""
    return _ACK_FRAME.pack(1, channel_id, 13, 60, 80, delivery_tag, 0, 0xCE)


# ---- reading content headers without py-amqp's generic decoder ----------------------------------
_UNPACK_U16 = struct.Struct(">H").unpack_from
_UNPACK_U32 = struct.Struct(">I").unpack_from
_UNPACK_I32 = struct.Struct(">i").unpack_from
_UNPACK_I64 = struct.Struct(">q").unpack_from
_UNPACK_U64 = struct.Struct(">Q").unpack_from
_UNPACK_F64 = struct.Struct(">d").unpack_from
#: (flag bit, property, type) in content-header order
_DECODE_ORDER = tuple((1 << (15 - index), key, kind)
                      for index, (key, kind) in enumerate(PROPERTY_ORDER))


def _text(raw: bytes) -> Any:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # py-amqp hands such a string over as bytes
        return raw


def _read_table(buf: bytes, offset: int, text: str | None = None) -> tuple[dict[Any, Any], int]:
    """A field table at ``offset``. ``text``: ``buf`` decoded as Latin-1 (a character per
    byte, same offsets), whose slices are the keys and string values when they are ASCII (UTF-8
    reads ASCII the same): one decode of the whole header instead of one per key and value,
    about an eighth of a task header's reading."""
    if text is None:
        text = buf.decode("latin-1")
    (length,) = _UNPACK_U32(buf, offset)
    offset += 4
    limit = offset + length
    table: dict[Any, Any] = {}
    key: Any
    while offset < limit:
        end = offset + 1 + buf[offset]
        key = text[offset + 1:end]
        if not key.isascii():
            key = _text(buf[offset + 1:end])
        offset = end
        kind = buf[offset]
        if kind == 0x53:  # S, the usual header: inline
            end = offset + 5 + _UNPACK_U32(buf, offset + 1)[0]
            value = text[offset + 5:end]
            table[key] = value if value.isascii() else _text(buf[offset + 5:end])
            offset = end
        elif kind == 0x56:  # V
            table[key] = None
            offset += 1
        else:
            table[key], offset = _read_item(buf, offset, text)
    return table, offset


def _read_item(buf: bytes, offset: int, text: str | None = None) -> tuple[Any, int]:
    """One field value as py-amqp's ``_read_item`` reads it (the rare types through it);
    ``text`` as for ``_read_table``."""
    kind = buf[offset]
    if kind == 0x53:  # S
        (size,) = _UNPACK_U32(buf, offset + 1)
        offset += 5
        return _text(buf[offset:offset + size]), offset + size
    if kind == 0x56:  # V
        return None, offset + 1
    if kind == 0x49:  # I
        return _UNPACK_I32(buf, offset + 1)[0], offset + 5
    if kind == 0x74:  # t
        return bool(buf[offset + 1]), offset + 2
    if kind == 0x46:  # F
        return _read_table(buf, offset + 1, text)
    if kind == 0x41:  # A
        (size,) = _UNPACK_U32(buf, offset + 1)
        offset += 5
        limit = offset + size
        items = []
        while offset < limit:
            item, offset = _read_item(buf, offset, text)
            items.append(item)
        return items, offset
    if kind == 0x4C or kind == 0x6C:  # L, l: signed 64 bits
        return _UNPACK_I64(buf, offset + 1)[0], offset + 9
    if kind == 0x64:  # d
        return _UNPACK_F64(buf, offset + 1)[0], offset + 9
    value, offset = amqp.serialization._read_item(buf, offset)
    return value, int(offset)


def decode_properties(buf: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """A basic content header's properties, as py-amqp's ``decode_properties_basic`` reads
    them (the same values and types), in a fraction of its time."""
    (flags,) = _UNPACK_U16(buf, offset)
    offset += 2
    properties: dict[str, Any] = {}
    for bit, key, kind in _DECODE_ORDER:
        if not flags & bit:
            continue
        if kind == "s":
            size = buf[offset]
            properties[key] = buf[offset + 1:offset + 1 + size].decode("utf-8", "surrogatepass")
            offset += 1 + size
        elif kind == "F":
            properties[key], offset = _read_table(buf, offset)
        elif kind == "o":
            properties[key] = buf[offset]
            offset += 1
        else:  # "L": the timestamp
            properties[key] = _UNPACK_U64(buf, offset)[0]
            offset += 8
    return properties, offset


class InboundMessage(amqp.Message):  # type: ignore[misc]
    """py-amqp's message, its content header read by ``decode_properties``."""

    def _load_properties(self, class_id: int, buf: bytes, offset: int) -> int:
        if class_id != 60 or not isinstance(buf, bytes):
            return int(super()._load_properties(class_id, buf, offset))
        self.properties, offset = decode_properties(buf, offset)
        return offset


#: AMQP methods followed by a content header and body frames: basic.return, basic.deliver,
#: basic.get-ok (class 60, methods 50, 60, 71)
CONTENT_METHODS = frozenset({(60, 50), (60, 60), (60, 71)})
_METHOD_ID = struct.Struct(">HH").unpack_from
_METHOD, _HEADER, _BODY, _HEARTBEAT = 1, 2, 3, 8
_DELIVER = (60, 60)


class _ChannelAssembly:
    """What one channel is in the middle of: the frame type it must send next, and the
    message being put together from a content method, its header and its body frames."""

    __slots__ = ("expects", "message")

    def __init__(self) -> None:
        self.expects = _METHOD
        self.message: InboundMessage | None = None


class FrameAssembler:
    """Turns the frames py-amqp reads into its ``callback(channel, method, args, message)``
    calls (``amqp.Connection(frame_handler=...)``), building each content message as an
    ``InboundMessage``, whose header ``decode_properties`` reads. Returns True for each frame
    that completed a method or a message (py-amqp's contract for a frame handler)."""

    def __init__(self, connection: Any, callback: Any) -> None:
        self.connection = connection
        self.callback = callback
        self.channels: dict[int, _ChannelAssembly] = {}

    def __call__(self, frame: tuple[int, int, bytes]) -> bool:
        kind, channel, payload = frame
        self.connection.bytes_recv += 1
        if kind == _HEARTBEAT:
            return False
        state = self.channels.get(channel)
        if state is None:
            state = self.channels[channel] = _ChannelAssembly()
        if kind != state.expects:
            from amqp.exceptions import UnexpectedFrame  # type: ignore[import-untyped]

            raise UnexpectedFrame(f"channel {channel}: frame type {kind} arrived where type "
                                  f"{state.expects} was due")
        if kind == _METHOD:
            method = _METHOD_ID(payload, 0)
            if method not in CONTENT_METHODS:
                self.callback(channel, method, payload, None)
                return True
            state.message = InboundMessage(frame_method=method, frame_args=payload)
            state.expects = _HEADER
            return False
        message = state.message
        assert message is not None
        if kind == _HEADER:
            message.inbound_header(payload)
        else:
            message.inbound_body(payload)
        if not message.ready:
            state.expects = _BODY
            return False
        state.expects, state.message = _METHOD, None
        if message.frame_method != _DELIVER or not self._deliver(channel, message):
            self.callback(channel, message.frame_method, message.frame_args, message)
        return True

    def _deliver(self, channel_id: int, message: InboundMessage) -> bool:
        """A whole basic.deliver handed straight to its consumer's callback, as py-amqp's
        ``Channel._on_basic_deliver`` hands it after its ``dispatch_method`` (same
        ``delivery_info``, same values), without the generic method dispatch and argument
        decoder. Only where that path would do just this: an open channel that does not decode
        bodies, waits for no basic.deliver of its own and has a callback for the consumer tag.
        False: nothing was done, py-amqp's own path handles the message (and its edge cases:
        a closing channel, an unknown consumer tag)."""
        channels = getattr(self.connection, "channels", None)
        channel = channels.get(channel_id) if channels else None
        if (not isinstance(channel, amqp.Channel) or channel.is_closing or channel.auto_decode
                or _DELIVER in channel._pending):
            return False
        args = message.frame_args  # 'sLbss' after the method id, as py-amqp reads it
        end = 5 + args[4]
        consumer_tag = args[5:end].decode("utf-8", "surrogatepass")
        callback = channel.callbacks.get(consumer_tag)
        if callback is None:
            return False
        (delivery_tag,) = _UNPACK_U64(args, end)
        redelivered = bool(args[end + 8] & 1)
        start = end + 10
        end = start + args[end + 9]
        exchange = args[start:end].decode("utf-8", "surrogatepass")
        routing_key = args[end + 1:end + 1 + args[end]].decode("utf-8", "surrogatepass")
        message.channel = channel
        message.delivery_info = {
            "consumer_tag": consumer_tag, "delivery_tag": delivery_tag,
            "redelivered": redelivered, "exchange": exchange, "routing_key": routing_key}
        callback(message)
        return True


def frame_handler(connection: Any, callback: Any) -> FrameAssembler:
    """What ``amqp.Connection(frame_handler=...)`` calls to get the connection's handler."""
    return FrameAssembler(connection, callback)


def check_table(headers: dict[str, Any]) -> None:
    """Raise TypeError if py-amqp cannot write ``headers`` as a field table. The values are
    walked, not encoded (``basic_publish`` encodes the table, once), accepting what py-amqp's
    encoder writes: str and bytes, bool, float, int in 64 bits, Decimal with a scale of 0-255
    and a 32-bit unscaled value, datetime from 1970, None, lists and tuples, dicts whose keys
    are str or bytes of at most 255 bytes (tests/unit/transport/test_amqp_wire.py compares the
    two on edge cases)."""
    try:
        _check_table(headers)
    except _Refused as exc:
        where = "headers" + "".join(f"[{step!r}]" for step in reversed(exc.path))
        raise TypeError(f"a message header cannot be sent over AMQP: {where} {exc.args[0]}"
                        ) from None
    except RecursionError:
        raise TypeError("a message header cannot be sent over AMQP: nested too deeply (or "
                        "contains itself)") from None


class _Refused(Exception):
    """A value py-amqp cannot encode; ``path`` grows (innermost first) on the way out."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.path: list[Any] = []


_SCALARS = frozenset({str, bytes, bool, float, type(None)})


def _check_table(table: dict[Any, Any]) -> None:
    for key, value in table.items():
        if isinstance(key, str):
            # up to 63 characters are at most 252 bytes in UTF-8: no need to encode them
            size = len(key) if len(key) <= 63 else len(key.encode("utf-8", "surrogatepass"))
        elif isinstance(key, bytes):
            size = len(key)
        else:
            raise _Refused(f"has the key {key!r}, which is not a string")
        if size > 255:
            raise _Refused(f"has a key longer than 255 bytes ({key[:40]!r}...)")
        if type(value) in _SCALARS:
            continue
        try:
            _check_item(value)
        except _Refused as exc:
            exc.path.append(key)
            raise


def _check_item(value: Any) -> None:
    if isinstance(value, (str, bytes, bool, float)) or value is None:
        return
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return
    elif isinstance(value, dict):
        _check_table(value)
        return
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if type(item) in _SCALARS:
                continue
            try:
                _check_item(item)
            except _Refused as exc:
                exc.path.append(index)
                raise
        return
    elif isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        if (isinstance(exponent, int) and -255 <= exponent <= 0
                and _INT32_MIN <= unscaled <= _INT32_MAX):
            return
    elif isinstance(value, datetime.datetime):
        with contextlib.suppress(OverflowError, ValueError):
            if 0 <= calendar.timegm(value.utctimetuple()) <= _UINT64_MAX:
                return
    raise _Refused(f"is {type(value).__name__} {value!r:.80}, which an AMQP field table "
                   f"cannot carry (or out of its range)")


def from_amqp(msg: Any) -> tuple[Message, float | None, tuple[str, str] | None]:
    """The ``Message`` a received ``amqp.Message`` carries, with the not-before time it says
    (its ``eta`` header, or ours) and the route it records, if any."""
    props: dict[str, Any] = dict(msg.properties)
    headers: dict[str, Any] = dict(props.pop("application_headers", None) or {})
    content_type = props.pop("content_type", None)
    content_encoding = props.pop("content_encoding", None)
    extra = headers.pop(EXTRA_PROPERTIES, None)
    if isinstance(extra, dict):
        props.update(extra)
    raw_not_before = headers.pop(NOT_BEFORE, None)
    raw_route = headers.pop(ROUTE, None)
    route = (str(raw_route[0]), str(raw_route[1])) if (
        isinstance(raw_route, list) and len(raw_route) == 2) else None
    not_before = (float(raw_not_before) if isinstance(raw_not_before, (int, float))
                  else eta_timestamp(headers.get("eta")))
    body = msg.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    message = Message(bytes(body),
                      content_type="application/json" if content_type is None else content_type,
                      content_encoding="utf-8" if content_encoding is None else content_encoding,
                      headers=headers, properties=props)
    return message, not_before, route


def eta_timestamp(eta: Any) -> float | None:
    """Unix time of an ``eta`` header (ISO 8601; naive means UTC), None if absent or unreadable."""
    if not isinstance(eta, str) or not eta:
        return None
    try:
        when = datetime.datetime.fromisoformat(eta)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()
