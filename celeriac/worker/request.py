"""From a leased delivery to an executed task: what a pool runs, and what receivers see.

Layer: worker. The consumer checks what it can from the headers (name known? content type
accepted? expired? due?) without deserializing the body; the body is decoded only where the task
runs (``run_message``), so in the process pool the main process never pays for it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    ContentDisallowed,
    DecodeError,
    InvalidTaskError,
    MissingDependency,
    NotRegistered,
)
from ..protocol import v2
from .executor import context_from_body, execute
from .job import task_label
from .outcome import Outcome
from .pending import PendingWrites

if TYPE_CHECKING:
    from ..app import Celery
    from ..protocol.message import Message

logger = logging.getLogger("celeriac.worker")

def parse_time(value: Any) -> datetime | None:
    """ISO 8601 text (naive = UTC) or a datetime; None for null or garbage-free absence."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class ReceivedRequest:
    """What ``task_received`` receivers get: the request as the consumer knows it (headers now,
    arguments decoded only if a receiver asks for them)."""

    def __init__(self, delivery: Any, hostname: str, accept: frozenset[str]) -> None:
        self.delivery = delivery
        self.message = delivery.message
        self.hostname = hostname
        self._accept = accept
        self._body: Any = None

    @property
    def id(self) -> str:
        return self.message.headers.get("id")

    task_id = id

    @property
    def name(self) -> str:
        return self.message.headers.get("task")

    @property
    def delivery_info(self) -> dict:
        return dict(self.delivery.delivery_info)  # Celery's keys, as the task will see them

    @property
    def eta(self) -> Any:
        return self.message.headers.get("eta")

    @property
    def expires(self) -> Any:
        return self.message.headers.get("expires")

    def _decoded(self) -> Any:
        if self._body is None:
            self._body = v2.decode_task(self.message, self._accept)
        return self._body

    @property
    def args(self) -> Any:
        return self._decoded().args

    @property
    def kwargs(self) -> Any:
        return self._decoded().kwargs

    def __repr__(self) -> str:
        return f"<Request: {self.name}[{self.id}]>"


def run_message(app: "Celery", message: "Message", delivery_info: dict, hostname: str,
                accept: frozenset[str], *, collect_writes: bool = False) -> Outcome:
    """Decode and execute one task message. Never raises for bad input: it reports it.
    ``collect_writes``: a success's writes come back in ``Outcome.pending`` for the consumer."""
    task_id = message.headers.get("id") or "?"
    try:
        body = v2.decode_task(message, accept)
    except (ContentDisallowed, DecodeError, InvalidTaskError) as exc:
        logger.error("Cannot decode task message %s: %s", task_id, exc)
        return Outcome.undecodable(task_id, f"{type(exc).__name__}: {exc}",
                                   undecodable_failure(message, exc))
    try:
        task = app.tasks[body.name]
    except NotRegistered:
        logger.error("Received unregistered task of type %r (id %s) in a pool process; "
                     "dead-lettered", body.name, task_id)
        # Celery's failure for an unknown task: the caller reads NotRegistered(name)
        return Outcome.undecodable(task_id, f"NotRegistered: {body.name!r}",
                                   NotRegistered(body.name))
    ctx = context_from_body(body, hostname=hostname, delivery_info=delivery_info,
                            properties=message.properties)
    return execute(task, ctx, pending=PendingWrites() if collect_writes else None)


def undecodable_failure(message: "Message", exc: Exception) -> Exception:
    """What the caller of a message whose body cannot be decoded reads: the same kind of error
    (``DecodeError`` for a malformed body, ``InvalidTaskError`` for a wrong shape), naming the
    task, the reason and the fix."""
    headers = message.headers
    missing = exc if isinstance(exc, MissingDependency) else exc.__cause__
    if isinstance(missing, MissingDependency):
        # the body is fine: this worker lacks the package to read it (the worker's start-up
        # check refuses to start without the serializers it is configured for, so this is a
        # worker whose packages changed under it, or a content type accepted some other way)
        failure = DecodeError(f"task {task_label(headers)}: this worker cannot decode the "
                              f"message body: {missing}. Install the package on the worker "
                              f"(the message itself may be fine).")
        failure.replayable = True  # type: ignore[attr-defined]  # read by the consumer's advice
        return failure
    kind = type(exc) if isinstance(exc, (ContentDisallowed, DecodeError,
                                         InvalidTaskError)) else DecodeError
    return kind(f"task {task_label(headers)}: the message body cannot be "
                f"decoded ({exc}); its sender must send a protocol 2 task body ([args, kwargs, "
                f"embed]) in the content type it names: check the client's serializer, "
                f"compression and task_protocol settings.")


def request_from_message(message: "Message", accept: frozenset[str],
                         hostname: str | None = None) -> Any:
    """The request of a message that ends without running (revoked, expired, timed out, lost),
    so its chord, chain and errbacks can be told; None when the body cannot be decoded."""
    try:
        body = v2.decode_task(message, accept)
    except (ContentDisallowed, DecodeError, InvalidTaskError):
        return None
    return context_from_body(body, hostname=hostname, delivery_info=None,
                             properties=message.properties)
