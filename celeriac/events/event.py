"""One event as Celery lays it out, and the message that carries one or a batch of them.

Layer: events (pure logic, no I/O). Wire spec section 5: every event is a flat map with
``hostname``, ``utcoffset``, ``pid``, ``clock``, the type's own fields, ``timestamp`` and ``type``;
it travels on the ``celeryev`` exchange with the routing key ``task.succeeded`` for
``task-succeeded``, as JSON, ``delivery_mode`` 1, priority 0 and a ``hostname`` header. A batch is
a list of events under ``<group>.multi`` (``task.multi``), which every receiver (Celery's, Flower's,
ours) accepts beside single events.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping

from ..protocol import serialization
from ..protocol.message import Message

logger = logging.getLogger("celeriac.events")

#: the exchange events go to when ``event_exchange`` is not set (Celery's)
DEFAULT_EXCHANGE = "celeryev"
#: what a batch of events of one group is published as: ``task.multi``
MULTI = "multi"

__all__ = ["DEFAULT_EXCHANGE", "Event", "event_message", "events_from_message", "group_from",
           "message_of", "routing_key_for", "utcoffset"]


def utcoffset() -> float:
    """This machine's offset from UTC in hours **west** (``time.timezone / 3600``, or
    ``altzone`` in summer time), as Celery 5.7 sends it: receivers shift ``timestamp`` by the
    difference between their offset and the sender's."""
    if time.daylight and time.localtime().tm_isdst > 0:
        return time.altzone / 3600
    return time.timezone / 3600


def group_from(event_type: str) -> str:
    """``task`` for ``task-succeeded``: events are switched on and batched by group."""
    return event_type.split("-", 1)[0]


def routing_key_for(event_type: str) -> str:
    """``task.succeeded`` for ``task-succeeded`` (what Redis channels and AMQP bindings see)."""
    return event_type.replace("-", ".")


def Event(type: str, _fields: Mapping[str, Any] | None = None,  # noqa: N802, A002
          **fields: Any) -> dict[str, Any]:
    """An event map of ``type`` (Celery's ``celery.events.Event``): ``_fields`` first, then
    ``fields``, then ``timestamp`` (now, unless given) and ``type`` last, the order Celery's
    worker writes them in."""
    event = {**_fields, **fields} if _fields else dict(fields)
    if "timestamp" not in event:
        event["timestamp"] = time.time()
    event["type"] = type
    return event


def event_message(body: Mapping[str, Any] | list[dict[str, Any]], hostname: str,
                  serializer: str = "json") -> Message:
    """The message carrying one event (a map) or a batch (a list), as Celery publishes it."""
    content_type, encoding, data = serialization.dumps(body, serializer)
    return message_of(data, hostname, content_type, encoding)


def message_of(data: bytes, hostname: str, content_type: str = "application/json",
               encoding: str = "utf-8") -> Message:
    """The message carrying an already serialized event body."""
    return Message(data, content_type, encoding, headers={"hostname": hostname},
                   properties={"delivery_mode": 1, "priority": 0})


def events_from_message(message: Message,
                        accept: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The events a message carries (one, or a ``<group>.multi`` list); [] for a body that is
    neither, or one that cannot be decoded (logged: a monitor must not stop for one bad
    message)."""
    try:
        body = serialization.loads(bytes(message.body), message.content_type,
                                   message.content_encoding, accept)
    except Exception as exc:  # noqa: BLE001 - any sender's bytes: log and go on
        logger.warning("ignoring an event message that cannot be decoded: %s", exc)
        return []
    items: Iterable[Any] = body if isinstance(body, list) else [body]
    events = [item for item in items if isinstance(item, dict) and "type" in item]
    if not events and body:
        logger.warning("ignoring an event message that holds no event: %.200r", body)
    return events
