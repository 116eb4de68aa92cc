"""Sending events: ``EventDispatcher`` (Celery's name and shape).

Layer: events. An event is built where it happens (a few dict entries and a clock tick) and
published on the ``celeryev`` exchange through the transport's ``Broadcast`` capability: Redis
PUBLISH on kombu's fanout channels, RabbitMQ's ``celeryev`` topic exchange, the SQLite broker's
broadcast table. Groups named in ``buffer_group`` (the worker's ``task`` events) are not sent one
by one: they collect in a buffer that a background thread publishes as one ``task.multi`` list
every ``flush_interval`` seconds (sooner once ``buffer_limit`` events wait), so a task's three
events cost the worker's hot path a tuple and an append, not three broker round trips; the
flusher gives a batch its clock values in one tick (in buffer order, so a task's events keep
their order) and writes its JSON from a template per event shape (type and field names: the
constant text is made once, each event's values are put in; the same bytes ``json.dumps`` makes
of the event). Other events (``worker-*``, the client's ``task-sent``) go out at once, from the
caller's thread.

Events are not kept: nobody subscribed, nobody gets them (kombu's fanout semantics). Where the
broker says how many got a message (Redis's PUBLISH), the flusher uses it: once a batch reached
nobody, each later batch first goes out as its first event alone, and the rest is encoded and
published only if that one reached someone (else the rest is dropped, as the broker would have
dropped it). A monitor that subscribes gets every event published after it did, as before, and
a worker run with ``-E`` while no monitor listens spends a buffer append per event and one small
message per flush (per 500 events), not the encoding and publishing of every event.
``event_skip_unheard = False`` publishes every batch (for monitors the count cannot see: on a
replica or another node of the broker's Redis). A publish
that fails is logged (once per outage, not per event) and its events are dropped; the task
itself is never failed or slowed by an event it could not send.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..protocol.message import Message
from ..protocol.serialization import json_dumps, json_string, json_template
from ..transport.base import Broadcast
from ..utils.text import one_line
from .event import DEFAULT_EXCHANGE, MULTI, event_message, message_of, routing_key_for
from .event import utcoffset as _utcoffset

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.events")

#: seconds buffered events wait for company before they are published together
FLUSH_INTERVAL = 0.05
#: buffered events that make the flusher publish at once; also the most one message carries
BUFFER_LIMIT = 500
#: buffered events kept at most while the broker does not take them (later ones are dropped)
MAX_PENDING = 100_000
#: what ``_publish`` returns for a message the broker did not take (None: it took it, and does
#: not say how many got it)
_FAILED = -1
#: seconds between two looks at the local UTC offset (it changes twice a year at most)
_OFFSET_REFRESH = 60.0

_getpid = os.getpid
_now = time.time
#: how many times this process was forked into a child (counted in the child): the hot path
#: compares it instead of asking the kernel for its pid (a system call) three times a task
_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)

#: events encoded between two chances for the worker's other threads to take the GIL (about
#: a hundred microseconds of work)
_SLICE = 32


#: lets another thread of this process have the GIL now, if one waits for it (a fraction of a
#: microsecond; ``time.sleep(0)`` costs a hundred times more on some virtual machines)
_yield_gil = getattr(os, "sched_yield", lambda: time.sleep(0))

#: an event's shape: its type and its fields' names, in order (a template is kept per shape)
Shape = tuple[str, tuple[Any, ...]]
#: a buffered event until the flusher builds it: (group, shape, the fields' values, timestamp)
_Pending = tuple[str, Shape, tuple[Any, ...], float]

#: the keys an event's common part and its end hold: fields that name one of them are not put
#: through a template (``_build`` decides where they go)
_OWN_KEYS = frozenset({"hostname", "utcoffset", "pid", "clock", "timestamp", "type"})
#: event shapes (type and field names) a dispatcher keeps a template for, at most
_MAX_TEMPLATES = 64
_float_repr = float.__repr__
_int_repr = int.__repr__


def _json_value(value: Any) -> str:
    """``json_dumps(value)``, the common scalars without the encoder's set-up."""
    cls = value.__class__
    if cls is str:
        return json_string(value)
    if value is None:
        return "null"
    if cls is int:
        return _int_repr(value)
    if cls is float:
        text = _float_repr(value)
        if "n" not in text:  # not nan, inf or -inf, which JSON spells its own way
            return text
    return json_dumps(value)


def _anon_hostname() -> str:
    from ..protocol.v2 import anon_nodename

    return anon_nodename()


