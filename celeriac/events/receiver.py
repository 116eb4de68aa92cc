"""Receiving events: ``EventReceiver`` (Celery's name and shape), for monitors of our own.

Layer: events. A receiver subscribes to the ``celeryev`` exchange through the transport's
``Broadcast`` capability (Redis: PSUBSCRIBE ``/<db>.celeryev/*`` as Flower does; RabbitMQ: a
private queue bound to the ``celeryev`` topic exchange; SQLite: the broadcast table) and calls a
handler per event: the handler of the event's type, else the ``'*'`` handler. A message may
carry one event or a list of them (``task.multi``, how Celery's workers and ours batch task
events); each is handled on its own, in order.

As Celery's receiver does, each event's ``timestamp`` is shifted to this machine's time zone
(by the sender's ``utcoffset``), ``local_received`` is set, and the app's Lamport clock moves
past the sender's (a client's ``task-sent`` clock is not trusted: clients never sync, so it is
replaced with one just below this node's).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ..exceptions import ImproperlyConfigured
from ..protocol import serialization
from ..transport.base import Broadcast, Subscription
from .event import DEFAULT_EXCHANGE, events_from_message, utcoffset

if TYPE_CHECKING:
    from ..app import Celery

#: seconds an idle receiver waits between two looks at its subscription (what a monitor can
#: lag behind): reading only when something came or this much later keeps a receiver cheap for
#: the broker, above all the embedded SQLite one, whose subscriptions would otherwise read the
#: broker file after each commit of every worker
POLL_INTERVAL = 0.1
#: the wait for messages in each look (long enough for a socket read to take what is there)
_LOOK = 0.001
#: Celery's: a client's task-sent is placed just before this node's clock
CLIENT_CLOCK_SKEW = -1

Handler = Callable[[dict[str, Any]], Any]


class EventReceiver:
    """Calls ``handlers[event_type]`` (or ``handlers['*']``) for every event the app's broker
    carries from now on.

    ``routing_key``: an AMQP topic pattern on the routing key (``task.#``: task events only;
    ``#``, the default: all). ``node_id`` names this receiver (a uuid when None). Use
    ``capture()`` (blocking) or ``itercapture()`` (a generator of the events), ``stop()`` from
    another thread or a handler, and ``close()`` (or a ``with`` block) when done. While events
    come it reads on at once; once none are there it looks again ``poll_interval`` seconds
    later (0.1 by default: how far behind a monitor may be).
    """

    def __init__(self, app: Celery, handlers: Mapping[str, Handler] | None = None,
                 node_id: str | None = None, *, routing_key: str = "#",
                 accept: Any = None, exchange: str | None = None,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.app = app
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.node_id = node_id or str(uuid.uuid4())
        self.routing_key = routing_key
        conf = app.conf
        self.exchange = exchange or conf.get("event_exchange") or DEFAULT_EXCHANGE
        if accept is None:
            accept = {conf.get("event_serializer") or "json", "json"}
        self.accept = serialization.normalize_accept(accept)
        self.clock = app.clock
        self.poll_interval = float(poll_interval)
        #: set by ``stop()``: the running capture returns (within a fraction of a second)
        self.should_stop = False
        self._subscription: Subscription | None = None
        self._kept_open = False  # opened by subscribe(): capture leaves it open when it ends

    # ---- subscription ------------------------------------------------------------------------
    def subscribe(self) -> EventReceiver:
        """Subscribe now, so events sent from here on are kept for the next ``capture``
        (otherwise ``capture`` subscribes when it starts). Closed by ``close()``."""
        self._open()
        self._kept_open = True
        return self

    def _open(self) -> Subscription:
        if self._subscription is None:
            transport = self.app.transport
            if not isinstance(transport, Broadcast):
                raise ImproperlyConfigured(
                    f"the broker {type(transport).__name__} cannot broadcast, so it carries no "
                    "events: use Redis, RabbitMQ or the embedded SQLite broker")
            self._subscription = transport.subscribe(self.exchange, self.routing_key)
        return self._subscription

    def close(self) -> None:
        """End the subscription (events sent afterwards are not seen)."""
        subscription, self._subscription = self._subscription, None
        self._kept_open = False
        if subscription is not None:
            subscription.close()

    def __enter__(self) -> EventReceiver:
        return self.subscribe()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- handling ----------------------------------------------------------------------------
    def event_from_message(self, body: dict[str, Any], localize: bool = True,
                           now: Callable[[], float] = time.time) -> tuple[str, dict[str, Any]]:
        """``(type, event)``: the clock and time-zone adjustments described in the module
        docstring, applied to ``body`` in place."""
        event_type = body["type"]
        if event_type == "task-sent":
            body["clock"] = (self.clock.value or 1) + CLIENT_CLOCK_SKEW
            self.clock.adjust(body["clock"])
        else:
            clock = body.get("clock")
            if isinstance(clock, int):
                self.clock.adjust(clock)
            else:
                body["clock"] = self.clock.forward()
        if localize:
            offset, timestamp = body.get("utcoffset"), body.get("timestamp")
            if isinstance(offset, (int, float)) and isinstance(timestamp, (int, float)):
                body["timestamp"] = timestamp - (offset - utcoffset()) * 3600
        body["local_received"] = now()
        return event_type, body

    def process(self, event_type: str, event: dict[str, Any]) -> None:
        """Call the handler for ``event_type``, else the ``'*'`` handler, if any."""
        handler = self.handlers.get(event_type) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    # ---- capturing ---------------------------------------------------------------------------
    def itercapture(self, limit: int | None = None, timeout: float | None = None,
                    wakeup: bool = True) -> Iterator[dict[str, Any]]:
        """Handle events as they come and yield each one after its handler ran. Ends after
        ``limit`` events, or when ``stop()`` is called; ``timeout``: seconds to wait for the
        next event, after which ``TimeoutError`` is raised (Celery's ``socket.timeout``).
        ``wakeup`` is accepted for Celery's signature: workers heartbeat every
        ``worker_heartbeat_interval`` seconds anyway."""
        self.should_stop = False
        subscription = self._open()
        handled = 0
        try:
            idle_since = time.monotonic()
            while not self.should_stop:
                messages = subscription.get(_LOOK)
                if not messages:
                    now = time.monotonic()
                    pause = self.poll_interval
                    if timeout is not None:
                        left = idle_since + timeout - now
                        if left <= 0:
                            raise TimeoutError(f"no event arrived within {timeout:g} s")
                        pause = min(pause, left)
                    time.sleep(pause)
                    continue
                idle_since = time.monotonic()
                for message in messages:
                    for body in events_from_message(message, self.accept):
                        event_type, event = self.event_from_message(body)
                        self.process(event_type, event)
                        yield event
                        handled += 1
                        if limit is not None and handled >= limit:
                            return
                        if self.should_stop:
                            return
        finally:
            if not self._kept_open:
                self.close()

    def capture(self, limit: int | None = None, timeout: float | None = None,
                wakeup: bool = True) -> None:
        """``itercapture`` run to its end (blocking): Celery's ``capture``."""
        for _ in self.itercapture(limit=limit, timeout=timeout, wakeup=wakeup):
            pass

    def stop(self) -> None:
        """Make the running capture return (safe from another thread or from a handler)."""
        self.should_stop = True
