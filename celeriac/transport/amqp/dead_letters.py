"""Dead letters on RabbitMQ (``DeadLetterStore``): a mixin for ``AMQPTransport``.

Layer: transport. The store is one durable queue, ``celeriac.dead_letters`` (declared
``x-queue-type: classic``, reached through the default exchange). Each dead letter is the
original message, body, content type and encoding, properties and headers byte for byte,
published persistent
with publisher confirms, plus headers of its own: ``x-celeriac-dead-letter-id`` (a uuid4 hex),
``-reason``, ``-queue`` (where it came from), ``-time`` (Unix time) and ``-properties`` (the
original ``delivery_mode`` and ``expiration``, which the store replaces so that a letter is
persistent and never expires; None for one the message did not have). They are taken off
again when a letter is read, so ``letter.message`` is what the worker received.

``dead_letter(..., delivery=d)`` publishes the letter, waits for RabbitMQ's confirm, and only
then acks the held delivery: a crash in between leaves the message both in its queue and in
the store (a duplicate, never a loss). When the delivery is no longer held (its connection was
lost: RabbitMQ delivers it again, to whoever settles it), nothing is stored and "" is returned.

Reading (``dead_letters``, ``dead_letter_get``, ``dead_letter_delete``) *browses* the queue on a
short-lived connection of its own: ``basic_get`` without ack, message after message, keeping
those to delete (acked) and letting the connection's close put every other one back where it
was (RabbitMQ requeues unacked messages of a classic queue in their original positions). Two
readers must not browse at once (the second would see only what the first had not taken), so
a reader first takes the store's lock: the exclusive queue ``celeriac.dead_letters.lock``,
which RabbitMQ refuses to a second connection (RESOURCE_LOCKED) and deletes when its owner's
connection closes, even if that process dies. Writers (workers dead-lettering) take no lock: a
letter published during a browse lands behind it.

Limits: a read costs one round trip per letter in front of what it looks for (``dead_letters``
reads ``limit``; ``dead_letter_get`` and ``dead_letter_delete`` read until they found their ids
or the end), so the store suits thousands of letters, not millions. Messages something else
put in the queue (RabbitMQ's own dead-lettering pointed at it, say) are listed too: their id
is a digest of their content, their queue and reason come from the ``x-death`` header.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar

from amqp import exceptions as amqp_errors  # type: ignore[import-untyped]

from ...protocol.message import Message
from ..base import DeadLetter, Delivery, Outgoing
from .wire import from_amqp

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: the store's queue (durable, classic, on the default exchange)
DEAD_LETTER_QUEUE = "celeriac.dead_letters"
#: held (exclusive) by the one connection reading the store
LOCK_QUEUE = "celeriac.dead_letters.lock"
#: seconds a reader waits for another reader to finish
LOCK_TIMEOUT = 60.0
_LOCK_RETRY = 0.05

LETTER_ID = "x-celeriac-dead-letter-id"
LETTER_REASON = "x-celeriac-dead-letter-reason"
LETTER_QUEUE = "x-celeriac-dead-letter-queue"
LETTER_TIME = "x-celeriac-dead-letter-time"
LETTER_PROPERTIES = "x-celeriac-dead-letter-properties"
_OWN_HEADERS = (LETTER_ID, LETTER_REASON, LETTER_QUEUE, LETTER_TIME, LETTER_PROPERTIES)
#: properties the store sets for itself, the originals kept in LETTER_PROPERTIES
_REPLACED = ("delivery_mode", "expiration")


class _Host(Protocol):
    _declared: set[str]

    def _check_fork(self) -> None: ...
    def _connect(self, heartbeat: float) -> Any: ...
    def _admin(self, action: Callable[[Any], Any]) -> Any: ...
    def _holder(self, delivery: Delivery) -> Any: ...
    def publish(self, items: Sequence[Outgoing], *,
                confirm: bool | None = None) -> None: ...
    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]: ...
    def dead_letter_delete(self, dead_letter_ids: Sequence[str] | None = None) -> int: ...


def letter_message(queue: str, message: Message, reason: str, letter_id: str,
                   now: float) -> Message:
    """What the store's queue holds for ``message``: persistent, never expiring, with the
    store's headers (the replaced properties' originals among them)."""
    properties = dict(message.properties)
    kept = {name: properties.pop(name, None) for name in _REPLACED}
    properties["delivery_mode"] = 2
    headers = {**message.headers, LETTER_ID: letter_id, LETTER_REASON: reason,
               LETTER_QUEUE: queue, LETTER_TIME: float(now), LETTER_PROPERTIES: kept}
    return Message(message.body, message.content_type, message.content_encoding, headers,
                   properties)


def read_letter(msg: Any) -> DeadLetter:
    """The ``DeadLetter`` a message of the store's queue is (the original message restored)."""
    message, _, _ = from_amqp(msg)
    headers = dict(message.headers)
    own = {name: headers.pop(name, None) for name in _OWN_HEADERS}
    properties = dict(message.properties)
    letter_id = own[LETTER_ID]
    if not isinstance(letter_id, str):  # not ours: RabbitMQ's dead-lettering, or by hand
        return _foreign_letter(message)
    kept = own[LETTER_PROPERTIES]
    if isinstance(kept, dict):
        for name, value in kept.items():
            if value is None:
                properties.pop(name, None)
            else:
                properties[name] = value
    created = own[LETTER_TIME]
    return DeadLetter(letter_id, str(own[LETTER_QUEUE] or ""), str(own[LETTER_REASON] or ""),
                      Message(message.body, message.content_type, message.content_encoding,
                              headers, properties),
                      float(created) if isinstance(created, (int, float)) else 0.0)


