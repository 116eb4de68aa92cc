"""Fanout (``Broadcast``) for the in-process broker: a mixin for ``MemoryTransport``.

Layer: transport. Every transport opened on one ``memory://name`` shares one hub of subscribers
(keyed by the transport's ``_broker``), so they see each other's broadcasts; thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import deque
from typing import Any, Protocol

from ..protocol.message import Message
from .base import Subscription, topic_matches

#: a message as broadcast: body bytes and JSON texts, rebuilt for each receiver (never shared)
_Frozen = tuple[bytes, str, str, str, str]


class _Host(Protocol):
    @property
    def _broker(self) -> object: ...


class _Hub:
    """The subscribers of one broker, by exchange."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribers: dict[str, list[MemorySubscription]] = {}


#: broker -> its hub; a hub goes when its broker does (``memory.reset`` makes a new broker)
_HUBS: weakref.WeakKeyDictionary[object, _Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def _hub(broker: object) -> _Hub:
    with _HUBS_LOCK:
        hub = _HUBS.get(broker)
        if hub is None:
            hub = _HUBS[broker] = _Hub()
        return hub


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


class MemorySubscription:
    """One subscriber's inbox; ``get`` waits on a condition, never spins."""

    def __init__(self, hub: _Hub, exchange: str, binding: str) -> None:
        self.exchange, self.binding = exchange, binding
        self._hub = hub
        self._cond = threading.Condition()
        self._inbox: deque[_Frozen] = deque()
        self._closed = False

    def _put(self, frozen: _Frozen) -> None:
        with self._cond:
            if not self._closed:
                self._inbox.append(frozen)
                self._cond.notify_all()

    def get(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while not self._inbox and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            frozen, self._inbox = list(self._inbox), deque()
        return [Message(body, ctype, cenc, json.loads(headers), json.loads(props))
                for body, ctype, cenc, headers, props in frozen]

    def close(self) -> None:
        with self._hub.lock:
            subscribers = self._hub.subscribers.get(self.exchange, [])
            if self in subscribers:
                subscribers.remove(self)
            if not subscribers:
                self._hub.subscribers.pop(self.exchange, None)
        with self._cond:
            self._closed = True
            self._inbox.clear()
            self._cond.notify_all()


class MemoryBroadcastMixin:
    """``Broadcast`` for ``MemoryTransport`` (needs its ``_broker``)."""

    def broadcast(self: _Host, exchange: str, message: Message, routing_key: str = "") -> int:
        """Hand a copy to every current subscriber of ``exchange`` whose binding matches;
        returns how many got one."""
        frozen: _Frozen = (bytes(message.body), message.content_type, message.content_encoding,
                           _dumps(message.headers), _dumps(message.properties))
        hub = _hub(self._broker)
        reached = 0
        with hub.lock:  # one order of broadcasts for every subscriber
            for subscriber in hub.subscribers.get(exchange, ()):
                if topic_matches(subscriber.binding, routing_key):
                    subscriber._put(frozen)
                    reached += 1
        return reached

    def subscribe(self: _Host, exchange: str, binding: str = "#") -> Subscription:
        """Receive what ``exchange`` broadcasts from now on (``binding``: AMQP topic pattern)."""
        hub = _hub(self._broker)
        subscriber = MemorySubscription(hub, exchange, binding)
        with hub.lock:
            hub.subscribers.setdefault(exchange, []).append(subscriber)
        return subscriber
