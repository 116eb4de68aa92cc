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