def _foreign_letter(message: Message) -> DeadLetter:
    digest = hashlib.sha256(message.body)
    digest.update(json.dumps([message.content_type, message.content_encoding, message.headers,
                              message.properties], sort_keys=True, default=repr).encode())
    queue, reason, created = "", "put in the dead-letter queue from outside celeriac", 0.0
    deaths = message.headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        queue = str(death.get("queue") or "")
        reason = f"RabbitMQ dead-lettered it ({death.get('reason')})"
        when = death.get("time")
        if isinstance(when, datetime.datetime):
            created = when.timestamp()
        elif isinstance(when, (int, float)):
            created = float(when)
    return DeadLetter(f"x{digest.hexdigest()[:24]}", queue, reason, message, created)


def _declare_store(channel: Any) -> None:
    """Classic even where the vhost's default queue type is quorum: a quorum queue would count
    each browse as a delivery of every letter read (and drop them at its delivery limit)."""
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, exclusive=False, auto_delete=False,
                          arguments={"x-queue-type": "classic"})


class _Browse:
    """A connection of its own, holding the store's lock, reading letters without acking them;
    ``close`` puts back everything not acked, in order, and releases the lock."""

    def __init__(self, host: _Host) -> None:
        self.conn = host._connect(0)
        try:
            self._lock()
            self.channel = self.conn.channel()
            self.channel.auto_decode = False  # bodies stay bytes, whatever their encoding
            _declare_store(self.channel)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            channel = self.conn.channel()
            try:
                channel.queue_declare(LOCK_QUEUE, exclusive=True, auto_delete=True)
                return
            except amqp_errors.ResourceLocked:  # another reader: its channel is closed now
                if time.monotonic() >= deadline:
                    from . import ConnectionLost

                    raise ConnectionLost(
                        f"another client has been reading the dead-letter store for "
                        f"{LOCK_TIMEOUT:g} s (it holds the queue {LOCK_QUEUE!r}); try again"
                    ) from None
                time.sleep(_LOCK_RETRY)

    def letters(self) -> Iterator[tuple[int, DeadLetter]]:
        """Every letter in order as (delivery tag, letter), until the queue has no more."""
        while True:
            msg = self.channel.basic_get(DEAD_LETTER_QUEUE, no_ack=False)
            if msg is None:
                return
            yield int(msg.delivery_info["delivery_tag"]), read_letter(msg)

    def close(self) -> None:
        """Close the channel first (its close-ok comes after every ack sent before it), then
        the connection (which also releases the lock)."""
        from ...utils.amqp_url import close_quietly as _close_quietly

        channel = getattr(self, "channel", None)
        if channel is not None:
            try:
                channel.close()
            except Exception as exc:  # noqa: BLE001 - closing the connection requeues too
                logger.debug("closing the dead-letter browse channel: %r", exc)
        _close_quietly(self.conn)


