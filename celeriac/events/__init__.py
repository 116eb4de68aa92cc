"""Celery's events: what workers (and, with ``task_send_sent_event``, clients) broadcast about
tasks and themselves, for monitors such as Flower, ``celery events`` and ``celeriac events``.

Layer: events (above the client side, beside dispatch, batches and beat). ``EventDispatcher``
sends, ``EventReceiver`` receives, ``State`` keeps what the events say; ``app.events`` gives
the three in Celery's shape (``app.events.Receiver(connection, handlers=...)``,
``app.events.Dispatcher(...)``, ``app.events.State()``) for monitors written against Celery.
The worker's side is ``celeriac.worker.events.TaskEvents``. docs/monitoring.md says what is
sent, when, and on which brokers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .dispatcher import EventDispatcher
from .event import Event, event_message, events_from_message, group_from, routing_key_for
from .receiver import EventReceiver, Handler
from .state import State

if TYPE_CHECKING:
    from ..app import Celery

__all__ = ["Event", "EventDispatcher", "EventReceiver", "Events", "State", "event_message",
           "events_from_message", "group_from", "routing_key_for"]


class Events:
    """``app.events``: Celery's factory of dispatchers, receivers and states for one app.

    The ``connection``/``channel`` arguments Celery takes are accepted and not needed: the app
    keeps its broker connections itself (``app.connection()`` gives a stand-in to pass)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def Dispatcher(self, connection: Any = None, hostname: str | None = None,  # noqa: N802
                   enabled: bool = True, channel: Any = None, buffer_while_offline: bool = True,
                   app: Celery | None = None, serializer: str | None = None,
                   groups: Any = None, delivery_mode: int = 1, buffer_group: Any = None,
                   buffer_limit: int | None = None, **kwargs: Any) -> EventDispatcher:
        options: dict[str, Any] = {}
        if buffer_limit is not None:
            options["buffer_limit"] = buffer_limit
        return EventDispatcher(app or self.app, hostname, enabled, groups=groups,
                               buffer_group=buffer_group or (), serializer=serializer, **options)

    def Receiver(self, connection: Any = None, handlers: Mapping[str, Handler] | None = None,  # noqa: N802
                 routing_key: str = "#", node_id: str | None = None, app: Celery | None = None,
                 queue_prefix: str | None = None, accept: Any = None,
                 queue_ttl: float | None = None, queue_expires: float | None = None,
                 **kwargs: Any) -> EventReceiver:
        return EventReceiver(app or self.app, handlers, node_id, routing_key=routing_key,
                             accept=accept)

    def State(self, **kwargs: Any) -> State:  # noqa: N802
        return State(**kwargs)

    def __repr__(self) -> str:
        return f"<Events of {self.app!r}>"