class EventDispatcher:
    """Sends events of ``hostname`` (``gen<pid>@<host>`` when None, a client's name) to the
    app's broker.

    ``groups``: only these groups are sent (None: all). ``buffer_group``: groups batched as
    ``<group>.multi`` lists by a background thread (see the module docstring). ``enabled`` can
    be switched at any time; switching it off sends what is buffered first.
    """

    def __init__(self, app: Celery, hostname: str | None = None, enabled: bool = True, *,
                 groups: Iterable[str] | None = None, buffer_group: Iterable[str] = (),
                 flush_interval: float = FLUSH_INTERVAL, buffer_limit: int = BUFFER_LIMIT,
                 serializer: str | None = None, exchange: str | None = None) -> None:
        self.app = app
        conf = app.conf
        self.hostname = hostname or _anon_hostname()
        self.exchange = exchange or conf.get("event_exchange") or DEFAULT_EXCHANGE
        self.serializer = serializer or conf.get("event_serializer") or "json"
        self.groups: set[str] | None = set(groups) if groups is not None else None
        self.buffer_group = frozenset(buffer_group)
        self.flush_interval = float(flush_interval)
        self.buffer_limit = max(1, int(buffer_limit))
        self.clock = app.clock
        #: events published, and publishes (messages) made: for tests and the benchmark
        self.sent_events = 0
        self.sent_messages = 0
        #: buffered events not encoded nor sent because nobody listened (module docstring)
        self.unheard = 0
        self._told_unheard = False
        #: routing keys whose last buffered message reached nobody
        self._unheard_keys: set[str] = set()
        #: whether to stop encoding batches nobody receives (``event_skip_unheard``)
        self.skip_unheard = bool(conf.get("event_skip_unheard", True))
        #: buffered events kept at most while publishing lags (a broker that hangs), and how
        #: many were dropped because of it
        self.max_pending = MAX_PENDING
        self.dropped = 0
        self._enabled = bool(enabled)
        self._closed = False
        self._offset = _utcoffset()
        self._offset_at = time.monotonic()
        self._failing = False
        self._transport: Broadcast | None = None
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        """A buffer, locks and no flusher thread of this process's own (also after a fork)."""
        self._pid = _getpid()
        self._fork = _forks[0]
        self._lock = threading.Lock()  # the buffer
        self._pending: list[_Pending] = []
        self._wake = threading.Event()  # the flusher has something to do
        self._publishing = threading.Lock()  # one publish at a time keeps the clock's order
        self._flusher: threading.Thread | None = None
        self._stopping = False
        #: (event type, field names) -> the event's JSON as a %-format of its values, or None
        #: for a shape ``_build`` lays out itself (see ``_template``); made again after a fork
        #: (the pid) and when the UTC offset changes
        self._templates: dict[Shape, str | None] = {}

    # ---- switching on and off ----------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = bool(value)
        if self._enabled and not value:
            self._enabled = False
            self.flush()
        self._enabled = value

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    # ---- sending -----------------------------------------------------------------------------
    def _build(self, event_type: str, fields: dict[str, Any], timestamp: float,
               clock: int | None) -> dict[str, Any]:
        """The event map, in the order Celery's worker writes its keys."""
        return {"hostname": self.hostname, "utcoffset": self._offset, "pid": self._pid,
                "clock": clock, **fields, "timestamp": fields.get("timestamp", timestamp),
                "type": event_type}

    def send(self, type: str, blind: bool = False,  # noqa: A002
             **fields: Any) -> dict[str, Any] | None:
        """Send the event ``type`` with ``fields``. A buffered group's event is queued for the
        flusher (returns None); any other is published now and returned. Nothing is sent (None)
        when disabled or when its group is not switched on. ``blind``: no clock value
        (Celery's option)."""
        if not self._enabled:
            return None
        group = type.partition("-")[0]
        groups = self.groups
        if groups is not None and group not in groups:
            return None
        if group in self.buffer_group:
            self.send_values(group, (type, tuple(fields)), tuple(fields.values()))
            return None
        self._refresh_offset()
        event = self._build(type, fields, _now(), None if blind else self.clock.forward())
        with self._publishing:
            self._publish(routing_key_for(type), event, 1)
        return event

    def send_buffered(self, group: str, type: str,  # noqa: A002
                      fields: dict[str, Any]) -> None:
        """``send`` for a caller that knows ``group`` is switched on and in ``buffer_group``
        (the worker's task events): the event is queued for the flusher without ``send``'s
        look-ups."""
        self.send_values(group, (type, tuple(fields)), tuple(fields.values()))

    def send_values(self, group: str, shape: Shape, values: tuple[Any, ...]) -> None:
        """``send_buffered`` of an event whose ``shape`` (type and field names) is fixed in
        advance, given as its fields' ``values`` in that order: the worker's three events per
        task, which so build no map on the task's path and none in the flusher."""
        if not self._enabled:
            return
        if self._fork != _forks[0]:  # a child must not use its parent's buffer or thread
            self._reset_buffers()
        timestamp = _now()
        with self._lock:
            pending = self._pending
            if len(pending) >= self.max_pending:  # the broker is stuck: drop, don't grow
                self.dropped += 1
                return
            pending.append((group, shape, values, timestamp))
            waiting = len(pending)
        if waiting == 1 or waiting == self.buffer_limit:  # the flusher sleeps, or must hurry
            if self._flusher is None:
                self._start_flusher()
            self._wake.set()

    def send_batch(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Send several events of one group at once, as one ``<group>.multi`` list (a client
        publishing a group of tasks sends all their ``task-sent`` events in one message)."""
        if not self._enabled or not events:
            return
        group = events[0][0].partition("-")[0]
        if self.groups is not None and group not in self.groups:
            return
        self._refresh_offset()
        built = [self._build(event_type, fields, _now(), self.clock.forward())
                 for event_type, fields in events]
        with self._publishing:
            if len(built) == 1:
                self._publish(routing_key_for(events[0][0]), built[0], 1)
            else:
                self._publish(f"{group}.{MULTI}", built, len(built))

    def _refresh_offset(self) -> None:
        now = time.monotonic()
        if now - self._offset_at > _OFFSET_REFRESH:
            offset, self._offset_at = _utcoffset(), now
            if offset != self._offset:
                self._offset, self._templates = offset, {}

    # ---- publishing ---------------------------------------------------------------------------
    def _broadcaster(self) -> Broadcast | None:
        if self._transport is None:
            transport = self.app.transport
            if not isinstance(transport, Broadcast):
                logger.error("the broker %s cannot broadcast, so no events are sent",
                             type(transport).__name__)
                self._enabled = False
                return None
            self._transport = transport
        return self._transport

    def _publish(self, routing_key: str, body: Any, count: int) -> int | None:
        """Hold ``_publishing``. One message (``body``: an event, a list of events, or a
        ``Message`` made already); errors are logged once per outage, never raised. Returns how
        many subscribers got it where the broker says, None where it does not, ``_FAILED`` when
        it was not sent."""
        try:
            transport = self._broadcaster()
            if transport is None:
                return _FAILED
            message = body if isinstance(body, Message) else event_message(body, self.hostname,
                                                                           self.serializer)
            reached = transport.broadcast(self.exchange, message, routing_key)
        except Exception as exc:  # noqa: BLE001 - events must never break what sends them
            if not self._failing:
                logger.warning("could not send events to the broker (%s); events are dropped "
                               "until it answers again", one_line(exc))
                self._failing = True
            return _FAILED
        if self._failing:
            logger.info("sending events again")
            self._failing = False
        self.sent_events += count
        self.sent_messages += 1
        return reached

    def _publish_pending(self) -> None:
        """Hold ``_publishing``. Build and publish what is buffered, one list per group (at
        most ``buffer_limit`` events a message)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        self._refresh_offset()
        # One tick for the batch: the events take the values in buffer order (the order they
        # were sent in), as if each had ticked as it was queued.
        clock = self.clock.forward(len(pending)) - len(pending) + 1
        unheard = self._unheard_keys
        for group, run, first in self._runs(pending, clock):
            key = f"{group}.{MULTI}"
            for start in range(0, len(run), self.buffer_limit):
                chunk, tick = run[start:start + self.buffer_limit], first + start
                if key in unheard:  # the last message reached nobody: ask with one event
                    reached = self._publish_chunk(key, chunk[:1], tick)
                    if reached == _FAILED:  # the broker is away: the rest would fail too
                        continue
                    if reached == 0:
                        self.unheard += len(chunk) - 1
                        continue
                    unheard.discard(key)
                    chunk, tick = chunk[1:], tick + 1
                    if not chunk:
                        continue
                if self._publish_chunk(key, chunk, tick) == 0 and self.skip_unheard:
                    if not self._told_unheard:
                        logger.info("nobody receives this worker's %s events: each batch sends "
                                    "its first event only, until a monitor subscribes", group)
                        self._told_unheard = True
                    unheard.add(key)

    def _publish_chunk(self, key: str, chunk: list[_Pending], clock: int) -> int | None:
        """Encode and publish buffered events as one message: how many subscribers got it,
        None where the broker does not say (or the events could not be encoded), ``_FAILED``
        when the broker did not take it."""
        try:
            message = self._encode(chunk, clock)
        except Exception as exc:  # noqa: BLE001 - a field JSON cannot take: drop these
            logger.warning("could not encode %d events (%s); they are dropped",
                           len(chunk), one_line(exc))
            return None
        return self._publish(key, message, len(chunk))

    def _runs(self, pending: list[_Pending],
              clock: int) -> Iterator[tuple[str, list[_Pending], int]]:
        """``pending`` cut into runs of one group each, with the clock value of each run's
        first event (``clock``: the first event's): one run when one group is buffered."""
        if len(self.buffer_group) == 1:
            yield pending[0][0], pending, clock
            return
        start = 0
        for end in range(1, len(pending) + 1):
            if end == len(pending) or pending[end][0] != pending[start][0]:
                yield pending[start][0], pending[start:end], clock + start
                start = end

    def _encode(self, items: list[_Pending], clock: int) -> Message:
        """The ``<group>.multi`` message of ``items``, whose clock values start at ``clock``.
        JSON (Celery's and Flower's event serializer) is written a slice at a time, letting the
        worker's other threads have the GIL between slices: this thread shares the worker's
        process, and one long encoding would keep the solo pool's task loop waiting. Each
        event of a known shape is its template filled with its values (``_template``): the
        text ``json_dumps`` makes of the event, without building the event's map or encoding
        its constant part again."""
        build = self._build
        if self.serializer != "json":
            events = [build(shape[0], dict(zip(shape[1], values)), timestamp, tick)
                      for tick, (_, shape, values, timestamp) in enumerate(items, clock)]
            return event_message(events, self.hostname, self.serializer)
        templates, value = self._templates, _json_value
        parts = []
        for start in range(0, len(items), _SLICE):
            texts: list[str] = []
            add = texts.append
            for tick, (_, shape, values, timestamp) in enumerate(
                    items[start:start + _SLICE], clock + start):
                try:
                    template = templates[shape]
                except KeyError:  # a new shape (past the limit: built as a map)
                    template = None
                    if len(templates) < _MAX_TEMPLATES:
                        template = templates[shape] = self._template(shape)
                if template is None:
                    add(json_dumps(build(shape[0], dict(zip(shape[1], values)), timestamp,
                                         tick)))
                else:  # the clock and timestamp go in as they are: "%s" writes what JSON does
                    add(template % (tick, *map(value, values), timestamp))
            parts.append(", ".join(texts))  # json.dumps([a, b]) == "[" + a + ", " + b + "]"
            _yield_gil()
        return message_of(("[" + ", ".join(parts) + "]").encode("utf-8"), self.hostname)

    def _template(self, shape: Shape) -> str | None:
        """The JSON text ``_build`` and ``json_dumps`` make of an event of ``shape`` (its type
        and its fields' names, in order) as a %-format taking the clock, each field's JSON
        and the timestamp; None when a field name is not a plain string or is one of the
        event's own keys (those events are built as maps)."""
        event_type, names = shape
        if any(name.__class__ is not str or name in _OWN_KEYS for name in names):
            return None
        marks = [f"\x00celeriac-event-value-{index}\x00" for index in range(len(names) + 2)]
        sample = {"hostname": self.hostname, "utcoffset": self._offset, "pid": self._pid,
                  "clock": marks[0], **dict(zip(names, marks[1:-1])), "timestamp": marks[-1],
                  "type": event_type}
        pieces = json_template(sample, marks)
        if pieces is None:  # a mark's text elsewhere in the event (the hostname, say)
            return None
        # each mark stood for a JSON string: its quotes go, and "%s" puts the value's JSON there
        return "%s".join(piece.replace("%", "%%") for piece in pieces)

    def flush(self) -> None:
        """Publish what is buffered now, from this thread."""
        with self._publishing:
            self._publish_pending()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_loop, name="celeriac-events",
                                             daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            wake.clear()
            if not self._stopping and len(self._pending) < self.buffer_limit:
                # let more events join this message (a full buffer, or close(), cuts it short)
                wake.wait(self.flush_interval)
            with self._publishing:
                self._publish_pending()
            if self._stopping:
                return

    def close(self) -> None:
        """Publish what is buffered, stop the flusher thread; later events are not sent."""
        if self._closed:
            return
        self._stopping = True
        self._wake.set()
        flusher = self._flusher
        if flusher is not None and self._pid == _getpid():
            flusher.join(timeout=5.0)
        self.flush()
        self._closed = True
        self._enabled = False

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<EventDispatcher {self.hostname} {'enabled' if self._enabled else 'disabled'}"
                f" groups={sorted(self.groups) if self.groups is not None else 'all'}>")
