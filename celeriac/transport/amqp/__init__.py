"""The RabbitMQ broker (``amqp://``, ``pyamqp://``, ``amqps://``) on py-amqp, laid out as Celery.

Layer: transport. Entities are declared with exactly Celery's flags (``declare``): a durable
direct exchange named like the queue, a durable classic queue without arguments unless the
``Queue`` has some (``queue_arguments``, ``max_priority``, ``message_ttl``...), bound with the
queue's routing key. A message for a queue is published to the default exchange ``""`` with the
queue's name as routing key (Celery's direct route); a routed one to its exchange with its key.

Publishing: one connection per thread (and per process: a forked child opens its own), its
channel in confirm mode; a batch is published at once (its frames, the bytes py-amqp's
``basic_publish`` would send, built by ``wire.publish_frames`` and written together) and then
waited for, so ``publish`` returns only once the broker has confirmed every message (a nack
raises). With ``confirm_publish=False`` (kombu's option) task publishes go on a second channel,
never in confirm mode, and ``publish`` returns once the frames are written; the transport's
own moves of held messages (dead letters, deferrals) and broadcasts still wait for confirms.
Producer connections
negotiate no heartbeat (the broker never closes them for silence; TCP keepalive finds dead
peers); one found dead is dropped, the error raised is in ``transient_errors``, and the next use
opens a fresh connection (the producer's publish retry does exactly that).

Consuming: one consumer connection per transport, opened by the first ``fetch``: ``basic_qos``
(``global`` as Celery uses on RabbitMQ) set to what the caller holds plus what it asks for,
one ``basic_consume(no_ack=False)`` per queue, and reads of what the broker pushes: the fetch
waits for the socket to become readable (``poll``, holding no lock), then reads the frames
already there and returns at once (a zero timeout: one read, no poll, how the solo
worker's dispatch thread takes what was pushed as a task starts). One fetching thread at a
time reads that connection (``_read_lock``); acks and rejects come from other worker threads
(batched acks, early acks, pool callbacks), so every frame written on it goes through one
lock (``_locked_writer``; acks are written as whole frames under it, ``wire.ack_frame``) and an
ack never waits for a fetch to end (TLS sockets cannot read and write from two threads: there
each frame is read under the same lock, the wait itself still holding none). A warm shutdown's
``stop_consuming`` cancels the consumers and gives back what was pushed but never fetched.
Heartbeats: the fetching thread calls ``heartbeat_tick`` (at most every 0.1 s) and a small
keepalive thread sends one whenever the interval asks, so a worker busy with long tasks (not
fetching) keeps its connection. Messages with an ``eta`` that arrive early are held here,
unacked, until due: a worker runs them at their ETA without handing them back and forth. The
prefetch is kept at the caller's window (most ever held + asked for) + waiting for an ETA
(``_fit_prefetch``), lowered as well as raised with the ETA messages: Celery too raises it per
held ETA task and lowers it when the task is released.

Delivery semantics: the channel is the lease (no ``Leases`` capability): messages not acked when
the connection closes or dies are redelivered by RabbitMQ (at-least-once with ``acks_late``).
After a connection is lost, acks for its deliveries return False (logged) and the broker
redelivers them. ``delivery_count`` is 1, or on a redelivery the ``x-delivery-count`` header
plus one (quorum queues), else one more than this transport's own requeues of that task id, else
2 (classic queues do not count deliveries).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import heapq
import itertools
import logging
import math
import select
import socket
import struct
import threading
import time
import weakref
from typing import Any, Callable, Sequence

import amqp  # type: ignore[import-untyped]
from amqp import exceptions as amqp_errors

from ...exceptions import ImproperlyConfigured
from ...protocol.entities import Queue, as_queue
from ...utils.amqp_url import BrokerAddress, connection_params, parse_url
from ...utils.amqp_url import close_quietly as _close_quietly
from ...utils.forks import PidGuard
from ...utils.urls import redact_url
from ..base import Delivery, Outgoing, check_queue_names
from ..options import accepted_options, warn_unused
from .broadcast import AMQPBroadcastMixin, exchange_flags, is_celery_exchange
from .dead_letters import AMQPDeadLetterMixin
from .delayed import AMQPDelayedDeliveryMixin
from .wire import ack_frame, frame_handler, from_amqp, publish_frames, to_amqp

logger = logging.getLogger(__name__)

__all__ = ["AMQPTransport", "ConnectionLost"]

#: kombu queue options that become queue arguments (seconds are sent as milliseconds)
_QUEUE_OPTIONS: dict[str, tuple[str, int]] = {
    "expires": ("x-expires", 1000), "message_ttl": ("x-message-ttl", 1000),
    "max_length": ("x-max-length", 1), "max_length_bytes": ("x-max-length-bytes", 1),
}
#: longest single wait inside ``fetch`` (heartbeats and cancelled consumers are looked at
#: between two waits)
_SLICE = 1.0
#: a TLS consumer connection reads in slices this short, holding the write lock
_TLS_SLICE = 0.02
#: once the socket is readable, how long a frame's rest may take to arrive (the broker writes
#: whole frames: this bounds only a connection dying mid-frame)
_FRAME_WAIT = 1.0
#: after a new consumer or a raised prefetch the broker sends a burst: keep reading until it
#: has been quiet this long (or the fetch has what it asked for)
_BURST_GAP = 0.01
#: requeue counts remembered per (queue, task id), for delivery_count on classic queues
_REQUEUE_MEMORY = 10_000
#: the fetching thread's heartbeat bookkeeping runs at most this often (seconds, ``tick``)
_TICK_EVERY = 0.1
#: the most one read of a plain socket takes (``read_frames``)
_RECV_SIZE = 256 * 1024
#: a publish writes its frames in pieces of about this size (one piece for a usual batch)
_WRITE_SIZE = 1024 * 1024
_FRAME_HEADER = struct.Struct(">BHI").unpack_from


class ConnectionLost(ConnectionError):
    """The broker connection went away (raised by this transport; retried like any other)."""


class _ConsumerConnection:
    """The fetching connection: its channel, consumers and what it holds, for one generation."""

    def __init__(self, conn: Any, generation: int, tls: bool) -> None:
        self.conn = conn
        self.generation = generation
        self.channel = conn.channel()
        self.channel.auto_decode = False  # bodies stay bytes, whatever their content_encoding
        self.write_lock = threading.RLock()
        _locked_writer(conn, self.write_lock)
        self.tls = tls
        self.prefetch = 0
        #: the most ever handed out + asked for at once: the window the caller keeps
        self.window = 0
        self.consumers: dict[str, str] = {}  # queue -> consumer tag
        self.queues_of: dict[str, str] = {}  # consumer tag -> queue
        self.arrived: collections.deque[Any] = collections.deque()  # raw amqp messages
        self.ready: dict[str, collections.deque[Delivery]] = {}
        self.waiting: list[tuple[float, int, Delivery]] = []  # ETA messages held until due
        #: deliveries another thread deferred (``defer``), under ``write_lock``: the fetching
        #: thread moves them into ``waiting`` (``_sort_arrivals``), so a defer never waits for
        #: a fetch to end
        self.deferred: list[tuple[float, int, Delivery]] = []
        self.held: dict[int, str] = {}  # delivery tag -> queue, handed out and unsettled
        self.alive = True
        self.declared: set[str] = set()
        self.global_qos: bool | None = None  # chosen at the first basic_qos (``_qos_global``)
        self.next_tick = 0.0  # monotonic time ``tick`` calls py-amqp's heartbeat_tick again
        # the fetching thread waits for the socket to become readable with this, holding no
        # lock (an ack from another thread goes straight out meanwhile)
        self.sock = conn.sock
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)

    def io_lock(self) -> Any:
        """Held around a request and its reply on a TLS connection (an SSL socket must not be
        read and written at once); a plain socket needs only the frame writer's lock."""
        return self.write_lock if self.tls else contextlib.nullcontext()

    def on_message(self, msg: Any) -> None:
        self.arrived.append(msg)

    def tick(self, heartbeat: float) -> None:
        """py-amqp's ``heartbeat_tick`` (sends a heartbeat when one is due, raises when too
        many were missed), at most every ``_TICK_EVERY`` seconds and eight times an interval:
        py-amqp asks for about one a second, and one on every pass of a busy fetch (a pass per
        message or two) was a few percent of the fetch's time."""
        if heartbeat <= 0:
            return
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + min(_TICK_EVERY, heartbeat / 8)
        with self.io_lock():
            self.conn.heartbeat_tick()

    def readable(self, wait: float) -> bool:
        """Whether the socket has bytes to read, waiting up to ``wait`` seconds for some (no
        lock held: polling the descriptor neither reads nor writes the stream)."""
        return bool(self.poller.poll(max(0, math.ceil(wait * 1000))))

    def buffered(self) -> bool:
        """TLS, under ``write_lock``: the SSL layer holds decrypted bytes not read yet (the
        descriptor may not be readable even so)."""
        return bool(self.tls and self.sock.pending())

    def unsettled(self, queue: str | None = None) -> int:
        """Deliveries on this channel not yet acked or rejected (all queues, or one). Other
        threads settle (``held``) and fetch (``waiting``, ``ready``) meanwhile: what is counted
        is copied under ``write_lock``, which every ack and reject holds."""
        with self.write_lock:
            held = list(self.held.values())
            waiting = [d.queue for _, _, d in [*self.waiting, *self.deferred]]
            ready = {q: len(d) for q, d in list(self.ready.items())}
        if queue is None:
            return len(held) + len(waiting) + sum(ready.values())
        return (sum(1 for q in held if q == queue) + sum(1 for q in waiting if q == queue)
                + ready.get(queue, 0))


