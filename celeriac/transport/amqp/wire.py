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

import datetime
from typing import Any

import amqp  # type: ignore[import-untyped]
from amqp import serialization

from ...protocol.message import Message

#: the AMQP 0-9-1 basic properties besides content type, encoding and headers
BASIC_PROPERTIES = frozenset({
    "delivery_mode", "priority", "correlation_id", "reply_to", "expiration", "message_id",
    "timestamp", "type", "user_id", "app_id", "cluster_id"})
NOT_BEFORE = "x-celeriac-not-before"
ROUTE = "x-celeriac-route"
EXTRA_PROPERTIES = "x-celeriac-properties"
_PRIVATE = (NOT_BEFORE, ROUTE, EXTRA_PROPERTIES)


def to_amqp(message: Message, *, not_before: float | None = None,
            route: tuple[str, str] | None = None) -> Any:
    """The ``amqp.Message`` to publish. Raises TypeError (before anything is sent) for a header
    value AMQP cannot carry."""
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
    if not_before is not None and headers.get("eta") is None:
        headers[NOT_BEFORE] = float(not_before)
    if route is not None:
        headers[ROUTE] = list(route)
    check_table(headers)
    return amqp.Message(message.body, content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        application_headers=headers, **properties)


def check_table(headers: dict[str, Any]) -> None:
    """Raise TypeError if py-amqp cannot write ``headers`` as a field table."""
    try:
        serialization.dumps("F", [headers])
    except (amqp.exceptions.FrameSyntaxError, TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"a message header cannot be sent over AMQP: {exc}") from None


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
