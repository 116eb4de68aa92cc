"""Every captured Celery task message decodes, then re-encodes to the same headers/props/body."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol import serialization
from celeriac.protocol.message import Message
from celeriac.protocol.v2 import decode_task, encode_task, safe_repr
from tests.vectors import CELERY_VECTORS

VECTORS = CELERY_VECTORS
FOLDERS = ("redis/send", "redis/send-celery5.3.6", "redis/send-celery5.5.3", "amqp/send")
ACCEPT_ALL = serialization.normalize_accept(["json", "msgpack", "pickle", "yaml"])
SERIALIZER_OF = {ct: name for name, (ct, _) in serialization.SERIALIZERS.items()}
# Keys the Redis transport adds to the properties; they are not part of a Message.
TRANSPORT_PROPERTIES = ("delivery_info", "delivery_tag", "body_encoding")
STANDARD_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps", "compression",
)
# Canvas calls whose kwargs held tuples (signature args, zip() items): JSON turned them into
# lists, so a repr of the decoded kwargs cannot show the tuples Celery's repr showed.
TUPLES_LOST_IN_JSON = {"chunks", "map", "starmap"}


def _vector_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (VECTORS / folder).glob("*.json"))


def _cases() -> list[tuple[str, int]]:
    cases = []
    for path in _vector_files():
        count = len(json.loads(path.read_text())["messages"])
        cases += [(str(path.relative_to(VECTORS)), i) for i in range(count)]
    return cases


def test_vector_folders_exist_and_hold_captures() -> None:
    assert VECTORS.is_dir(), f"Celery vectors missing at {VECTORS} (shared/ goes beside the repo)"
    for folder in FOLDERS:
        files = list((VECTORS / folder).glob("*.json"))
        assert len(files) >= 20, f"{folder}: expected the captured cases, found {len(files)} files"
        for path in files:
            assert json.loads(path.read_text())["messages"], f"{path.name} has no task message"


def _untype(typed: list) -> Any:
    """An AMQP field-table value ``[letter, value]`` from ``properties_typed`` as plain data."""
    letter, value = typed
    if letter == "A":
        return [_untype(item) for item in value]
    if letter == "F":
        return {key: _untype(item) for key, item in value.items()}
    return value


def _from_rendering(value: Any) -> Any:
    """Undo the vectors' JSON rendering of pickle bodies (``{"__tuple__": [...]}``)."""
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_rendering(v) for v in value["__tuple__"])
        return {k: _from_rendering(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_rendering(v) for v in value]
    return value


def _captured(rel: str, index: int) -> tuple[Message, Any, str]:
    """(captured message, the file's decoded body, transport)."""
    record = json.loads((VECTORS / rel).read_text())["messages"][index]
    if rel.startswith("redis/"):
        envelope = record["envelope"]
        props = dict(envelope["properties"])
        assert props["body_encoding"] == "base64"
        body = base64.b64decode(envelope["body"])
        assert body == base64.b64decode(record["body_bytes"]["b64"])
        for key in TRANSPORT_PROPERTIES:
            props.pop(key)
        message = Message(body=body, content_type=envelope["content-type"],
                          content_encoding=envelope["content-encoding"],
                          headers=envelope["headers"], properties=props)
        return message, record["decoded_body"], "redis"
    typed = dict(record["properties_typed"])
    headers = {key: _untype(value) for key, value in typed.pop("headers").items()}
    typed.pop("_property_flags")
    message = Message(body=base64.b64decode(record["body_raw"]["b64"]),
                      content_type=typed.pop("content_type"),
                      content_encoding=typed.pop("content_encoding"),
                      headers=headers, properties=typed)
    return message, record["decoded_body"], "amqp"


@pytest.mark.parametrize(("rel", "index"), _cases(), ids=lambda v: str(v))
def test_decode_then_reencode_matches_capture(rel: str, index: int) -> None:
    captured, decoded_body, transport = _captured(rel, index)
    case = Path(rel).stem
    body = decode_task(captured, ACCEPT_ALL)
    headers = captured.headers

    # Decoding: the TaskBody carries what the capture holds.
    expected = _from_rendering(decoded_body)
    assert [body.args, body.kwargs] == list(expected[:2])
    embed = expected[2]
    assert (body.callbacks, body.errbacks, body.chain, body.chord) == (
        embed["callbacks"], embed["errbacks"], embed["chain"], embed["chord"])
    assert (body.id, body.name, body.root_id, body.parent_id) == (
        headers["id"], headers["task"], headers["root_id"], headers["parent_id"])
    assert (body.group_id, body.group_index, body.shadow, body.origin) == (
        headers["group"], headers["group_index"], headers["shadow"], headers["origin"])
    assert [body.time_limit, body.soft_time_limit] == headers["timelimit"]
    assert body.reply_to == captured.properties["reply_to"]
    assert body.headers == headers
    for when, text in ((body.eta, headers["eta"]), (body.expires, headers["expires"])):
        assert (when is None) == (text is None)
        if when is not None:
            assert when.tzinfo is not None and when.isoformat() == text

    # argsrepr / kwargsrepr: our default rendering must be Celery's.
    assert safe_repr(tuple(body.args)) == headers["argsrepr"]
    kwargsrepr = None  # let encode_task render it
    if safe_repr(body.kwargs) != headers["kwargsrepr"]:
        assert case in TUPLES_LOST_IN_JSON, (safe_repr(body.kwargs), headers["kwargsrepr"])
        assert captured.content_type == serialization.JSON
        as_lists = headers["kwargsrepr"].replace("(", "[").replace(")", "]")
        assert safe_repr(body.kwargs) == as_lists
        kwargsrepr = headers["kwargsrepr"]

    # Re-encoding with the same inputs gives the same message.
    now = None
    if "expiration" in captured.properties:
        now = body.expires - timedelta(milliseconds=int(captured.properties["expiration"]))
    custom = {k: v for k, v in headers.items() if k not in STANDARD_HEADERS}
    ours = encode_task(
        name=body.name, task_id=body.id, args=body.args, kwargs=body.kwargs,
        serializer=SERIALIZER_OF[captured.content_type], compression=headers.get("compression"),
        root_id=body.root_id, parent_id=body.parent_id, group_id=body.group_id,
        group_index=body.group_index, shadow=body.shadow, eta=body.eta, expires=body.expires,
        retries=body.retries, time_limit=body.time_limit, soft_time_limit=body.soft_time_limit,
        callbacks=body.callbacks, errbacks=body.errbacks, chain=body.chain, chord=body.chord,
        origin=body.origin, ignore_result=headers["ignore_result"],
        reply_to=captured.properties["reply_to"], priority=captured.properties.get("priority"),
        kwargsrepr=kwargsrepr,
        headers=custom or None, stamped_headers=headers["stamped_headers"],
        stamps=headers["stamps"], replaced_task_nesting=headers["replaced_task_nesting"], now=now)

    assert list(ours.headers.items()) == list(headers.items())
    assert ours.headers_json is None
    texts = {encode_task(
        name=body.name, task_id=body.id, args=body.args, kwargs=body.kwargs,
        serializer=SERIALIZER_OF[captured.content_type], compression=headers.get("compression"),
        root_id=body.root_id, parent_id=body.parent_id, group_id=body.group_id,
        group_index=body.group_index, shadow=body.shadow, retries=body.retries,
        time_limit=body.time_limit, soft_time_limit=body.soft_time_limit, origin=body.origin,
        ignore_result=headers["ignore_result"], kwargsrepr=kwargsrepr,
        replaced_task_nesting=headers["replaced_task_nesting"],
        json_headers=True).headers_json for _ in range(2)}  # a template made, then used
    if not (body.eta or body.expires or custom or headers["stamped_headers"]):
        # the captured headers' JSON, from a template (kombu's bytes: the envelope's part)
        assert texts == {serialization.json_dumps(headers)}
    assert (ours.content_type, ours.content_encoding) == (
        captured.content_type, captured.content_encoding)
    if transport == "redis":  # kombu's key order
        assert list(ours.properties.items()) == list(captured.properties.items())
    else:  # AMQP properties have a fixed wire order (queue_custom: no priority at all)
        assert ours.properties == captured.properties
    if captured.content_type == serialization.PICKLE:
        # Celery pickles signatures as celery.canvas objects; compare what both bodies hold.
        assert ours.body[:2] == captured.body[:2] == b"\x80\x04"  # same pickle protocol
        assert serialization.loads(ours.body, serialization.PICKLE, "binary", None) == \
            serialization.loads(captured.body, serialization.PICKLE, "binary", None)
    else:
        assert ours.body == captured.body