class _Producer:
    """One thread's connection for publishing (confirm mode) and for declaring and counting."""

    def __init__(self, conn: Any, tls: bool = False) -> None:
        self.conn = conn
        self.channel: Any = None
        #: ``confirm_publish=False``: the channel publishes go out on, never in confirm mode
        #: (a channel cannot leave confirm mode; declares keep using ``channel``)
        self.plain: Any = None
        self.sent = 0  # publish sequence numbers handed out on the current channel
        self.unconfirmed: set[int] = set()
        self.nacked: set[int] = set()
        #: a plain socket's confirms are read with ``read_frames`` once it polls readable; an
        #: unconfirmed publish polls it (TLS too) for what the broker said since the last one
        self.tls = tls
        self.poller = select.poll()
        if conn is not None:
            self.poller.register(conn.sock.fileno(), select.POLLIN)

    def open_channel(self) -> Any:
        if self.channel is None or not self.channel.is_open:
            channel = self.conn.channel()
            channel.confirm_select()
            self.sent = 0
            self.unconfirmed, self.nacked = set(), set()
            # pipelined confirms: py-amqp calls these while drain_events() reads the replies
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self.channel = channel
        return self.channel

    def open_plain_channel(self) -> Any:
        """The channel for publishes without confirms, opened now if there is none."""
        if self.plain is None or not self.plain.is_open:
            self.plain = self.conn.channel()
        return self.plain

    def read_replies(self) -> None:
        """Before an unconfirmed publish: handle whatever the broker sent since the last one
        without waiting (nothing, normally). A ``channel.close`` for an earlier publish (an
        exchange deleted meanwhile, a message over the size limit) is raised here: RabbitMQ
        drops everything sent on a closed channel, so writing on would lose this batch too."""
        if not self.poller.poll(0) and not (self.tls and self.conn.sock.pending()):
            return
        if not self.tls:
            read_frames(self.conn)
            return
        with contextlib.suppress(socket.timeout):
            self.conn.drain_events(timeout=0.001)

    def _settle(self, delivery_tag: int, multiple: bool) -> set[int]:
        if multiple:
            done = {tag for tag in self.unconfirmed if tag <= delivery_tag}
        else:
            done = {delivery_tag} & self.unconfirmed
        self.unconfirmed -= done
        return done

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.nacked |= self._settle(delivery_tag, multiple)


