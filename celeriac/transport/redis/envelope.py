"""kombu's Redis message envelope: Message <-> the JSON text stored in Redis lists; layer:
transport.

The layout (key order, separators, base64 body, ``delivery_info``/``delivery_tag``) is byte for byte
what kombu writes (see the wire spec §2.1), so Celery peers read our messages and we read theirs.
"""

from __future__ import annotations

import base64
import json
from base64 import b64encode
from typing import Any

from ...protocol.message import Message
from ...protocol.serialization import json_dumps, json_loads, json_string, json_template

#: properties the transport owns: written on every envelope, taken off again when decoding
TRANSPORT_PROPERTIES = ("delivery_info", "body_encoding", "delivery_tag")
#: where a message that itself carried ``delivery_info``/``body_encoding`` keeps its own values,
#: so it comes back unchanged (absent for every normal task message)
KEPT = "x-celeriac-kept"
#: ``content_type`` given to a list item that is not a kombu envelope, so the worker sets it aside
UNDECODABLE = "application/x-celeriac-undecodable"


def encode(message: Message, queue: str, delivery_tag: str, *, lenient: bool = False,
           exchange: str = "", routing_key: str | None = None) -> str:
    """The envelope text for ``message`` published to ``queue`` (raises TypeError on odd values),
    recording ``exchange`` and ``routing_key`` (default: the queue's name) as kombu does.
    The priority is kept as given, not clamped (kombu clamps it to 0..9 only to pick the
    sub-list, ``priority_step``).

    ``lenient`` (dead letters, which must always store) turns unserializable values into their repr.
    """
    if message.headers_json is not None and not lenient:
        text = _from_template(message, message.headers_json, queue, delivery_tag, exchange,
                              queue if routing_key is None else routing_key)
        if text is not None:
            return text
    source = message.properties
    properties: dict[str, Any] = {k: v for k, v in source.items()
                                  if k not in TRANSPORT_PROPERTIES and k not in ("priority", KEPT)}
    properties["delivery_info"] = {"exchange": exchange,
                                   "routing_key": queue if routing_key is None else routing_key}
    if "priority" in source:
        properties["priority"] = source["priority"]
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = delivery_tag
    kept = {k: source[k] for k in ("delivery_info", "body_encoding") if k in source}
    if kept:
        properties[KEPT] = kept
    envelope = {
        "body": base64.b64encode(bytes(message.body)).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": message.headers,
        "properties": properties,
    }
    if not lenient:
        return json_dumps(envelope)
    try:
        return json_dumps(envelope)
    except (TypeError, ValueError):
        return json.dumps(envelope, default=repr)


#: the properties of a task message as the producer makes them, in its order: the envelopes of
#: such messages come from a template (``_from_template``)
_PLAIN_PROPERTIES = ("correlation_id", "reply_to", "delivery_mode", "priority")
#: stand-ins for the per-message parts of an envelope, in the envelope's order
_MARKS = ("\x00celeriac:body\x00", "\x00celeriac:headers\x00",
          "\x00celeriac:correlation_id\x00", "\x00celeriac:delivery_tag\x00")
_TEMPLATES: dict[tuple[Any, ...], tuple[str, ...] | None] = {}
#: templates kept at most (the cache starts over beyond it)
TEMPLATE_LIMIT = 256


