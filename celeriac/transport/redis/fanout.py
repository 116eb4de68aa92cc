"""Fanout (``Broadcast``) over Redis PUB/SUB exactly as kombu lays it out (wire spec §2.7).

Layer: transport. A mixin for ``RedisTransport``: ``PUBLISH <prefix>/<db>.<exchange>[/<key>]`` with
the kombu envelope; each subscription PSUBSCRIBEs on a connection of its own and keeps the AMQP
topic meaning of its binding by filtering what the (wider) glob pattern lets through.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
import uuid
from dataclasses import replace
from typing import Any, Protocol

import redis as redis_py

from ...protocol.message import Message
from ..base import Subscription, topic_matches
from .envelope import UNDECODABLE, decode, encode

logger = logging.getLogger(__name__)
#: seconds ``subscribe`` waits for the server to confirm the subscription
SUBSCRIBE_TIMEOUT = 10.0
#: messages one ``get`` takes at most once something arrived (a busy exchange cannot hold it)
MAX_BATCH = 1000


class _Host(Protocol):
    @property
    def _client(self) -> redis_py.Redis: ...
    @property
    def prefix(self) -> str: ...


def _escape(text: str) -> str:
    """``text`` matched literally in a PSUBSCRIBE glob."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _key_glob(binding: str) -> str:
    """A glob matching every routing key ``binding`` matches (and maybe more): ``*`` -> ``*``,
    ``#`` -> ``*`` taking its neighbouring dots too, so ``a.#`` also matches ``a``."""
    out, previous = "", None
    for word in binding.split("."):
        if previous is not None and "#" not in (previous, word):
            out += "."
        out += "*" if word in ("*", "#") else _escape(word)
        previous = word
    return out


def channel_base(host: _Host, exchange: str) -> str:
    """kombu's fanout channel of ``exchange``: ``<global_keyprefix>/<db>.<exchange>``."""
    db = host._client.connection_pool.connection_kwargs.get("db", 0)
    return f"{host.prefix}/{db or 0}.{exchange}"


def patterns_for(base: str, binding: str) -> list[str]:
    """PSUBSCRIBE patterns covering ``binding``; an empty routing key is published to the bare
    channel, so a binding matching "" (``#``, ``""``) also takes that. They never overlap, so no
    message arrives twice."""
    patterns = [_escape(base)] if topic_matches(binding, "") else []
    if binding:
        patterns.append(f"{_escape(base)}/{_key_glob(binding)}")
    return patterns


#: how an envelope's text starts (``encode`` writes the body first)
_BODY_HEAD = '{"body": "'


def _envelope(message: Message, exchange: str, routing_key: str) -> str:
    """The kombu envelope, with ``delivery_info`` naming the exchange as kombu's does. The
    body (base64: nothing in it needs escaping) is spliced into the text of the envelope made
    without it, so a batch of events (``task.multi``, 100 KB and more) is not scanned by the
    JSON encoder: the same text, made in a fraction of the time."""
    text = encode(replace(message, body=b""), routing_key, str(uuid.uuid4()), exchange=exchange)
    assert text.startswith(_BODY_HEAD + '"')
    body = base64.b64encode(bytes(message.body)).decode("ascii")
    return _BODY_HEAD + body + text[len(_BODY_HEAD):]


class RedisSubscription:
    """One PSUBSCRIBE connection; ``get`` reads it (blocking in the socket, never spinning).

    Meant for one consuming thread; ``close`` from another thread waits for a running ``get``.
    A killed connection is reopened (and subscribed again) by the next read.
    """

    def __init__(self, client: redis_py.Redis, base: str, binding: str) -> None:
        self.binding = binding
        self._base = base.encode()
        self._pool = client.connection_pool
        self._pubsub = client.pubsub()
        self._lock = threading.Lock()
        self._early: list[Message] = []
        self._closed = False
        patterns = patterns_for(base, binding)
        try:
            self._pubsub.psubscribe(*patterns)
            pending, deadline = len(patterns), time.monotonic() + SUBSCRIBE_TIMEOUT
            retried = False
            while pending:  # confirmed: every publish after this returns reaches us
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise redis_py.TimeoutError("Redis did not confirm PSUBSCRIBE")
                try:
                    event = self._pubsub.get_message(timeout=remaining)
                except redis_py.ConnectionError:
                    if retried:
                        raise
                    retried, pending = True, len(patterns)  # reconnecting subscribes again
                    continue
                if event is not None and event["type"] in ("psubscribe", b"psubscribe"):
                    pending -= 1
                elif event is not None:
                    self._early.extend(self._take(event))
        except BaseException:
            self._release()
            raise

    def _take(self, event: dict[str, Any]) -> list[Message]:
        kind, channel, data = event["type"], event["channel"], event["data"]
        if kind not in ("pmessage", b"pmessage") or not data:
            return []
        channel = channel.encode() if isinstance(channel, str) else bytes(channel)
        rest = channel[len(self._base):]  # b"" (empty routing key) or b"/<routing key>"
        key = rest[1:].decode("utf-8", "replace")
        if not topic_matches(self.binding, key):
            return []
        message, _ = decode(data)
        if message.content_type == UNDECODABLE:
            logger.warning("ignoring a broadcast that is not a kombu envelope on %r", channel)
            return []
        return [message]

    def get(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            if self._closed:
                return []
            out, self._early = self._early, []
            retried = False
            while len(out) < MAX_BATCH:
                wait = 0.0 if out else max(deadline - time.monotonic(), 0.0)
                try:
                    event = self._pubsub.get_message(timeout=wait)
                except redis_py.ConnectionError:
                    if retried:  # the server is gone, not just our connection
                        raise
                    # killed (CLIENT KILL, server restart): the next read reconnects and
                    # subscribes again; what was published meanwhile is lost, as with kombu
                    retried = True
                    logger.info("broadcast subscription lost its connection; reconnecting")
                    continue
                if event is not None:
                    out.extend(self._take(event))
                elif out or time.monotonic() >= deadline:
                    break
            return out

    def _release(self) -> None:
        self._pubsub.close()
        self._pool.disconnect()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._early = []
                self._release()


class RedisBroadcastMixin:
    """``Broadcast`` for ``RedisTransport`` (needs its ``_client`` and ``prefix``)."""

    def broadcast(self: _Host, exchange: str, message: Message, routing_key: str = "") -> int:
        """PUBLISH to every current subscriber; nobody listening, nobody gets it. Returns how
        many subscribers got it (PUBLISH's reply)."""
        channel = channel_base(self, exchange) + (f"/{routing_key}" if routing_key else "")
        return int(self._client.publish(channel, _envelope(message, exchange, routing_key)))

    def subscribe(self: _Host, exchange: str, binding: str = "#") -> Subscription:
        """Receive what ``exchange`` broadcasts from now on (``binding``: AMQP topic pattern),
        on a connection of the subscription's own; returns once the server confirmed it."""
        pool = self._client.connection_pool
        own = redis_py.ConnectionPool(connection_class=pool.connection_class,
                                      **pool.connection_kwargs)
        return RedisSubscription(redis_py.Redis(connection_pool=own), channel_base(self, exchange),
                                 binding)