class AMQPTransport(AMQPDeadLetterMixin, AMQPBroadcastMixin, AMQPDelayedDeliveryMixin):
    """Queues on a RabbitMQ server, wire-compatible with Celery 5 (kombu's py-amqp transport).

    Options (``broker_transport_options``, or keyword arguments): ``heartbeat`` (seconds, the
    consumer connection's; default 120 as ``broker_heartbeat``; 0 turns heartbeats off),
    ``connect_timeout`` (default 4 s as ``broker_connection_timeout``), ``login_method``
    (``broker_login_method``: AMQPLAIN, PLAIN, EXTERNAL...), ``ssl`` (``broker_use_ssl``: True,
    or a dict of ``ca_certs``, ``cert_reqs``, ``certfile``, ``keyfile``, ``server_hostname``...
    as kombu takes them), ``confirm_timeout`` (seconds a publish waits for the broker's
    confirms, default 30), ``confirm_publish`` (default True: ``publish`` returns once the
    broker confirmed every message; False, kombu's name and default: published without
    publisher confirms, ``publish`` returns once the frames are written to the socket),
    ``qos_global`` (default True, as Celery on RabbitMQ), ``max_priority`` (``x-max-priority``
    for every classic queue without one, as Celery's ``task_queue_max_priority``). Options the
    URL's query gives are overridden by these. Any other key is logged once as having no
    effect (``options.warn_unused``).
    """

    #: errors after which a publish may be retried and a fetch is tried again after a pause
    transient_errors: tuple[type[BaseException], ...] = (
        amqp_errors.RecoverableConnectionError, ConnectionLost, OSError, socket.timeout)

    def __init__(self, url: str = "amqp://guest:guest@localhost:5672//", *,
                 heartbeat: float | None = None, connect_timeout: float | None = None,
                 login_method: str | None = None, ssl: bool | dict[str, Any] | None = None,
                 confirm_timeout: float = 30.0, confirm_publish: bool = True,
                 qos_global: bool = True, max_priority: int | None = None,
                 **unused: Any) -> None:
        warn_unused("RabbitMQ", unused, accepted_options(type(self)))
        self.url = url
        self.address: BrokerAddress = parse_url(url)
        query = self.address.options
        self.heartbeat = float(heartbeat if heartbeat is not None
                               else query.get("heartbeat", 120.0))
        # amqps:// always speaks TLS, whatever ``ssl`` says
        self._params = connection_params(self.address, ssl=ssl,
                                         connect_timeout=connect_timeout,
                                         login_method=login_method)
        self.connect_timeout: float = self._params["connect_timeout"]
        self.login_method: str | None = self._params.get("login_method")
        self.ssl: bool | dict[str, Any] = self._params["ssl"]
        self.confirm_timeout = float(confirm_timeout)
        if confirm_publish not in (True, False):  # 0 and 1 too
            raise ImproperlyConfigured(f"broker_transport_options: confirm_publish must be True "
                                       f"or False, not {confirm_publish!r}")
        #: False: task publishes are written without publisher confirms (``publish``)
        self.confirm_publish = bool(confirm_publish)
        self.qos_global = bool(qos_global)
        self.max_priority = max_priority
        self._forks = PidGuard()
        #: whether ``close()`` is due at interpreter exit (set by the first unconfirmed publish)
        self._closed_at_exit = False
        self._init_state()

    def _init_state(self) -> None:
        self._local = threading.local()
        self._producers: list[_Producer] = []
        self._producers_lock = threading.Lock()
        self._read_lock = threading.Lock()  # one fetching thread at a time
        self._stopped = False  # stop_consuming() was called: fetch takes nothing more
        self._consumer: _ConsumerConnection | None = None
        self._generation = itertools.count(1)
        self._turn = itertools.count()
        self._seq = itertools.count()
        self._declared: set[str] = set()
        self._entities: dict[str, Queue] = {}
        self._exchanges: set[str] = {""}
        self._requeues: collections.OrderedDict[tuple[str, str], int] = \
            collections.OrderedDict()
        self._keepalive: threading.Thread | None = None
        self._closing = threading.Event()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AMQPTransport:
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"<AMQPTransport {redact_url(self.url)!r}>"

    # ---- connections --------------------------------------------------------------------------
    def _check_fork(self) -> None:
        """A forked child must not use its parent's sockets: it forgets them (unclosed)."""
        if self._forks.forked():
            self._forks.adopt()
            self._init_state()

    def _connect(self, heartbeat: float) -> Any:
        # frame_handler: py-amqp's, reading content headers with wire.decode_properties
        conn = amqp.Connection(**{**self._params, "heartbeat": int(heartbeat),
                                  "frame_handler": frame_handler})
        conn.connect()
        return conn

    def _producer(self) -> _Producer:
        """This thread's producer connection, opened now if it has none (or lost it)."""
        self._check_fork()
        producer: _Producer | None = getattr(self._local, "producer", None)
        if producer is not None and producer.conn.connected:
            return producer
        producer = _Producer(self._connect(0), bool(self.ssl))
        self._local.producer = producer
        with self._producers_lock:
            self._producers.append(producer)
        return producer

    def _drop_producer(self, producer: _Producer) -> None:
        self._local.producer = None
        with self._producers_lock:
            if producer in self._producers:
                self._producers.remove(producer)
        _close_quietly(producer.conn)

    def _admin(self, action: Callable[[Any], Any]) -> Any:
        """``action(channel)`` on this thread's producer channel; a lost connection is dropped
        (and the error raised), a channel closed by the broker is reopened next time."""
        producer = self._producer()
        try:
            return action(producer.open_channel())
        except amqp_errors.ChannelError:
            producer.channel = None
            raise
        except (amqp_errors.ConnectionError, OSError) as exc:
            self._drop_producer(producer)
            raise _lost(exc) from exc

    # ---- declaring ----------------------------------------------------------------------------
    def declare(self, queue: Queue | str) -> None:
        """Declare ``queue`` with its exchange and binding exactly as Celery does (module
        docstring). A flag that differs from what the broker has fails as one
        ImproperlyConfigured naming the queue and the difference."""
        self._check_fork()
        self._declare(as_queue(queue))

    def _declare(self, queue: Queue) -> None:
        arguments = dict(queue.queue_arguments)
        for option, (argument, scale) in _QUEUE_OPTIONS.items():
            value = queue.options.get(option)
            if value is not None:
                arguments.setdefault(argument, int(float(value) * scale))
        # Celery's task_queue_max_priority: every queue without an x-max-priority of its own
        # (quorum and stream queues refuse the argument on RabbitMQ 3: they are left alone)
        if (self.max_priority is not None and "x-max-priority" not in arguments
                and arguments.get("x-queue-type", "classic") == "classic"):
            arguments["x-max-priority"] = int(self.max_priority)
        exchange = queue.exchange

        def run(channel: Any) -> None:
            if exchange.name:
                channel.exchange_declare(exchange.name, exchange.type, durable=exchange.durable,
                                         auto_delete=exchange.auto_delete,
                                         arguments=exchange.arguments or None)
            channel.queue_declare(queue.name, durable=queue.durable, exclusive=queue.exclusive,
                                  auto_delete=queue.auto_delete, arguments=arguments or None)
            if exchange.name:
                channel.queue_bind(queue.name, exchange.name, queue.routing_key)

        try:
            self._admin(run)
        except amqp_errors.PreconditionFailed as exc:
            raise ImproperlyConfigured(
                f"RabbitMQ refused to declare queue {queue.name!r} (exchange "
                f"{exchange.name!r}, {exchange.type}): it exists with other flags or arguments "
                f"({_reply_text(exc)}). Declare it with the same settings everywhere, or "
                f"delete it first.") from None
        except amqp_errors.ChannelError as exc:
            raise ImproperlyConfigured(
                f"RabbitMQ refused to declare queue {queue.name!r}: {_reply_text(exc)}") from None
        self._declared.add(queue.name)
        self._entities[queue.name] = queue
        if exchange.name:
            self._exchanges.add(exchange.name)
        self._declare_delayed(queue)  # a quorum queue: broker-side delays (delayed.py)

    def _ensure_exchange(self, name: str, kind: str | None) -> None:
        """A routed publish needs its exchange to exist: use it if it does, else declare it
        durable with ``kind`` (direct when unknown), as Celery's producer declares it; Celery's
        event and remote-control exchanges (a pidbox reply) with their own flags."""
        if name in self._exchanges:
            return
        durable = True
        if is_celery_exchange(name):
            kind, durable = exchange_flags(name)
        try:
            self._admin(lambda channel: channel.exchange_declare(name, kind or "direct",
                                                                 passive=True))
        except amqp_errors.NotFound:
            self._admin(lambda channel: channel.exchange_declare(name, kind or "direct",
                                                                 durable=durable,
                                                                 auto_delete=False))
        self._exchanges.add(name)

    def _ensure_queue(self, name: str) -> None:
        """A queue published to by name only (a replay, a queue created on first use): used as
        it is if it exists, whatever its arguments (a quorum or priority queue its consumers
        declared: a plain declare would fail PRECONDITION_FAILED), else declared as Celery
        declares a missing queue."""
        try:
            self._admin(lambda channel: channel.queue_declare(name, passive=True))
        except amqp_errors.NotFound:
            self._declare(Queue(name))
            return
        self._declared.add(name)

    # ---- publishing ---------------------------------------------------------------------------
    def publish(self, items: Sequence[Outgoing], *, confirm: bool | None = None) -> None:
        """Publish every item, then wait for the broker's confirms: returns once all are on the
        broker; a nack raises ConnectionLost (nothing is known about the others).

        ``confirm`` None follows ``confirm_publish``; with False the items are written on a
        channel not in confirm mode and nothing is awaited: ``publish`` returns once the frames
        are in the socket (a connection error while writing still raises). The transport's own
        moves of a held message (a dead letter, a deferral) and broadcasts pass True."""
        if not items:
            return
        self._check_fork()
        prepared: list[tuple[Any, str, str]] = []
        now = time.time()
        for item in items:  # everything is encoded before anything is sent
            if item.routed:
                route = None
                target = (item.exchange, item.routing_key or "")
            else:
                recorded = item.exchange or (item.routing_key not in (None, item.queue))
                route = (item.exchange, item.key) if recorded else None
                target = ("", item.queue)
            delayed = self._delayed_target(item, now)  # held back by the broker (delayed.py)
            if delayed is not None:
                target, route = delayed[:2], delayed[2]
            prepared.append((to_amqp(item.message, not_before=item.not_before, route=route),
                             *target))
        for item in items:
            if item.routed:
                self._ensure_exchange(item.exchange, item.exchange_type)
            elif item.queue not in self._declared:
                self._ensure_queue(item.queue)
        producer = self._producer()
        if not (self.confirm_publish if confirm is None else confirm):
            self._publish_unconfirmed(producer, prepared)
            return
        try:
            channel = producer.open_channel()
            conn = producer.conn
            # every frame of the batch in one write (py-amqp's basic_publish costs a write, two
            # socket timeout changes and a zero-timeout read per message); same bytes
            frames = [publish_frames(channel.channel_id, exchange, routing_key, msg,
                                     conn.frame_max)
                      for msg, exchange, routing_key in prepared]
            first = producer.sent + 1
            producer.sent += len(frames)
            mine = set(range(first, producer.sent + 1))
            producer.unconfirmed |= mine
            _write_frames(conn, frames)
            deadline = time.monotonic() + self.confirm_timeout
            while producer.unconfirmed & mine:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(f"RabbitMQ did not confirm {len(mine)} published "
                                         f"message(s) within {self.confirm_timeout:g} s")
                if producer.tls:
                    try:
                        conn.drain_events(timeout=min(remaining, _SLICE))
                    except socket.timeout:
                        continue
                elif producer.poller.poll(math.ceil(min(remaining, _SLICE) * 1000)):
                    read_frames(conn)  # the confirms, however many came
        except amqp_errors.ChannelError as exc:
            producer.channel = None
            raise ConnectionLost(f"RabbitMQ closed the publishing channel: "
                                 f"{_reply_text(exc)}") from exc
        except (amqp_errors.ConnectionError, OSError) as exc:
            self._drop_producer(producer)
            raise _lost(exc) from exc
        if producer.nacked & mine:
            producer.nacked -= mine
            raise ConnectionLost("RabbitMQ refused (nacked) a published message")

    def _publish_unconfirmed(self, producer: _Producer,
                             prepared: list[tuple[Any, str, str]]) -> None:
        """``confirm_publish=False``: the batch's frames written at once on the plain channel,
        nothing awaited. A message lost by the broker (or in a connection that dies after the
        write) is not reported; a channel the broker closed for an earlier publish is found
        before writing (``read_replies``) and raised, so the caller's retry writes this batch
        on a fresh channel."""
        if not self._closed_at_exit:  # what it writes is then taken before the process ends
            self._closed_at_exit = True
            _CLOSE_AT_EXIT.add(self)
        try:
            producer.read_replies()
            channel = producer.open_plain_channel()
            conn = producer.conn
            _write_frames(conn, [publish_frames(channel.channel_id, exchange, routing_key, msg,
                                                conn.frame_max)
                                 for msg, exchange, routing_key in prepared])
        except amqp_errors.ChannelError as exc:
            producer.plain = None
            raise ConnectionLost(f"RabbitMQ closed the publishing channel: "
                                 f"{_reply_text(exc)}") from exc
        except (amqp_errors.ConnectionError, OSError) as exc:
            self._drop_producer(producer)
            raise _lost(exc) from exc

    # ---- consuming ----------------------------------------------------------------------------
    def _consumer_connection(self) -> _ConsumerConnection:
        """Hold ``_read_lock``. The live consumer connection, opened now if there is none."""
        self._check_fork()
        current = self._consumer
        if current is not None and current.alive:
            return current
        if current is not None:
            # lost on a write (``_lose_from_writer``): its socket may still be up, holding its
            # deliveries unacked (with heartbeat=0, for ever) and its descriptor open
            self._consumer = None
            _close_quietly(current.conn)
        conn = self._connect(self.heartbeat)
        current = _ConsumerConnection(conn, next(self._generation), bool(self.ssl))
        self._consumer = current
        if self.heartbeat > 0 and (self._keepalive is None or not self._keepalive.is_alive()):
            self._keepalive = threading.Thread(target=self._keep_alive,
                                               name="celeriac-amqp-heartbeat", daemon=True)
            self._keepalive.start()
        return current

    def _keep_alive(self) -> None:
        """Send a heartbeat frame on the consumer connection every third of the interval, so a
        worker busy with long tasks (not fetching) is not taken for dead."""
        every = max(self.heartbeat / 3.0, 0.5)
        while not self._closing.wait(every):
            current = self._consumer
            if current is None or not current.alive or self._forks.forked():
                continue
            try:
                current.conn.send_heartbeat()
            except Exception as exc:  # noqa: BLE001 - the fetching thread finds out and reconnects
                logger.debug("heartbeat not sent: %r", exc)

    def _lose(self, current: _ConsumerConnection, exc: BaseException) -> None:
        """The consumer connection is gone: what it held the broker redelivers."""
        if current.alive:
            current.alive = False
            logger.warning("RabbitMQ consumer connection lost (%s); %d unsettled message(s) "
                           "will be delivered again", _one_line(exc), current.unsettled())
        if self._consumer is current:
            self._consumer = None
        _close_quietly(current.conn)

    def fetch(self, queues: Sequence[str], max_n: int, timeout: float) -> list[Delivery]:
        """Up to ``max_n`` messages the broker pushed to this transport's consumers, waiting up
        to ``timeout`` seconds for the first; queues are served in turn. A ``timeout`` of 0
        still reads what the socket holds (a ``poll`` and a ``recv``, no round trip): the solo
        worker refills its buffer so from the thread that runs tasks."""
        check_queue_names(queues)
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n!r}")
        # first: a child forked while the parent's fetching thread held ``_read_lock`` has it
        # locked for ever; ``_check_fork`` gives the child a fresh one
        self._check_fork()
        unique = list(dict.fromkeys(queues))
        start = next(self._turn) % len(unique)
        order = unique[start:] + unique[:start]
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._read_lock:
            if not self._stopped:
                current = self._consumer_connection()
                try:
                    return self._fetch(current, order, max_n, deadline)
                except (amqp_errors.ConnectionError, OSError) as exc:
                    self._lose(current, exc)
                    raise _lost(exc) from exc
                except amqp_errors.ChannelError as exc:
                    self._lose(current, exc)
                    raise ConnectionLost(f"RabbitMQ closed the consuming channel: "
                                         f"{_reply_text(exc)}") from exc
        # consuming was stopped: wait as on an empty queue (close() ends the wait)
        self._closing.wait(max(deadline - time.monotonic(), 0.0))
        return []

    def stop_consuming(self) -> int:
        """``PushedDeliveries`` (transport/base.py), for a warm shutdown: cancel every consumer
        (RabbitMQ sends a consumer's ``basic.cancel-ok`` after its last delivery, so nothing
        more arrives) and reject with requeue what the broker pushed that no fetch handed out,
        ready or held until its ETA: another worker gets those at once instead of when this
        connection closes. Handed-out deliveries stay held (acked or rejected as before);
        later fetches return nothing until ``close``. Waits for a running fetch to end (at
        most its timeout). Returns how many deliveries went back."""
        self._check_fork()
        with self._read_lock:
            self._stopped = True
            current = self._consumer
            if current is None or not current.alive:
                return 0
            return self._give_back(current, None)

    def cancel_queue(self, queue: str) -> int:
        """Stop consuming ``queue`` (remote control's ``cancel_consumer``; the caller fetches
        from it no more): its consumer is cancelled, and what the broker pushed from it that no
        fetch handed out, ready or held until its ETA, goes back at once (requeued). Waits for a
        running fetch to end (at most its timeout). Returns how many deliveries went back."""
        self._check_fork()
        with self._read_lock:
            current = self._consumer
            if current is None or not current.alive or queue not in current.consumers:
                return 0
            return self._give_back(current, queue)

    def _give_back(self, current: _ConsumerConnection, queue: str | None) -> int:
        """Cancel the consumer of ``queue`` (None: every consumer) and requeue what the broker
        pushed from it that no fetch handed out, ready or held until its ETA. Hold
        ``_read_lock``. How many deliveries went back."""
        queues = list(current.consumers) if queue is None else [queue]
        try:
            with current.io_lock():
                for name in queues:  # basic_cancel reads what arrives before its -ok
                    current.channel.basic_cancel(current.consumers[name])
            self._sort_arrivals(current)  # while the tags still name their queues
            for name in queues:
                del current.queues_of[current.consumers.pop(name)]
            if queue is None:
                unfetched = [d for ready in current.ready.values() for d in ready]
                unfetched += [d for _, _, d in current.waiting]
                current.ready.clear()
                current.waiting = []
            else:
                unfetched = list(current.ready.pop(queue, ()))
                unfetched += [d for _, _, d in current.waiting if d.queue == queue]
                current.waiting = [entry for entry in current.waiting if entry[2].queue != queue]
                heapq.heapify(current.waiting)
            with current.write_lock:
                for delivery in unfetched:
                    current.channel.basic_reject(delivery.receipt[1], requeue=True)
        except (amqp_errors.AMQPError, OSError) as exc:
            self._lose(current, exc)  # closed: the broker requeues all it held, these too
            return 0
        return len(unfetched)

    def held_until_due(self) -> list[tuple[float, Delivery]]:
        """(due time, delivery) of each message with an ETA this transport holds unacked until
        it is due, soonest first (remote control's ``scheduled``)."""
        current = self._consumer
        if current is None or not current.alive:
            return []
        with current.write_lock:
            waiting = [*current.waiting, *current.deferred]
        return [(due, delivery) for due, _, delivery in sorted(waiting, key=lambda e: e[:2])]

    def _fetch(self, current: _ConsumerConnection, order: list[str], max_n: int,
               deadline: float) -> list[Delivery]:
        # after a new consumer or a raised prefetch the broker sends a burst: read on until it
        # has been quiet a moment, so a first fetch does not return a lone message
        self._sort_arrivals(current)  # ETA messages now due no longer count as waiting
        burst = self._subscribe(current, order, max_n)
        looked = False  # whether this fetch has read the socket
        while True:
            self._sort_arrivals(current)
            # messages held for their ETA take prefetch room: one basic_qos per read pass
            # that changed what is held, not one per message
            burst = self._fit_prefetch(current, order, max_n) or burst
            if self._ready_in(current, order) >= max_n:
                break
            if burst:
                burst = self._read(current, _BURST_GAP)
                looked = True
                continue
            if self._ready_in(current, order):
                break
            wait = deadline - time.monotonic()
            if wait <= 0:
                if looked:
                    break
                wait = 0.0  # a fetch that may not wait still takes what the broker pushed
            if current.waiting:
                wait = min(wait, max(current.waiting[0][0] - time.time(), 0.0))
            looked = True
            self._read(current, min(wait, _SLICE))
        return self._hand_out(current, self._take(current, order, max_n))

    @staticmethod
    def _ready_in(current: _ConsumerConnection, order: list[str]) -> int:
        ready = current.ready
        if len(order) == 1:  # the usual worker: one queue, no generator
            return len(ready.get(order[0], ()))
        return sum(len(ready.get(queue, ())) for queue in order)

    def _subscribe(self, current: _ConsumerConnection, order: list[str], max_n: int) -> bool:
        """Prefetch and consumers for this fetch; True if anything changed (a burst comes).
        On a new connection every queue is declared again (as first declared) before it is
        consumed."""
        changed = self._fit_prefetch(current, order, max_n)
        with current.io_lock():
            for queue in order:
                if queue in current.consumers:
                    continue
                if queue not in current.declared:
                    self._declare(self._entities.get(queue) or Queue(queue))
                    current.declared.add(queue)
                tag = current.channel.basic_consume(queue, no_ack=False,
                                                    callback=current.on_message)
                current.consumers[queue] = tag
                current.queues_of[tag] = queue
                changed = True
            current.tick(self.heartbeat)
        return changed

    def _fit_prefetch(self, current: _ConsumerConnection, order: list[str], max_n: int) -> bool:
        """Set the prefetch to the caller's window (the most it ever held handed out plus asked
        for at once) plus what is kept for its ETA: raised and lowered with the ETA messages,
        ``basic_qos`` (a round trip) only when that changed. True if it went up (the broker
        sends more). The window only grows: a worker's early ack shrinks ``held`` while its
        task runs and the room it asks for comes back when the task ends, so following both
        would send two ``basic_qos`` per task and wait out a burst after each raise."""
        current.window = max(current.window, len(current.held) + max_n)
        want = current.window + len(current.waiting)
        if want == current.prefetch:
            return False
        with current.io_lock():
            current.channel.basic_qos(0, want, self._qos_global(current, order))
        raised = want > current.prefetch
        current.prefetch = want
        return raised

    def _qos_global(self, current: _ConsumerConnection, order: list[str]) -> bool:
        """``qos_global``, unless a queue this transport declared or consumes is a quorum queue
        (``x-queue-type: quorum``): RabbitMQ refuses to consume those under a global prefetch
        (NOT_IMPLEMENTED), so the prefetch is per consumer, as Celery 5.5+ decides it
        (``worker_detect_quorum_queues``). Chosen once per connection."""
        if current.global_qos is None:
            queues = [*self._entities.values(), *(self._entities.get(q) for q in order)]
            current.global_qos = self.qos_global and not any(
                q is not None and q.queue_arguments.get("x-queue-type") == "quorum"
                for q in queues)
        return current.global_qos

    def _read(self, current: _ConsumerConnection, wait: float) -> bool:
        """Wait up to ``wait`` seconds for the broker to send something, holding no lock (the
        socket is polled, not read), then read every frame already there and return at once;
        True if a message arrived. A plain socket is read in bulk (``read_frames``: one
        ``recv`` for many frames, every whole frame handled at once), and py-amqp's own reads
        go no further than the frame they parse, so an unhandled whole frame is always in the
        socket, where the poll sees it; on TLS the SSL layer may hold decrypted bytes
        (``buffered``), and every read holds the write lock, frame by frame through py-amqp. A
        frame whose rest is late is waited for at most ``_FRAME_WAIT`` (TLS: ``_TLS_SLICE``);
        its start stays in py-amqp's buffer for the next read."""
        before = len(current.arrived)
        if not current.tls:
            # a plain socket: read whatever it holds at once and parse the frames here
            # (py-amqp's own read costs three recv and two timeout changes per frame); a read
            # that may not wait skips the poll: ``read_frames`` does not wait, and finds nothing
            # (0) when nothing came (a system call less for each solo task start's refill)
            if wait <= 0 or current.readable(wait):
                got = read_frames(current.conn)
                # more than one read held, or a frame's rest is on its way
                while got == _RECV_SIZE or (got and current.conn.transport._read_buffer
                                            and current.readable(_FRAME_WAIT)):
                    got = read_frames(current.conn)
            current.tick(self.heartbeat)
            return len(current.arrived) > before
        with current.write_lock:
            buffered = current.buffered()
        if buffered or current.readable(wait):
            frame_wait = _TLS_SLICE if current.tls else _FRAME_WAIT
            more = True
            try:
                while more:
                    with current.io_lock():
                        current.conn.blocking_read(timeout=frame_wait)
                        more = current.buffered() or current.readable(0)
            except socket.timeout:
                pass
        current.tick(self.heartbeat)
        return len(current.arrived) > before

    def _sort_arrivals(self, current: _ConsumerConnection) -> None:
        """Turn raw arrivals into deliveries: ready per queue, or waiting for their ETA (with
        what other threads deferred since)."""
        if current.deferred:
            with current.write_lock:
                deferred, current.deferred = current.deferred, []
            for entry in deferred:
                heapq.heappush(current.waiting, entry)
        now = time.time()
        while current.arrived:
            msg = current.arrived.popleft()
            info = msg.delivery_info
            queue = current.queues_of.get(info["consumer_tag"], "")
            message, not_before, route = from_amqp(msg)
            exchange, routing_key = route if route is not None else (
                info["exchange"], info["routing_key"])
            tag = int(info["delivery_tag"])
            redelivered = bool(info["redelivered"])
            delivery = Delivery(message, queue, (current.generation, tag),
                                self._delivery_count(queue, message, redelivered), redelivered,
                                {"delivery_tag": tag}, exchange, routing_key)
            if (not_before is not None and not_before > now
                    and not self._defers_natively(queue, message, not_before, now)):
                # held until due: the fetch counts it in the prefetch (``_fit_prefetch``), so
                # it does not stop the broker sending others
                heapq.heappush(current.waiting, (not_before, next(self._seq), delivery))
            else:
                current.ready.setdefault(queue, collections.deque()).append(delivery)
        while current.waiting and current.waiting[0][0] <= now:
            _, _, delivery = heapq.heappop(current.waiting)
            current.ready.setdefault(delivery.queue, collections.deque()).appendleft(delivery)

    def _delivery_count(self, queue: str, message: Any, redelivered: bool) -> int:
        if not redelivered:
            # a first delivery, whatever ``x-delivery-count`` an earlier life of the message
            # left in its headers (a dead letter replayed carries the count it died with)
            return 1
        counted = message.headers.get("x-delivery-count")
        if isinstance(counted, int) and not isinstance(counted, bool):
            return counted + 1
        task_id = message.headers.get("id")
        if isinstance(task_id, str):
            requeued = self._requeues.get((queue, task_id))
            if requeued is not None:
                return requeued + 1
        return 2

    @staticmethod
    def _take(current: _ConsumerConnection, order: list[str], max_n: int) -> list[Delivery]:
        got: list[Delivery] = []
        while len(got) < max_n:
            progressed = False
            for queue in order:
                ready = current.ready.get(queue)
                if ready:
                    got.append(ready.popleft())
                    progressed = True
                    if len(got) >= max_n:
                        break
            if not progressed:
                break
        return got

    @staticmethod
    def _put_back(current: _ConsumerConnection, got: list[Delivery]) -> None:
        for delivery in reversed(got):
            current.ready.setdefault(delivery.queue, collections.deque()).appendleft(delivery)

    @staticmethod
    def _hand_out(current: _ConsumerConnection, got: list[Delivery]) -> list[Delivery]:
        for delivery in got:
            current.held[delivery.receipt[1]] = delivery.queue
        return got

    # ---- settling -----------------------------------------------------------------------------
    def _holder(self, delivery: Delivery) -> _ConsumerConnection | None:
        """The live connection still holding ``delivery`` unsettled, else None."""
        current = self._consumer
        generation, tag = delivery.receipt
        if (current is None or not current.alive or current.generation != generation
                or tag not in current.held):
            return None
        return current

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """``basic_ack`` each delivery this transport still holds on its live channel; False
        for the others (settled already, or received on a connection since lost: the broker
        delivers those again)."""
        if not deliveries:
            return []
        self._check_fork()
        current = self._consumer
        if len(deliveries) == 1 and current is not None and current.alive:
            generation, tag = deliveries[0].receipt
            if generation == current.generation:
                return [self._ack_one(current, tag)]
        done = [False] * len(deliveries)
        mine: list[tuple[int, int]] = []  # (index, delivery tag) of those held on ``current``
        for index, delivery in enumerate(deliveries):
            if current is not None and self._holder(delivery) is current:
                mine.append((index, delivery.receipt[1]))
            elif delivery.receipt[0] != getattr(current, "generation", None):
                logger.info("Message %s was received on a broker connection since lost: "
                            "not acked, RabbitMQ delivers it again",
                            delivery.message.headers.get("id"))
        if not mine:
            return done
        assert current is not None
        try:
            with current.write_lock:
                # the frames py-amqp's basic_ack writes, without its per-call machinery: a
                # batch's acks (the acking thread's) in one write
                frames = []
                for index, tag in mine:
                    if current.held.pop(tag, None) is not None:
                        frames.append(ack_frame(current.channel.channel_id, tag))
                        done[index] = True
                if frames:
                    if current.channel.connection is None:
                        raise ConnectionLost("the consuming channel is closed")
                    _write_frames(current.conn, frames)
        except (amqp_errors.AMQPError, OSError) as exc:
            self._lose_from_writer(current, exc)  # lost: RabbitMQ delivers all of them again
            return [False] * len(deliveries)
        return done

    def _ack_one(self, current: _ConsumerConnection, tag: int) -> bool:
        """``ack`` of one delivery held on ``current`` (an early ack, before its task starts):
        the same frame, written with less bookkeeping around it than a batch's."""
        try:
            with current.write_lock:
                if current.held.pop(tag, None) is None:
                    return False  # settled already
                transport = current.conn.transport
                if current.channel.connection is None or transport is None:
                    raise ConnectionLost("the consuming channel is closed")
                transport.write(ack_frame(current.channel.channel_id, tag))
                current.conn.bytes_sent += 1
        except (amqp_errors.AMQPError, OSError) as exc:
            self._lose_from_writer(current, exc)  # lost: RabbitMQ delivers it again
            return False
        return True

    def reject(self, delivery: Delivery, requeue: bool) -> bool:
        """``basic_reject``: back to the queue (``requeue``; this transport stops consuming
        that queue until its next fetch, so the message can go to another consumer) or
        dropped."""
        self._check_fork()
        current = self._holder(delivery)
        if current is None:
            return False
        tag = delivery.receipt[1]
        queue = delivery.queue
        try:
            with current.write_lock:
                if current.held.pop(tag, None) is None:
                    return False
                if requeue:
                    consumer_tag = current.consumers.pop(queue, None)
                    if consumer_tag is not None:
                        current.channel.basic_cancel(consumer_tag, nowait=True)
                current.channel.basic_reject(tag, requeue=requeue)
        except (amqp_errors.AMQPError, OSError) as exc:
            self._lose_from_writer(current, exc)
            return False
        task_id = delivery.message.headers.get("id")
        if requeue and isinstance(task_id, str):
            key = (queue, task_id)
            self._requeues[key] = delivery.delivery_count
            self._requeues.move_to_end(key)
            while len(self._requeues) > _REQUEUE_MEMORY:
                self._requeues.popitem(last=False)
        return True

    def _lose_from_writer(self, current: _ConsumerConnection, exc: BaseException) -> None:
        """A write on the consumer connection failed: mark it lost; the fetching thread
        reconnects on its next fetch."""
        if current.alive:
            current.alive = False
            logger.warning("RabbitMQ consumer connection lost (%s); unsettled messages will "
                           "be delivered again", _one_line(exc))

    # ---- admin --------------------------------------------------------------------------------
    def _count(self, queue: str, purge: bool) -> int:
        def run(channel: Any) -> int:
            _, ready, _ = channel.queue_declare(queue, passive=True)
            if purge:
                return int(channel.queue_purge(queue) or 0)
            return int(ready)

        try:
            return int(self._admin(run))
        except amqp_errors.NotFound:
            return 0

    def purge(self, queue: str) -> int:
        """Drop the ready messages of ``queue`` (held ones stay); returns how many. Messages
        the broker had pushed to this transport but not yet handed out count as ready."""
        self._check_fork()
        dropped = self._count(queue, purge=True)
        current = self._consumer
        if current is not None and current.alive:
            with self._read_lock:
                self._sort_arrivals(current)
                ready = list(current.ready.pop(queue, ()))
                keep = [w for w in current.waiting if w[2].queue != queue]
                ready += [w[2] for w in current.waiting if w[2].queue == queue]
                current.waiting = keep
                heapq.heapify(current.waiting)
                try:
                    with current.write_lock:
                        for delivery in ready:
                            current.channel.basic_ack(delivery.receipt[1])
                except (amqp_errors.AMQPError, OSError) as exc:
                    self._lose_from_writer(current, exc)
                    ready = []
            dropped += len(ready)
        return dropped

    def qsize(self, queue: str) -> int:
        """The ready messages RabbitMQ reports for ``queue`` (``queue.declare`` passive) plus
        the ones this transport holds unsettled; messages other consumers hold are not
        counted (RabbitMQ does not report them over AMQP)."""
        self._check_fork()
        ready = self._count(queue, purge=False)
        current = self._consumer
        if current is not None and current.alive:
            return ready + current.unsettled(queue)
        return ready

    def close(self) -> None:
        """Close every connection this transport opened in this process (the broker requeues
        what the consumer connection held); a later use opens new ones."""
        if self._forks.forked():
            self._check_fork()
            return
        self._closing.set()
        current, self._consumer = self._consumer, None
        if current is not None:
            current.alive = False
            _close_quietly(current.conn)
        with self._producers_lock:
            producers, self._producers = self._producers, []
        for producer in producers:
            _close_quietly(producer.conn)
        self._local = threading.local()
        if self._keepalive is not None:
            self._keepalive.join(2.0)
            self._keepalive = None
        self._closing = threading.Event()
        self._stopped = False


