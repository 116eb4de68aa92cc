"""kombu's Redis envelope: our bytes equal captured Celery bytes, and decoding inverts encoding."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from celeriac.protocol.message import Message
from celeriac.protocol.serialization import json_dumps
from celeriac.transport.redis.envelope import (
    UNDECODABLE,
    decode,
    encode,
    list_name,
    priority_step,
)
from tests.vectors import CELERY_VECTORS

VECTORS = CELERY_VECTORS / "redis"
SENT = sorted(p for folder in ("send", "send-celery5.3.6", "send-celery5.5.3")
              for p in (VECTORS / folder).glob("*.json"))
TRANSPORT_KEYS = ("delivery_info", "body_encoding", "delivery_tag")


def _cases() -> list[Any]:
    cases = []
    for path in SENT:
        for i, entry in enumerate(json.loads(path.read_text())["messages"]):
            cases.append(pytest.param(entry, id=f"{path.parent.name}/{path.stem}[{i}]"))
    return cases


def _message(envelope: dict[str, Any], body: bytes) -> Message:
    props = {k: v for k, v in envelope["properties"].items() if k not in TRANSPORT_KEYS}
    return Message(body, envelope["content-type"], envelope["content-encoding"],
                   envelope["headers"], props)


@pytest.mark.parametrize("entry", _cases())
def test_envelope_bytes_equal_celerys(entry: dict[str, Any]) -> None:
    raw = base64.b64decode(entry["raw"]["b64"])
    envelope = entry["envelope"]
    body = base64.b64decode(entry["body_bytes"]["b64"])
    info = envelope["properties"]["delivery_info"]
    sent = _message(envelope, body)
    ours = encode(sent, info["routing_key"], "TAG")
    assert ours.encode() == raw.replace(
        envelope["properties"]["delivery_tag"].encode(), b"TAG")
    assert decode(raw) == (sent, False)
    # a message that brings its headers' text (the producer's) gets the same bytes, through the
    # envelope template when its properties are the usual ones
    sent.headers_json = json_dumps(sent.headers)
    for _ in range(2):  # a template made, then a template used
        assert encode(sent, info["routing_key"], "TAG") == ours


def test_messages_carrying_transport_properties_come_back_unchanged() -> None:
    sent = Message(b"\x00\xff", "application/x-msgpack", "binary", {"id": "x"},
                   {"priority": 3, "body_encoding": "base64",
                    "delivery_info": {"exchange": "ex", "routing_key": "elsewhere"}})
    text = encode(sent, "q", "t-1")
    assert json.loads(text)["properties"]["delivery_info"] == {"exchange": "",
                                                               "routing_key": "q"}
    assert decode(text) == (sent, False)


def test_a_message_without_priority_gets_none_added() -> None:
    sent = Message(b"{}", headers={"id": "x"}, properties={"correlation_id": "x"})
    assert "priority" not in json.loads(encode(sent, "q", "t"))["properties"]
    assert decode(encode(sent, "q", "t"))[0] == sent


def test_redelivered_flags_are_read_and_taken_off() -> None:
    doc = json.loads(encode(Message(b"x", headers={"id": "x"}), "q", "t"))
    doc["headers"]["redelivered"] = True
    got, redelivered = decode(json.dumps(doc))
    assert redelivered and got.headers == {"id": "x"}
    doc["headers"].pop("redelivered")
    doc["properties"]["delivery_info"]["redelivered"] = True
    assert decode(json.dumps(doc))[1] is True


def test_plain_text_bodies_are_accepted() -> None:
    doc = {"body": "[[1], {}, {}]", "content-type": "application/json",
           "content-encoding": "utf-8", "headers": {"task": "t"}, "properties": {}}
    assert decode(json.dumps(doc))[0].body == b"[[1], {}, {}]"


@pytest.mark.parametrize("junk", [b"not json", b'{"body": 1}', b"[]", b'{"properties": {}}'])
def test_junk_comes_back_as_undecodable_bytes(junk: bytes) -> None:
    got, redelivered = decode(junk)
    assert (got.body, got.content_type, redelivered) == (junk, UNDECODABLE, False)


def test_lenient_encoding_never_fails() -> None:
    odd = Message(b"x", headers={"id": object()})
    with pytest.raises(TypeError):
        encode(odd, "q", "t")
    assert "object object" in decode(encode(odd, "q", "t", lenient=True))[0].headers["id"]


@pytest.mark.parametrize("priority, step", [(0, 0), (2, 0), (3, 3), (5, 3), (8, 6), (9, 9),
                                            (42, 9), (-1, 0), (None, 0), ("x", 0)])
def test_priority_goes_to_kombus_sub_list(priority: Any, step: int) -> None:
    assert priority_step(priority, (0, 3, 6, 9)) == step
    assert list_name("celery", step, "\x06\x16") == ("celery" if step == 0
                                                     else f"celery\x06\x16{step}")
