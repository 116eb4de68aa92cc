"""The transport-neutral message: what every transport stores and every worker receives.

Layer: protocol (pure). Mirrors an AMQP message: headers, properties, and a body of bytes that is
already serialized (and maybe compressed). Transports decide how to lay it out on their medium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Message:
    """One message as published.

    ``body`` is the serialized bytes exactly as the sender produced them; nothing above the
    transport re-encodes it, which is what lets the dead-letter store keep it byte for byte.
    ``properties`` holds the AMQP basic properties Celery sends (``correlation_id``,
    ``reply_to``, ``delivery_mode``, ``priority``, optional ``expiration``).

    ``headers_json``, when set, is ``headers`` as kombu JSON text, made by the sender along with
    them (``v2.encode_task(json_headers=True)``) so a transport that stores JSON need not encode
    them again. It is only a cache of ``headers``: whoever changes ``headers`` after that sets
    it back to None (the producer does before ``before_task_publish`` receivers get them).
    """

    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    headers_json: str | None = field(default=None, compare=False, repr=False)

    @property
    def task_id(self) -> str | None:
        return self.headers.get("id") or self.properties.get("correlation_id")

    @property
    def task_name(self) -> str | None:
        return self.headers.get("task")

    @property
    def priority(self) -> int:
        value = self.properties.get("priority")
        return int(value) if value is not None else 0