#: transports that published without confirms, closed at interpreter exit: RabbitMQ takes
#: what a connection wrote before its ``connection.close``, where a process that just ends drops
#: its socket (a benchmark's producer that did so after a burst of 10,001 tasks, on a loaded
#: machine, twice left only about 9,850 on the queue)
_CLOSE_AT_EXIT: weakref.WeakSet[AMQPTransport] = weakref.WeakSet()


@atexit.register
def _close_unconfirmed_at_exit() -> None:
    for transport in list(_CLOSE_AT_EXIT):
        try:
            transport.close()
        except Exception:  # noqa: BLE001 - the process is ending: say so, go on with the rest
            logger.warning("could not close the RabbitMQ connection of %s at exit; messages "
                           "published without confirms just before may be lost",
                           redact_url(transport.url), exc_info=True)


def _locked_writer(conn: Any, lock: Any) -> None:
    """Make every frame ``conn`` writes go through ``lock`` (py-amqp writes all frames through
    ``connection.frame_writer``: methods, content, heartbeats)."""
    inner = conn.frame_writer

    def write(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return inner(*args, **kwargs)

    conn.frame_writer = write


def read_frames(conn: Any) -> int:
    """One read of a plain socket that polled readable, without waiting: every whole frame in
    it goes to py-amqp's frame handler (``on_inbound_frame``, as its ``blocking_read`` hands
    them: deliveries, confirms, heartbeats, channel errors raised from there), and the start of
    a frame whose rest has not come yet stays in py-amqp's read buffer (``_read_buffer``), where
    the next call, or py-amqp's own read, carries on from it. Returns how many bytes came."""
    transport = conn.transport
    if transport is None:
        raise ConnectionLost("RabbitMQ connection closed")
    try:
        data = transport.sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        transport.connected = False
        raise
    if not data:
        transport.connected = False
        raise ConnectionLost("RabbitMQ closed the connection")
    pending = transport._read_buffer
    buf = pending + data if pending else data
    size, pos, starts, frames = len(buf), 0, [], []
    while size - pos >= 8:
        kind, channel, length = _FRAME_HEADER(buf, pos)
        end = pos + 7 + length
        if end >= size:
            break
        if buf[end] != 0xCE:
            transport.connected = False
            raise amqp_errors.UnexpectedFrame(
                f"Received frame_end {buf[end]:#04x} while expecting 0xce")
        starts.append(pos)
        frames.append((kind, channel, buf[pos + 7:end]))
        pos = end + 1
    transport._read_buffer = buf[pos:]
    handle = conn.on_inbound_frame
    for index, frame in enumerate(frames):
        try:
            handle(frame)
        except BaseException:
            # the frames after this one are read again by whoever reads next
            if index + 1 < len(frames):
                transport._read_buffer = buf[starts[index + 1]:]
            raise
    return len(data)


def _write_frames(conn: Any, frames: list[bytes]) -> None:
    """Write whole frames (built by wire.py) straight to the connection's socket, about
    ``_WRITE_SIZE`` at a time; the caller holds whatever lock its frames need."""
    transport = conn.transport
    if transport is None:
        raise ConnectionLost("RabbitMQ connection closed")
    start, size = 0, 0
    for end, frame in enumerate(frames, 1):
        size += len(frame)
        if size >= _WRITE_SIZE or end == len(frames):
            transport.write(b"".join(frames[start:end]) if end - start > 1 else frame)
            start, size = end, 0
    conn.bytes_sent += len(frames)


def _reply_text(exc: BaseException) -> str:
    text = getattr(exc, "reply_text", None)
    return str(text) if text else _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _lost(exc: BaseException) -> BaseException:
    """A transient error to raise for ``exc`` (itself when the callers already retry it)."""
    if isinstance(exc, AMQPTransport.transient_errors):
        return exc
    return ConnectionLost(f"RabbitMQ connection lost: {_one_line(exc)}")