def _ensure_store(host: _Host) -> None:
    if DEAD_LETTER_QUEUE not in host._declared:
        host._admin(_declare_store)
        host._declared.add(DEAD_LETTER_QUEUE)


def _browse(host: _Host, action: Callable[[_Browse], _T]) -> _T:
    """``action(browse)`` holding the store's lock; whatever it did not ack goes back."""
    from . import _lost

    host._check_fork()
    try:
        browse = _Browse(host)
    except (amqp_errors.ConnectionError, OSError) as exc:
        raise _lost(exc) from exc
    host._declared.add(DEAD_LETTER_QUEUE)  # the browse declared it
    try:
        return action(browse)
    except (amqp_errors.ConnectionError, OSError) as exc:
        raise _lost(exc) from exc
    finally:
        browse.close()


class AMQPDeadLetterMixin:
    """``DeadLetterStore`` for ``AMQPTransport`` (module docstring)."""

    def dead_letter(self: _Host, queue: str, message: Message, reason: str,
                    delivery: Delivery | None = None) -> str:
        """Keep ``message`` with ``reason``: published to the store and confirmed, then the held
        ``delivery`` (if any) is acked. A delivery this transport no longer holds stores
        nothing and returns "" (RabbitMQ delivers the message again)."""
        self._check_fork()
        if delivery is not None and self._holder(delivery) is None:
            return ""
        letter_id = uuid.uuid4().hex
        letter = letter_message(queue, message, reason, letter_id, time.time())
        _ensure_store(self)
        self.publish([Outgoing(DEAD_LETTER_QUEUE, letter)], confirm=True)
        if delivery is not None and self.ack([delivery]) != [True]:
            # lost between the check and the ack: the broker delivers the message again and
            # its next holder settles it, so this copy goes (or stays as a harmless duplicate)
            try:
                self.dead_letter_delete([letter_id])
            except Exception as exc:  # noqa: BLE001 - a duplicate letter is the worst case
                logger.warning("dead letter %s stays as a duplicate: %r", letter_id, exc)
            return ""
        return letter_id

    def dead_letters(self: _Host, limit: int = 100) -> list[DeadLetter]:
        """The first ``limit`` letters, oldest first (read and put back)."""
        if limit <= 0:
            return []

        def run(browse: _Browse) -> list[DeadLetter]:
            out: list[DeadLetter] = []
            for _, letter in browse.letters():
                out.append(letter)
                if len(out) >= limit:
                    break
            return out

        return _browse(self, run)

    def dead_letter_get(self: _Host, dead_letter_id: str) -> DeadLetter | None:
        def run(browse: _Browse) -> DeadLetter | None:
            for _, letter in browse.letters():
                if letter.id == dead_letter_id:
                    return letter
            return None

        return _browse(self, run)

    def dead_letter_delete(self: _Host, dead_letter_ids: Sequence[str] | None = None) -> int:
        """Remove the given letters (each id once; all when None, a purge); returns how many."""
        if dead_letter_ids is None:
            def purge(browse: _Browse) -> int:
                return int(browse.channel.queue_purge(DEAD_LETTER_QUEUE) or 0)

            return _browse(self, purge)
        wanted = set(dead_letter_ids)
        if not wanted:
            return 0

        def run(browse: _Browse) -> int:
            done = 0
            for tag, letter in browse.letters():
                if letter.id in wanted:
                    wanted.discard(letter.id)
                    browse.channel.basic_ack(tag)
                    done += 1
                    if not wanted:
                        break
            return done

        return _browse(self, run)
