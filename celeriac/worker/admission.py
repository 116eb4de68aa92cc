"""Admission: the ordered checks a fetched delivery passes before the worker holds it.

Layer: worker. Each step looks at headers only (the body is decoded where the task runs) and
either lets the delivery through (returns None) or ends admission with a ``Decision``: run it,
defer it until it is due, set it aside in the dead-letter store, or drop it as revoked or
expired. A dead-letter decision carries the failure its caller reads (``Decision.dead_letter``):
the exception names the reason and the fix, so nobody waits forever for a message that can no
longer run. The consumer carries decisions out; steps never touch the broker. Extensions add steps
through ``WorkerExtension.before_admission`` (see worker/extensions.py), between the built-in
checks of the message itself and the final "is it due" step.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import signals
from ..exceptions import ContentDisallowed, InvalidTaskError, NotRegistered, WorkerLostError
from ..protocol import serialization
from .job import task_label
from .request import parse_time

if TYPE_CHECKING:
    from ..transport.base import Delivery
    from .revokes import RevokedSet

logger = logging.getLogger("celeriac.worker")


class Verdict(enum.Enum):
    RUN = "run"
    DEFER = "defer"
    DEAD_LETTER = "dead_letter"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Decision:
    """How admission ended for one delivery."""

    verdict: Verdict
    reason: str = ""
    #: DEFER: when it becomes due (Unix time)
    not_before: float | None = None
    #: DEAD_LETTER: the failure stored as the task's result (its reason and its fix), so no
    #: caller waits forever; the consumer stores it wherever the message has an id
    failure: BaseException | None = None
    #: DEAD_LETTER: False quarantines the message without storing anything (its caller keeps
    #: waiting, and reads the outcome of a replay); by default a failure is stored, ``failure``
    #: or an InvalidTaskError naming ``reason``
    store_failure: bool = True

    @classmethod
    def dead_letter(cls, reason: str, failure: BaseException | None = None, *,
                    store_failure: bool = True) -> Decision:
        """Set the message aside with ``reason`` (kept with the dead letter) and store
        ``failure`` for its caller (an InvalidTaskError naming ``reason`` when None), unless
        ``store_failure`` is False."""
        return cls(Verdict.DEAD_LETTER, reason, failure=failure, store_failure=store_failure)


RUN = Decision(Verdict.RUN)


@dataclass(slots=True)
class Arrival:
    """A delivery under admission, with what the steps found out so far."""

    delivery: Delivery
    #: the registered task, once ``registered`` has found it
    task: Any = None
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def headers(self) -> dict[str, Any]:
        return self.delivery.message.headers

    @property
    def label(self) -> str:
        return task_label(self.headers)


Step = Callable[[Arrival], "Decision | None"]


def well_formed(arrival: Arrival) -> Decision | None:
    """A protocol 2 task message has a task name and an id in its headers."""
    headers = arrival.headers
    missing = "task" if not headers.get("task") else "id" if not headers.get("id") else None
    if missing is None:
        return None
    logger.error("Received a message without a %r header (not a protocol 2 task message); "
                 "dead-lettered", missing)
    if signals.task_rejected.receivers:
        signals.task_rejected.send(sender=None, message=arrival.delivery.message, exc=None)
    # (without an id nothing can be stored: the consumer only dead-letters it)
    which = (f"message {headers.get('id')!r}" if missing == "task"
             else f"a message for task {headers.get('task')!r}")
    return Decision.dead_letter(f"invalid message: missing {missing!r} header", InvalidTaskError(
        f"{which} has no {missing!r} header: it is not a protocol 2 task message; send it "
        f"with a Celery 4+ or celeriac client (task_protocol 2)."))


def accepted_content(accept: frozenset[str]) -> Step:
    """Never deserialize a content type the worker does not accept (``accept_content``)."""

    def step(arrival: Arrival) -> Decision | None:
        content_type = arrival.delivery.message.content_type
        if content_type in accept:
            return None
        logger.error("Refusing task %s: content type %r is not in accept_content %s; "
                     "dead-lettered without deserializing", arrival.label, content_type,
                     sorted(accept))
        return Decision.dead_letter(f"content type {content_type!r} not accepted",
                                    ContentDisallowed(_disallowed(arrival, accept)))

    return step


def registered(tasks: Any) -> Step:
    """The task name is registered here; an unknown one is dead-lettered (replayable once the
    task is registered) and its caller reads a stored ``NotRegistered`` failure."""

    def step(arrival: Arrival) -> Decision | None:
        name = arrival.headers.get("task")
        arrival.task = tasks.get(name)
        if arrival.task is not None:
            return None
        task_id = arrival.headers.get("id")
        logger.error("Received unregistered task of type %r (id %s); dead-lettered. "
                     "Is the module that defines it imported by this worker?", name, task_id)
        if signals.task_unknown.receivers:
            signals.task_unknown.send(sender=None, name=name, id=task_id,
                                      message=arrival.delivery.message, exc=NotRegistered(name))
        return Decision(Verdict.DEAD_LETTER, f"unknown task name {name!r}",
                        failure=NotRegistered(name))

    return step


def delivery_limit(max_deliveries: int) -> Step:
    """A message delivered ``max_deliveries`` times without finishing is a poison message."""

    def step(arrival: Arrival) -> Decision | None:
        count = arrival.delivery.delivery_count
        if count <= max_deliveries:
            return None
        logger.error("Task %s was delivered %d times without finishing; dead-lettered",
                     arrival.label, count)
        return Decision.dead_letter(f"delivered {count} times (poison message)", WorkerLostError(
            f"task {arrival.label} was delivered {count} times without finishing (the worker "
            f"running it died each time, e.g. killed by the OOM killer); dead-lettered. Find "
            f"out what stops the worker (memory, a hard limit of the platform) or raise "
            f"worker_max_deliveries (now {max_deliveries})."))

    return step


def not_revoked(revokes: RevokedSet) -> Step:
    """A task revoked before it arrived is dropped (stored as REVOKED)."""

    def step(arrival: Arrival) -> Decision | None:
        return Decision(Verdict.REVOKED) if arrival.headers.get("id") in revokes else None

    return step


def not_expired(arrival: Arrival) -> Decision | None:
    """A task past its ``expires`` is dropped (stored as REVOKED, as Celery does); a time
    header that cannot be read is a message that can never run."""
    try:
        expires = parse_time(arrival.headers.get("expires"))
    except (TypeError, ValueError) as exc:
        return _bad_time(arrival, "expires", exc)
    if expires is not None and expires <= arrival.now:
        return Decision(Verdict.EXPIRED)
    return None


def due(arrival: Arrival) -> Decision | None:
    """A task with a future ``eta`` waits outside the worker until it is due."""
    try:
        eta = parse_time(arrival.headers.get("eta"))
    except (TypeError, ValueError) as exc:
        return _bad_time(arrival, "eta", exc)
    if eta is not None and eta > arrival.now:
        logger.info("Task %s received, ETA %s", arrival.label, eta.isoformat())
        return Decision(Verdict.DEFER, not_before=eta.timestamp())
    return None


def _bad_time(arrival: Arrival, header: str, exc: Exception) -> Decision:
    value = arrival.headers.get(header)
    logger.error("Task %s has an unreadable %r header %r: %s; dead-lettered", arrival.label,
                 header, value, exc)
    return Decision.dead_letter(f"invalid eta/expires header: {exc}", InvalidTaskError(
        f"task {arrival.label}: its {header!r} header {value!r} is not an ISO 8601 time "
        f"({exc}); send it again with a datetime or a number of seconds (eta=, countdown=, "
        f"expires=)."))


def _disallowed(arrival: Arrival, accept: frozenset[str]) -> str:
    """What a caller reads when the worker refuses the message's content type, and the fix."""
    content_type = arrival.delivery.message.content_type
    name = serialization.serializer_name(content_type)
    accepted = [serialization.serializer_name(ct) for ct in sorted(accept)]
    alternative = accepted[0] if accepted else "json"
    fix = (f"add {name!r} to accept_content on the worker, or send with "
           f"serializer={alternative!r}" if name != content_type
           else f"send with serializer={alternative!r}")
    return (f"task {arrival.label}: content type {content_type!r} is not in this worker's "
            f"accept_content {sorted(accept)}; {fix}.")


def is_expired(headers: dict[str, Any]) -> bool:
    """Checked again just before a task starts (it may have expired while it waited)."""
    try:
        expires = parse_time(headers.get("expires"))
    except (TypeError, ValueError):
        return False
    return expires is not None and expires <= datetime.now(timezone.utc)


class Admission:
    """The ordered steps; ``admit`` runs them until one decides."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    def admit(self, delivery: Delivery) -> tuple[Decision, Arrival]:
        arrival = Arrival(delivery)
        for step in self.steps:
            decision = step(arrival)
            if decision is not None:
                return decision, arrival
        return RUN, arrival


def standard_steps(*, accept: frozenset[str], tasks: Any, max_deliveries: int,
                   revokes: RevokedSet | None, extra: Sequence[Step] = ()) -> list[Step]:
    """The worker's pipeline: the message itself, then revokes, extensions' steps (expiry is
    one, see ``extensions.Expiry``), and last whether it is due."""
    steps: list[Step] = [well_formed, accepted_content(accept), registered(tasks),
                         delivery_limit(max_deliveries)]
    if revokes is not None:
        steps.append(not_revoked(revokes))
    steps.extend(extra)
    steps.append(due)
    return steps
