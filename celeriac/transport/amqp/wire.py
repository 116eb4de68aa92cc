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