def template(message: Message, queue: str, exchange: str, routing_key: str
             ) -> tuple[str, ...] | None:
    """The envelope text of a task message whose properties are the producer's usual ones,
    cut around its per-message parts (body, headers, correlation id, delivery tag, in that
    order): the rest is the same for every message to one queue with one content type,
    ``reply_to`` and priority. None for any other message."""
    source = message.properties
    if tuple(source) != _PLAIN_PROPERTIES:
        return None
    reply_to, mode, priority = source["reply_to"], source["delivery_mode"], source["priority"]
    # the types too: 1, 1.0 and True are equal keys but different JSON
    key = (message.content_type, message.content_encoding, reply_to, mode, type(mode), priority,
           type(priority), exchange, routing_key)
    try:
        return _TEMPLATES[key]
    except KeyError:
        if len(_TEMPLATES) >= TEMPLATE_LIMIT:
            _TEMPLATES.clear()
        body, headers, correlation_id, tag = _MARKS
        pieces = _TEMPLATES[key] = json_template({
            "body": body, "content-encoding": message.content_encoding,
            "content-type": message.content_type, "headers": headers,
            "properties": {"correlation_id": correlation_id, "reply_to": reply_to,
                           "delivery_mode": mode,
                           "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                           "priority": priority, "body_encoding": "base64",
                           "delivery_tag": tag}}, _MARKS)
        return pieces
    except TypeError:  # an unhashable value: the general path
        return None


def _from_template(message: Message, headers_json: str, queue: str, delivery_tag: str,
                   exchange: str, routing_key: str) -> str | None:
    """``encode``'s text for a task message whose headers come as JSON text already and whose
    properties are the producer's usual ones (``template``): only the body, the headers, the
    correlation id and the delivery tag are written per message. None for any other message."""
    pieces = template(message, queue, exchange, routing_key)
    if pieces is None:
        return None
    correlation_id = message.properties["correlation_id"]
    if type(correlation_id) is not str or type(delivery_tag) is not str:
        return None
    body = b64encode(message.body).decode("ascii")  # base64 needs no JSON escaping
    return (f'{pieces[0]}"{body}"{pieces[1]}{headers_json}{pieces[2]}'
            f"{json_string(correlation_id)}{pieces[3]}{json_string(delivery_tag)}{pieces[4]}")


def decode(raw: bytes | str) -> tuple[Message, bool]:
    """``(message, redelivered)`` from envelope text; anything unreadable comes back as raw
    bytes."""
    message, redelivered, _, _ = decode_delivery(raw)
    return message, redelivered


def decode_delivery(raw: bytes | str) -> tuple[Message, bool, str, str | None]:
    """``decode``, plus the exchange and routing key the envelope says it was published with."""
    try:
        envelope = json_loads(raw)
        properties = dict(envelope["properties"])
        headers = dict(envelope.get("headers") or {})
        body = envelope["body"]
        if properties.get("body_encoding") == "base64":
            data = base64.b64decode(body.encode("ascii"), validate=True)
        else:
            data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        content_type = envelope.get("content-type") or "application/json"
        content_encoding = envelope.get("content-encoding") or "utf-8"
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError):
        data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        return Message(data, UNDECODABLE, "binary", {}, {}), False, "", None
    info = properties.get("delivery_info")
    redelivered = bool(headers.pop("redelivered", False))
    if isinstance(info, dict) and info.get("redelivered"):
        redelivered = True
    for key in TRANSPORT_PROPERTIES:
        properties.pop(key, None)
    kept = properties.pop(KEPT, None)
    if isinstance(kept, dict):
        properties.update(kept)
    exchange, routing_key = "", None
    if isinstance(info, dict):
        exchange = str(info.get("exchange") or "")
        given = info.get("routing_key")
        routing_key = given if isinstance(given, str) else None
    message = Message(data, content_type, content_encoding, headers, properties)
    return message, redelivered, exchange, routing_key


def priority_step(priority: Any, steps: tuple[int, ...]) -> int:
    """The largest step <= ``priority`` clamped to 0..9, as kombu picks a priority sub-list."""
    try:
        value = min(max(int(priority), 0), 9)
    except (TypeError, ValueError):
        value = 0
    return max(s for s in steps if s <= value)


def list_name(queue: str, step: int, sep: str) -> str:
    """The Redis list (without the key prefix) holding ``queue``'s messages of one priority step."""
    return queue if step == 0 else f"{queue}{sep}{step}"
