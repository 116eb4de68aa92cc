"""The Redis broker (``redis://``, ``rediss://``, unix sockets), laid out exactly as kombu does.

Layer: transport. Producers LPUSH kombu envelopes onto the queue's list (or its priority sub-list)
and keep the ``_kombu.binding.<queue>`` set, so Celery workers consume what we send. Every consumer
state change is one Lua script (``scripts.py``): a fetch moves due delayed messages into their
lists, restores expired leases, pops and records the in-flight entry in kombu's ``unacked`` hash
and ``unacked_index`` zset in one atomic step, so no crash window loses a message and a Celery
peer's restore sweep handles our deliveries (and ours handles theirs).

Waiting: celeriac producers PUBLISH on a per-queue wake channel after pushing; each transport has
one connection subscribed to them (PSUBSCRIBE), read by its waiting fetches themselves, one at a
time, so no thread hands a wake-up over. A fetch whose last look found its queues short and that
has counted no wake-up since goes straight to waiting. Messages pushed by Celery producers publish
nothing, so a waiting fetch also re-checks every ``polling_interval`` (default 0.05 s) and at the
next due time (delayed message or lease expiry) the fetch script reports.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import select
import socket
import threading
import time
from base64 import b64encode
from typing import Any, Callable, Iterator, Sequence, cast
from urllib.parse import parse_qsl, urlencode

import redis as redis_py

from ...protocol.entities import Queue, as_queue
from ...protocol.message import Message
from ...protocol.v2 import Likes, uuid4_text, uuid4_texts
from ...utils import redis_wire
from ...utils.forks import PidGuard
from ...utils.redis_wire import _hiredis
from ...utils.redis_wire import _pack_one as _pack_command
from ...utils.salt import process_salt
from ...utils.spin import AdaptiveSpin, look_until, spin_seconds
from ...utils.urls import redact_url
from ..base import DEFAULT_FETCH_SPIN, DeadLetter, Delivery, Outgoing, check_queue_names
from ..bindings import (
    Binding,
    FanoutFeed,
    binding_of,
    kombu_member,
    kombu_topic_matches,
    parse_kombu_member,
    route,
    route_outgoing,
)
from . import scripts
from .envelope import decode, decode_delivery, encode, list_name, priority_step, template
from .fanout import RedisBroadcastMixin

#: how many delayed messages and expired leases one fetch moves at most
RESTORE_LIMIT = 100
#: seconds between the fetches that also move due delayed messages and restore expired leases
#: (or sooner, once the due time a fetch reported has come): sweeping on every fetch would cost
#: the server more than the fetch itself
SWEEP_INTERVAL = 0.1
#: bytes of socket send buffer asked for the connection a group's batches go ahead on (a batch
#: of 500 envelopes is about 0.5 MB; the kernel caps it at net.core.wmem_max)
AHEAD_SEND_BUFFER = 4 << 20
#: seconds before a transport whose wake-ups were unavailable (no hiredis, PSUBSCRIBE refused)
#: tries to subscribe again
WAKER_RETRY = 60.0
_SHAS = {name: redis_wire.script_sha(getattr(scripts, name))
         for name in ("FETCH", "ACK", "REJECT", "DEFER", "EXTEND", "DEAD_LETTER", "SIZE")}
logger = logging.getLogger(__name__)
#: numbers fetches; with the process's random salt, a lease token no other fetch has
_FETCH_SERIAL = itertools.count(1)
#: redis-py client options a broker_transport_options dict may carry
_CLIENT_OPTIONS = ("socket_timeout", "socket_connect_timeout", "socket_keepalive",
                   "health_check_interval", "max_connections", "retry_on_timeout", "username",
                   "password", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class RedisTransport(RedisBroadcastMixin):
    """Queues on a Redis server, wire-compatible with Celery 5 / kombu.

    Options (``broker_transport_options``): ``visibility_timeout`` (lease, default 3600 s),
    ``polling_interval`` (fallback re-check while waiting, 0.05 s), ``global_keyprefix`` (prepended
    to every key and wake channel), ``sep`` (priority separator, ``"\\x06\\x16"``),
    ``priority_steps`` (``[0, 3, 6, 9]``), ``priority_order`` (``"low_first"``: a lower number is
    served first, as Celery on Redis does; ``"high_first"``: a higher one, as on the other
    celeriac brokers), ``queue_order_strategy`` (``"round_robin"``, or ``"sorted"``/``"priority"``
    to always serve queues in the order given), ``unacked_key``, ``unacked_index_key``,
    ``unacked_mutex_key``, ``busy_poll`` (seconds a round trip polls for its reply before it
    blocks, default 0.0002; 0 blocks at once) and redis-py client options
    (``socket_timeout``...). Others are ignored, each with one warning line
    (``transport.options``).

    A message of priority p goes to the list of the largest step <= p, as kombu puts it; within a
    step, oldest first. Celeriac-owned keys (all under the prefix): ``celeriac.deliveries`` (tag
    -> delivery count), ``celeriac.leases.<queue>`` (tag -> lease token, for fencing),
    ``celeriac.delayed.<queue>`` (envelope by due time), ``celeriac.dead_letter`` (+ ``.order``,
    ``.seq``).
    """

    #: errors a publish may be retried after (``task_publish_retry``): the server was unreachable
    transient_errors: tuple[type[BaseException], ...] = (redis_py.exceptions.ConnectionError,
                                                         redis_py.exceptions.TimeoutError)
    #: envelopes are JSON: a message that brings its headers' text (``Message.headers_json``)
    #: is not encoded again
    json_headers = True

    def __init__(self, url: str = "redis://localhost:6379/0", *, visibility_timeout: float = 3600.0,
                 polling_interval: float = 0.05, global_keyprefix: str = "", sep: str = "\x06\x16",
                 priority_steps: Sequence[int] = (0, 3, 6, 9), priority_order: str = "low_first",
                 queue_order_strategy: str = "round_robin", unacked_key: str = "unacked",
                 unacked_index_key: str = "unacked_index", unacked_mutex_key: str = "unacked_mutex",
                 delayed_publish: str = "queue",
                 busy_poll: float = redis_wire.DEFAULT_BUSY_POLL,
                 wait_spin: float = DEFAULT_FETCH_SPIN, **options: Any) -> None:
        if priority_order not in ("low_first", "high_first"):
            raise ValueError(f"priority_order must be 'low_first' or 'high_first', "
                             f"not {priority_order!r}")
        if delayed_publish not in ("queue", "delayed_set"):
            raise ValueError(f"delayed_publish must be 'queue' or 'delayed_set', "
                             f"not {delayed_publish!r}")
        #: "queue" (default): an ETA/countdown message is pushed onto its queue like any other,
        #: as Celery does, so Celery workers sharing the queue run it too (a celeriac worker that
        #: takes it early defers it to ``celeriac.delayed.<queue>`` until due). "delayed_set":
        #: hold it in that set from the start (celeriac-only fleets; nothing is fetched early).
        self.delayed_publish = delayed_publish
        #: how long a waiting fetch polls for a wake-up before it sleeps
        self._spin = AdaptiveSpin(spin_seconds(wait_spin, "wait_spin"))
        self.url = url
        self.visibility_timeout = float(visibility_timeout)
        self.polling_interval = float(polling_interval)
        self.prefix = global_keyprefix or ""
        self.sep = sep
        self.steps = tuple(sorted({0, *(min(max(int(s), 0), 9) for s in priority_steps)}))
        self.priority_order = priority_order
        self.round_robin = queue_order_strategy == "round_robin"
        self.unacked_key = self.prefix + unacked_key
        self.unacked_index_key = self.prefix + unacked_index_key
        self.unacked_mutex_key = self.prefix + unacked_mutex_key  # kombu's; our restore needs none
        self._client_options = {k: options[k] for k in _CLIENT_OPTIONS if k in options}
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._declared: set[str] = set()
        #: (queue, priority) -> the list a message goes to (``_list_of``)
        self._lists: dict[tuple[str, Any], str] = {}
        #: exchange -> type, from this process's declarations (Redis does not store types)
        self._exchange_types: dict[str, str] = {}
        self._feed = FanoutFeed()
        #: per thread: the group batch sent ahead whose replies are unread (``send_runs_ahead``)
        self._ahead = threading.local()
        #: per thread: the wake-up counts (``marks``) seen before its last lease, if that found
        #: its queues short (``_unchanged``)
        self._quiet = threading.local()
        #: while wake-ups are unavailable (``_waiter``): until when; 0.0 before the first refusal
        self._no_waker_until = 0.0
        self._forks = PidGuard()
        self._client = self._connect()
        redis_wire.set_busy_poll(self._client.connection_pool, busy_poll)
        self._keys = (self.unacked_key, self.unacked_index_key, self.prefix + "celeriac.deliveries")
        self._head = (self.prefix, self.sep, len(self.steps), *self.steps)
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._wake_base = f"{self.prefix}/{db}.celeriac.wake/"
        self._waker: _Waker | None = None
        #: counts ``close()`` calls: a fetch waiting when one comes returns instead of looking
        #: again (and reconnecting) until its deadline
        self._closes = 0
        self._next_sweep = 0.0  # monotonic time of the next sweeping fetch
        self._due_at: float | None = None  # wall time a fetch said something comes due

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisTransport:
        """``redis://[:password@]host:port/db``, ``rediss://`` (TLS, ``ssl_*`` options in the
        query or in ``broker_use_ssl``), ``unix:///path?db=N`` or kombu's
        ``redis+socket:///path``. ``?global_keyprefix=p:`` in the query works like the
        transport option (which wins)."""
        redis_wire.check_redis_url(url, "broker_url")
        base, _, query = url.partition("?")
        params = parse_qsl(query, keep_blank_values=True)
        prefix = [value for key, value in params if key == "global_keyprefix"]
        if prefix:
            options.setdefault("global_keyprefix", prefix[-1])
            rest = [(k, v) for k, v in params if k != "global_keyprefix"]
            url = base + (f"?{urlencode(rest)}" if rest else "")
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"<RedisTransport {redact_url(self.url)!r}>"

    # ---- connections --------------------------------------------------------------------------
    def _connect(self) -> redis_py.Redis:
        url = self.url
        if url.startswith("redis+socket://"):
            url = "unix://" + url[len("redis+socket://"):]
        return redis_py.Redis.from_url(url, **self._client_options)

    def _check_fork(self) -> None:
        """A forked child must not share the parent's sockets or listener thread."""
        if self._forks.forked():
            self._forks.adopt()
            self._lock = threading.Lock()
            self._client = self._connect()
            self._waker = None
            self._ahead = threading.local()  # the parent's connections are not ours
            self._quiet = threading.local()  # counted by the parent's wake-up connection

    def _wire(self) -> redis_wire.Wire:
        """This thread's raw connection, shared with a result store on the same database (so
        an ack can travel with the result write before it)."""
        self._check_fork()
        return redis_wire.wire_for(self._client.connection_pool)

    def _script(self, name: str, args: Sequence[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", _SHAS[name], 3, *self._keys, *self._head, *args)

    def _run(self, name: str, args: Sequence[Any]) -> Any:
        return self._wire().call_one(*self._script(name, args))

    def _list(self, queue: str, priority: Any) -> str:
        return self.prefix + list_name(queue, priority_step(priority, self.steps), self.sep)

    def _wake_channel(self, queue: str) -> str:
        return self._wake_base + queue

    # ---- producing ----------------------------------------------------------------------------
    def declare(self, queue: Queue | str) -> None:
        """Write kombu's binding member for ``queue`` in its exchange's binding set (what a
        Celery producer or worker declares; a topic binding carries kombu's pattern); Redis
        keeps no other queue properties. A fanout-bound queue is then fed from the exchange's
        ``PUBLISH`` channel at each fetch, as kombu consumes it."""
        self._check_fork()
        queue = as_queue(queue)
        binding = binding_of(queue) or Binding(queue.name, queue.name, "direct", queue.routing_key)
        self._client.sadd(f"{self.prefix}_kombu.binding.{binding.exchange}",
                          kombu_member(binding, self.sep))
        self._exchange_types[binding.exchange] = binding.exchange_type
        self._declared.add(queue.name)
        self._feed.declare(self, queue)

    def _route(self, items: Sequence[Outgoing]) -> list[Outgoing]:
        """``items`` with each routed one replaced by a copy per queue kombu's binding set of
        its exchange takes it to (read now, as a kombu producer does); fanout ones are
        PUBLISHed."""
        if not any(item.routed for item in items):
            return list(items)
        exchanges = list(dict.fromkeys(item.exchange for item in items if item.routed))
        client = self._client
        members = {exchange: cast(set[bytes], client.smembers(
            f"{self.prefix}_kombu.binding.{exchange}")) for exchange in exchanges}

        def queues(exchange: str, key: str, kind: str | None) -> list[str]:
            bindings = [b for b in (parse_kombu_member(m, exchange, kind, self.sep)
                                    for m in members[exchange]) if b is not None]
            return sorted(route(bindings, exchange, key, topic=kombu_topic_matches))

        return route_outgoing(
            items, exchange_type=self._exchange_types.get, queues=queues,
            fanout=lambda item: self.broadcast(item.exchange, item.message,
                                               item.routing_key or ""))

    def _binding(self, queue: str, routing_key: str | None = None) -> str:
        key = queue if routing_key is None else routing_key
        return f"{key}{self.sep}{self.sep}{queue}"

    def publish(self, items: Sequence[Outgoing]) -> None:
        """LPUSH every item, several in one MULTI/EXEC (with ``delayed_publish="delayed_set"``,
        items not yet due go to ``celeriac.delayed.<queue>`` instead); one message due now, to
        a queue already declared, takes a shorter path with the same commands."""
        if not items:
            return
        self._check_fork()
        if any(item.routed for item in items):
            items = self._route(items)
            if not items:
                return
        wire = redis_wire.wire_for(self._client.connection_pool)  # _wire(), checked just above
        if len(items) == 1 and items[0].not_before is None and items[0].queue in self._declared:
            self._publish_one(wire, items[0])  # a plain delay(): nothing to group or declare
            return
        self._push(wire, [(item, None) for item in items])

    def publish_runs(self, runs: Sequence[tuple[Outgoing, Likes | None]]) -> None:
        """``publish`` of each run's model item followed by the messages like it
        (``v2.Likes``: the same queue, options and embed, other ids and arguments), whose
        envelopes are spliced from the model's: the same text ``encode`` writes for each."""
        if not runs:
            return
        self._check_fork()
        if any(model.routed or model.not_before is not None for model, _ in runs):
            self.publish([item for model, likes in runs for item in _expand(model, likes)])
            return
        self._push(redis_wire.wire_for(self._client.connection_pool), runs)

    def _push(self, wire: redis_wire.Wire, runs: Sequence[tuple[Outgoing, Likes | None]]
              ) -> None:
        """The publish of ``runs`` (items, each with the messages like it), all or nothing,
        in their order: consecutive messages to one list go in one LPUSH."""
        writes, wakes, fresh = self._writes_of(runs)
        if len(writes) > 1:  # all or nothing: a retried publish must not duplicate half of it
            replies = wire.call(("MULTI",), *writes, ("EXEC",), *wakes)
        else:
            replies = wire.call(*writes, *wakes)
        _check_writes(replies, len(writes))
        self._declared.update(fresh)

    def _writes_of(self, runs: Sequence[tuple[Outgoing, Likes | None]]
                   ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
        """``_push``'s commands: ``(writes, wakes, queues declared by the writes)``."""
        now = time.time()
        writes: list[tuple[Any, ...]] = []
        fresh = list(dict.fromkeys(item.queue for item, _ in runs
                                   if item.queue not in self._declared and not item.exchange))
        for queue in fresh:
            writes.append(("SADD", f"{self.prefix}_kombu.binding.{queue}", self._binding(queue)))
        woken: dict[str, None] = {}
        count = sum(1 + (len(likes) if likes is not None else 0) for _, likes in runs)
        tags = iter(uuid4_texts(count))
        run_key = ""
        run: list[str] = []
        for item, likes in runs:
            envelope = self._envelope(item, next(tags))
            if (self.delayed_publish == "delayed_set" and item.not_before is not None
                    and item.not_before > now):
                writes.append(("ZADD", f"{self.prefix}celeriac.delayed.{item.queue}",
                               repr(item.not_before), envelope))
                continue
            key = self._list_of(item)
            if key != run_key and run:
                writes.append(("LPUSH", run_key, *run))
                run = []
            run_key = key
            run.append(envelope)
            woken[item.queue] = None
            if likes:
                run.extend(_spliced(item, likes, tags))
        if run:
            writes.append(("LPUSH", run_key, *run))
        return writes, [self._wake_command(queue) for queue in woken], fresh

    # ---- a group's batches: each one's reply read while the next is built --------------------
    def send_runs_ahead(self, runs: Sequence[tuple[Outgoing, Likes | None]]) -> None:
        """``publish_runs`` of a batch with more to follow: its commands go out now, on this
        thread's own connection, and their replies are read by the next call (once that batch
        is built, so Redis stores one batch while the next is made) or by ``settle_ahead``;
        an error in them is raised there. Until then the batch is kept: a connection lost
        before its replies were read sends it again (at least once, as any publish retried
        after a lost reply)."""
        self._check_fork()
        if not runs or any(model.routed or model.not_before is not None for model, _ in runs):
            self.settle_ahead()
            self.publish_runs(runs)
            return
        writes, wakes, fresh = self._writes_of(runs)
        commands = ([("MULTI",), *writes, ("EXEC",), *wakes] if len(writes) > 1
                    else [*writes, *wakes])
        batch = _AheadBatch(redis_wire.pack_commands(commands), len(commands), len(writes),
                            fresh)
        self.settle_ahead()  # the batch before, stored while this one was built
        ahead = self._ahead_state()
        try:
            self._send_ahead(ahead, batch)
        except BaseException:
            self._close_ahead(ahead)  # not sent: the retried call builds it again
            raise
        ahead.batch = batch

    def settle_ahead(self) -> None:
        """Read the replies of the batch ``send_runs_ahead`` left in flight in this thread
        (sending it again first if its connection was lost); raise an error among them."""
        ahead = self._ahead_state()
        batch = ahead.batch
        if batch is None:
            return
        try:
            if ahead.conn is None:  # lost after the batch was sent: once more, in full
                self._send_ahead(ahead, batch)
            replies = _read_replies(ahead.conn, batch.replies)
        except BaseException:
            self._close_ahead(ahead)  # the stream may be half read
            raise
        ahead.batch = None
        _check_writes(replies, batch.writes)
        self._declared.update(batch.fresh)

    def drop_ahead(self) -> None:
        """Forget this thread's batch in flight, unread (its publish has failed or given up:
        it must not be sent again later)."""
        ahead = self._ahead_state()
        ahead.batch = None
        self._close_ahead(ahead)

    def _ahead_state(self) -> "_Ahead":
        self._check_fork()
        local = self._ahead
        state = getattr(local, "state", None)
        if state is None:
            state = local.state = _Ahead()
        return state

    def _send_ahead(self, ahead: "_Ahead", batch: "_AheadBatch") -> None:
        conn = ahead.conn
        if conn is None:
            conn = ahead.conn = redis_wire.connector(self._client.connection_pool)()
            sock = getattr(conn, "_sock", None)  # redis-py keeps the socket there
            if sock is not None:
                try:  # room for a whole batch: the send returns while Redis reads it
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, AHEAD_SEND_BUFFER)
                except OSError:
                    pass
        conn.send_packed_command([batch.packed], check_health=False)

    @staticmethod
    def _close_ahead(ahead: "_Ahead") -> None:
        conn, ahead.conn = ahead.conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001 - closing a broken socket must not raise
                pass

    def _publish_one(self, wire: redis_wire.Wire, item: Outgoing) -> None:
        pushed = wire.call(("LPUSH", self._list_of(item), self._envelope(item)),
                           self._wake_command(item.queue))[0]
        if isinstance(pushed, Exception):
            raise pushed

    def sender_like(self, model: Outgoing) -> Callable[[str, str, str, bytes], None] | None:
        """``send(task_id, tag, headers, body)``: ``publish`` of one message like ``model``'s (a
        task message published already, due now) with its own id, delivery tag (a fresh uuid),
        headers JSON text and body (``v2.Likes.one``), the envelope and the commands spliced
        from the model's. None for a model whose envelope is not made from a template, or that
        goes through an exchange."""
        if model.routed or model.not_before is not None or model.queue not in self._declared:
            return None
        pieces = template(model.message, model.queue, model.exchange,
                          model.queue if model.routing_key is None else model.routing_key)
        if pieces is None:
            return None
        return _SenderLike(self, self._list_of(model), self._wake_command(model.queue), pieces)

    @staticmethod
    def _envelope(item: Outgoing, tag: str | None = None) -> str:
        return encode(item.message, item.queue, tag or uuid4_text(), exchange=item.exchange,
                      routing_key=item.routing_key)

    def _list_of(self, item: Outgoing) -> str:
        priority = item.message.properties.get("priority")
        try:
            return self._lists[item.queue, priority]
        except KeyError:
            pass
        except TypeError:  # an unhashable priority (kombu's clamp makes 0 of it)
            return self._list(item.queue, priority)
        if len(self._lists) >= 1024:
            self._lists.clear()
        name = self._lists[item.queue, priority] = self._list(item.queue, priority)
        return name

    def _wake_command(self, queue: str) -> tuple[Any, ...]:
        """The PUBLISH that wakes celeriac workers waiting on ``queue`` at once."""
        return ("PUBLISH", self._wake_channel(queue), "")

    # ---- consuming ----------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_n: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_n`` messages in one script call, waiting up to ``timeout`` seconds."""
        order = self._order(queues, max_n)
        deadline = time.monotonic() + max(timeout, 0.0)
        waiting = timeout > 0
        closes = self._closes
        waker = self._waiter() if waiting else None
        fed = self._feed.active(order)
        first = waker is not None
        leased: list[Delivery]
        spin_until, began = self._spin.begin() if waker is not None else (0.0, 0.0)
        while True:
            if fed:
                self._feed.drain(self, order)
            seen = waker.mark(order) if waker else None
            if first and self._unchanged(order, seen):
                leased, due = [], self._due_at  # straight to waiting: a look finds nothing new
            else:
                leased, due = self._lease(order, max_n)
                if seen is not None:
                    self._quiet.marks = dict(zip(order, seen)) if len(leased) < max_n else None
            first = False
            remaining = deadline - time.monotonic()
            if leased or remaining <= 0 or not waiting:
                if waker is not None:
                    self._spin.end(began)
                return leased
            pause = min(remaining, self.polling_interval)
            if due is not None:
                pause = min(pause, max(due - time.time(), 0.0005))
            if waker is None or not waker.alive:  # no wake-ups (or their connection was
                time.sleep(pause)                    # lost): look again after the pause
            else:
                waker.wait(order, seen, pause, spin_until)
            if self._closes != closes:  # closed while it waited
                if waker is not None:
                    self._spin.end(began)
                return []

    def _unchanged(self, order: list[str], seen: tuple[int, ...] | None) -> bool:
        """Whether this thread's last lease found ``order``'s queues short, no wake-up for them
        has come since it looked, and nothing comes due or needs a sweep: another look now would
        find nothing (a message pushed without a wake-up, as Celery's producers push, is found
        by the look after the wait, as ever)."""
        marks = getattr(self._quiet, "marks", None)
        if marks is None or seen is None or any(
                marks.get(queue) != count for queue, count in zip(order, seen)):
            return False
        due = self._due_at
        return time.monotonic() < self._next_sweep and (due is None or time.time() < due)

    def fetch_later(self, queues: Sequence[str], max_n: int,
                    handler: Callable[[list[Delivery]], None]) -> None:
        """Lease up to ``max_n`` messages with this thread's next round trip (no waiting):
        ``handler(deliveries)`` gets them once it is over. If that round trip fails, the handler
        is not called; messages the script may have leased all the same come back when their
        lease expires (``visibility_timeout``), as after a lost reply to ``fetch``."""
        order = self._order(queues, max_n)
        command, token = self._fetch_command(order, max_n)
        self._wire().defer_read(command, lambda reply: handler(
            [] if isinstance(reply, Exception) else self._deliveries(order, token, reply)[0]))

    def _order(self, queues: Sequence[str], max_n: int) -> list[str]:
        check_queue_names(queues)
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n!r}")
        start = next(self._turn) % len(queues) if self.round_robin else 0
        return list(dict.fromkeys([*queues[start:], *queues[:start]]))

    def _fetch_command(self, order: list[str], max_n: int) -> tuple[tuple[Any, ...], str]:
        token = f"{process_salt()}{next(_FETCH_SERIAL):x}"  # unique per fetch, fleet-wide
        high = "high" if self.priority_order == "high_first" else "low"
        now, clock = time.time(), time.monotonic()
        due = self._due_at
        sweep = clock >= self._next_sweep or (due is not None and now >= due)
        if sweep:
            self._next_sweep, self._due_at = clock + SWEEP_INTERVAL, None
        return self._script("FETCH", (high, repr(now), self.visibility_timeout, max_n, token,
                                      RESTORE_LIMIT if sweep else 0, len(order), *order)), token

    def _lease(self, order: list[str], max_n: int) -> tuple[list[Delivery], float | None]:
        command, token = self._fetch_command(order, max_n)
        return self._deliveries(order, token, self._wire().call_one(*command))

    def _deliveries(self, order: list[str], token: str,
                    reply: list[Any]) -> tuple[list[Delivery], float | None]:
        hint = float(reply[0]) if reply[0] else None
        if hint is not None:
            self._due_at = hint if self._due_at is None else min(self._due_at, hint)
        deliveries = []
        for i in range(1, len(reply), 4):
            queue = order[int(reply[i]) - 1]
            message, flagged, exchange, routing_key = decode_delivery(reply[i + 1])
            count = int(reply[i + 2])
            tag = reply[i + 3].decode()
            deliveries.append(Delivery(message, queue, (tag, token), count, flagged or count > 1,
                                       {"delivery_tag": tag}, exchange, routing_key))
        return deliveries, hint

    def _waiter(self) -> _Waker | None:
        """The wake-up counter waiting fetches share; None while wake-ups are unavailable
        (looked at again every ``WAKER_RETRY`` seconds): they poll instead."""
        self._check_fork()
        with self._lock:
            if self._waker is None or not self._waker.alive:
                if time.monotonic() < self._no_waker_until:
                    return None
                try:
                    self._waker = _Waker(redis_wire.connector(self._client.connection_pool,
                                                              socket_timeout=None),
                                         self._wake_base)
                except WakeUpsUnavailable as exc:
                    if not self._no_waker_until:
                        logger.warning("Redis wake-ups are unavailable (%s): waiting fetches "
                                       "look every %s s instead", exc, self.polling_interval)
                    self._no_waker_until = time.monotonic() + WAKER_RETRY
                    return None
            return self._waker

    @staticmethod
    def _triples(deliveries: Sequence[Delivery]) -> list[str]:
        return [part for d in deliveries for part in (*d.receipt, d.queue)]

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Drop each message if this holder still leases it; False where the lease was lost."""
        if not deliveries:
            return []
        reply = self._run("ACK", (len(deliveries), *self._triples(deliveries)))
        return [bool(flag) for flag in reply]

    def shares_connection_with(self, backend: Any) -> bool:
        """Whether ``backend`` reaches Redis through this transport's connection in each thread
        (same server, database and options): then a result write and the ack after it go out
        in one round trip, in that order (see worker/consumer.py)."""
        return (isinstance(backend, redis_wire.OnRedis)
                and redis_wire.same_wire(self._client.connection_pool, backend.redis_pool()))

    def flush(self) -> None:
        """Send what this thread queued with ``ack_later`` (and deferred result writes)."""
        redis_wire.flush_thread()

    def ack_later(self, deliveries: Sequence[Delivery],
                  on_reply: Callable[[list[bool] | None], None] | None = None) -> None:
        """Queue the ack on this thread's wire: it goes out with the thread's next round trip.
        ``on_reply`` gets what ``ack`` would return, or None if the round trip failed (the ack
        is then not sent again); without it, a failed round trip sends it again later."""
        if not deliveries:
            return
        command = self._script("ACK", (len(deliveries), *self._triples(deliveries)))
        if on_reply is None:
            self._wire().defer(command)
        else:
            self._wire().defer_read(command, lambda reply: on_reply(
                None if isinstance(reply, Exception) else [bool(flag) for flag in reply]))

    def ack_with_writes_later(self, deliveries: Sequence[Delivery],
                              stage_writes: Callable[[], None]) -> None:
        """``ack_later`` in one MULTI/EXEC with the writes ``stage_writes()`` queues on this
        thread's wire: a write the server refuses as the transaction is queued (out of memory, a
        read-only replica) discards the ack with it, so those messages are delivered again when
        their leases end instead of being acked without their results. An ack that could not
        run inside the transaction (its script not loaded yet) is sent again on its own: the
        writes are stored by then."""
        batch = list(deliveries)
        if not batch:
            stage_writes()
            return
        wire = self._wire()
        wire.defer(("MULTI",))
        stage_writes()
        wire.defer(self._script("ACK", (len(batch), *self._triples(batch))))

        def executed(reply: Any) -> None:
            if isinstance(reply, list):
                if reply and isinstance(reply[-1], Exception):
                    self.ack_later(batch)
                return
            logger.error("Redis refused the writes that came with the ack of %d message(s) "
                         "(%s): they are delivered again when their leases end", len(batch),
                         reply)

        wire.defer_read(("EXEC",), executed, retain=True)

    def reject(self, delivery: Delivery, requeue: bool) -> bool:
        """``requeue``: back to the consuming end with kombu's redelivered flags; else dropped."""
        return bool(self._run("REJECT", (*self._triples([delivery]), "1" if requeue else "0",
                                         self._wake_channel(delivery.queue))))

    def extend_lease(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> None:
        """Move the ``unacked_index`` score so the lease ends ``seconds`` from now (fenced).

        The score stays "delivery time" as kombu reads it: now + seconds - visibility_timeout.
        """
        if not deliveries:
            return
        length = self.visibility_timeout if seconds is None else float(seconds)
        score = repr(time.time() + length - self.visibility_timeout)
        self._run("EXTEND", (len(deliveries), score, *self._triples(deliveries)))

    def defer(self, delivery: Delivery, not_before: float) -> bool:
        """Give the lease up and hold the message in the delayed set until ``not_before``."""
        return bool(self._run("DEFER", (*self._triples([delivery]), repr(float(not_before)),
                                        repr(time.time()), self._wake_channel(delivery.queue))))

    # ---- dead letters -------------------------------------------------------------------------
    def dead_letter(self, queue: str, message: Message, reason: str,
                    delivery: Delivery | None = None) -> str:
        """Keep the envelope with ``reason``; with ``delivery``, settle its lease in the same
        step."""
        record = json.dumps({"queue": queue, "reason": reason, "created_at": time.time(),
                             "envelope": encode(message, queue, "", lenient=True)})
        args: list[Any] = [record]
        if delivery is not None:
            args += self._triples([delivery])
        reply = self._run("DEAD_LETTER", args)
        return reply.decode() if isinstance(reply, bytes) else str(reply or "")

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        self._check_fork()
        # the stubs allow str replies (decode_responses=True); this client's are bytes
        ids = cast(list[bytes],
                   self._client.zrange(self.prefix + "celeriac.dead_letter.order", 0, limit - 1))
        if not ids:
            return []
        records = cast(list[bytes | None],
                       self._client.hmget(self.prefix + "celeriac.dead_letter", ids))
        return [_dead_letter(i.decode(), r) for i, r in zip(ids, records) if r is not None]

    def dead_letter_get(self, dead_letter_id: str) -> DeadLetter | None:
        self._check_fork()
        record = cast(bytes | None,  # bytes: the client does not decode replies
                      self._client.hget(self.prefix + "celeriac.dead_letter", str(dead_letter_id)))
        return _dead_letter(str(dead_letter_id), record) if record is not None else None

    def dead_letter_delete(self, dead_letter_ids: Sequence[str] | None = None) -> int:
        self._check_fork()
        store = self.prefix + "celeriac.dead_letter"
        order = self.prefix + "celeriac.dead_letter.order"
        pipe = self._client.pipeline(transaction=True)
        if dead_letter_ids is None:
            pipe.hlen(store)
            pipe.delete(store, order)
            return int(pipe.execute()[0])
        ids = list(dict.fromkeys(str(i) for i in dead_letter_ids))
        if not ids:
            return 0
        pipe.hdel(store, *ids)
        pipe.zrem(order, *ids)
        return int(pipe.execute()[0])

    # ---- admin --------------------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        """Drop the ready and delayed messages of ``queue`` (leased ones stay)."""
        return int(self._run("SIZE", (queue, "1")))

    def qsize(self, queue: str) -> int:
        """Ready, delayed and leased messages of ``queue``."""
        return int(self._run("SIZE", (queue, "0")))

    def close(self) -> None:
        """Stop the listener and disconnect; the transport reconnects lazily if used again."""
        self._closes += 1
        if not self._forks.forked():
            self._feed.close()
        with self._lock:
            waker, self._waker = self._waker, None
        if waker is not None and not self._forks.forked():
            waker.stop()
        if not self._forks.forked():
            state = getattr(self._ahead, "state", None)
            if state is not None:  # this thread's; another's goes with its thread
                state.batch = None
                self._close_ahead(state)
            self._client.connection_pool.disconnect()


class WakeUpsUnavailable(Exception):
    """The wake-up channels cannot be read here (no hiredis, or PSUBSCRIBE refused): waiting
    fetches poll every ``polling_interval`` instead."""


class _Waker:
    """Counts wake-up messages per queue, read from a subscribed connection by the waiting
    fetches themselves: one at a time reads the socket while the others wait for what it counts,
    so a wake-up reaches a fetch without a listener thread to wake and hand over to first."""

    def __init__(self, connect: Callable[[], Any], base: str) -> None:
        self._prefix = base.encode()
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._reading = False  # a thread reads the socket (one at a time, the others wait)
        self.alive = True
        if _hiredis is None:  # redis-py's parser buffers replies where poll() cannot see them
            raise WakeUpsUnavailable("the hiredis package is not installed")
        self._reader = _hiredis.Reader()
        self._conn = connect()
        self._sock = self._conn._sock  # redis-py keeps the socket there
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._buffer = bytearray(4096)
        self._subscribed = False
        try:
            pattern = re.sub(r"([\\*?\[\]])", r"\\\1", base) + "*"
            self._conn.send_packed_command([_pack_command(("PSUBSCRIBE", pattern))],
                                           check_health=False)
            deadline = time.monotonic() + 5.0
            while not self._subscribed:  # wake-ups published from now on reach this socket
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise redis_py.exceptions.TimeoutError("no reply to PSUBSCRIBE")
                self._take(remaining)
        except BaseException:
            self._disconnect()
            raise

    def _take(self, timeout: float, spin_until: float = 0.0) -> None:
        """Read what reaches the socket within ``timeout`` seconds, counting each wake-up;
        polling for it until ``spin_until`` (a ``time.perf_counter`` time) before sleeping."""
        sock = self._sock
        pending = getattr(sock, "pending", None)  # TLS: records already read and decrypted
        if spin_until:  # (never past the wait's own end)
            spin_until = min(spin_until, time.perf_counter() + timeout)
        if not (pending is not None and pending()) and \
                not (spin_until and look_until(self._look, spin_until)) and \
                not self._poller.poll(math.ceil(timeout * 1000)):
            return
        size = sock.recv_into(self._buffer)
        if not size:
            raise redis_py.exceptions.ConnectionError("Connection closed by server.")
        self._reader.feed(self._buffer, 0, size)
        replies = []
        while (reply := self._reader.gets()) is not False:
            replies.append(reply)
        woken = []
        for reply in replies:
            if isinstance(reply, Exception) and not self._subscribed:
                # e.g. NOPERM: an ACL user without access to the wake-up channels
                raise WakeUpsUnavailable(f"PSUBSCRIBE refused: {reply}")
            if not isinstance(reply, list) or not reply:
                continue
            if reply[0] == b"pmessage" and len(reply) == 4:
                woken.append(reply[2][len(self._prefix):].decode("utf-8", "replace"))
            elif reply[0] == b"psubscribe":
                self._subscribed = True
        if woken:
            with self._cond:
                counts = self._counts
                for queue in woken:
                    counts[queue] = counts.get(queue, 0) + 1
                self._cond.notify_all()

    def _look(self) -> bool:
        return bool(self._poller.poll(0))

    def _read(self, timeout: float, spin_until: float = 0.0) -> None:
        """Hold ``_cond``: read the socket for up to ``timeout`` seconds, unless another thread
        is reading it (then wait for what it counts)."""
        if self._reading:
            self._cond.wait(timeout)
            return
        self._reading = True
        self._cond.release()
        try:
            self._take(timeout, spin_until)
        except Exception as exc:  # noqa: BLE001 - broker gone: waiting fetches fall back to polling
            logger.debug("Redis wake-up connection lost: %r", exc)
            self.alive = False
            self._disconnect()
        finally:
            self._cond.acquire()
            self._reading = False
            if not self.alive:  # stopped while this thread read: ``stop`` left the closing here
                self._disconnect()
            self._cond.notify_all()

    def mark(self, queues: Sequence[str]) -> tuple[int, ...]:
        with self._cond:
            if self.alive and not self._reading:
                self._read(0.0)  # what has arrived counts as seen
            return tuple(self._counts.get(q, 0) for q in queues)

    def wait(self, queues: Sequence[str], seen: tuple[int, ...] | None, timeout: float,
             spin_until: float = 0.0) -> None:
        """Until a wake-up for ``queues`` comes after the counts ``seen``, or ``timeout``
        seconds; polling the socket until ``spin_until`` before sleeping on it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.alive and tuple(self._counts.get(q, 0) for q in queues) == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._read(remaining, spin_until)

    def stop(self) -> None:
        """Disconnect; a thread reading the socket stops at once."""
        self.alive = False
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread waiting on it
        except OSError:
            pass
        with self._cond:
            if not self._reading:
                self._disconnect()
            self._cond.notify_all()

    def _disconnect(self) -> None:
        try:
            self._conn.disconnect()
        except Exception:  # noqa: BLE001 - closing a broken socket must not raise
            pass


def _dead_letter(dead_id: str, record: bytes) -> DeadLetter:
    doc = json.loads(record)
    message, _ = decode(doc["envelope"])
    return DeadLetter(dead_id, doc["queue"], doc["reason"], message, float(doc["created_at"]))


class _SenderLike:
    """``RedisTransport.sender_like``'s function: the LPUSH of one envelope and its wake-up,
    packed but for the envelope, whose text is the template's with four values put in."""

    __slots__ = ("transport", "head", "wake", "pieces", "b64")

    def __init__(self, transport: RedisTransport, key: str, wake: tuple[Any, ...],
                 pieces: tuple[str, ...]) -> None:
        self.transport = transport
        name = key.encode("utf-8")
        #: what ``_pack_command(("LPUSH", key, envelope))`` writes before the envelope's length
        self.head = b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n" % (len(name), name)
        self.wake = _pack_command(wake)
        self.pieces = pieces
        #: the last body and its base64 text, in one tuple (threads share a sender)
        self.b64: tuple[bytes, str] = (b"", "")

    def __call__(self, task_id: str, tag: str, headers: str, body: bytes) -> None:
        transport = self.transport
        transport._check_fork()
        wire = redis_wire.wire_for(transport._client.connection_pool)
        b64 = self.b64
        if b64[0] is not body:  # calls without arguments share one body
            b64 = self.b64 = (body, b64encode(body).decode("ascii"))
        e0, e1, e2, e3, e4 = self.pieces
        # what ``encode`` writes; JSON text is ASCII (``ensure_ascii``): as many bytes as chars
        envelope = (f'{e0}"{b64[1]}"{e1}{headers}{e2}"{task_id}"{e3}"{tag}"{e4}'
                    .encode("ascii"))
        pushed = wire.call_packed(b"%s$%d\r\n%s\r\n%s" % (self.head, len(envelope), envelope,
                                                          self.wake), 2)[0]
        if isinstance(pushed, Exception):
            raise pushed


def _expand(model: Outgoing, likes: Likes | None) -> list[Outgoing]:
    """``model`` and an ``Outgoing`` for each message like it."""
    if not likes:
        return [model]
    return [model, *(Outgoing(model.queue, message, None, model.exchange, model.routing_key,
                              model.exchange_type) for message in likes.messages())]


class _AheadBatch:
    """A batch ``send_runs_ahead`` sent: its bytes, how many replies it gets, how many of its
    commands are writes (before the wake-ups), and the queues its writes declare."""

    __slots__ = ("packed", "replies", "writes", "fresh")

    def __init__(self, packed: bytes, replies: int, writes: int, fresh: list[str]) -> None:
        self.packed, self.replies, self.writes, self.fresh = packed, replies, writes, fresh


class _Ahead:
    """One thread's connection for batches sent ahead, and the batch in flight on it."""

    __slots__ = ("conn", "batch")

    def __init__(self) -> None:
        self.conn: Any = None
        self.batch: _AheadBatch | None = None


def _read_replies(conn: Any, count: int) -> list[Any]:
    """``count`` replies from a redis-py connection, an error reply returned, not raised."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis_py.ResponseError as exc:
            replies.append(exc)
    return replies


def _check_writes(replies: list[Any], writes: int) -> None:
    """Raise the first error among the replies to ``writes`` write commands (wrapped in
    MULTI/EXEC when more than one), sent before their wake-ups."""
    outcome = replies[writes + 1] if writes > 1 else replies[:writes]
    for reply in outcome if isinstance(outcome, list) else [outcome]:
        if isinstance(reply, Exception):
            raise reply


def _spliced(model: Outgoing, likes: Likes, tags: Iterator[str]) -> list[str]:
    """The envelopes of the messages like ``model``'s, each with the next delivery tag."""
    message = model.message
    pieces = template(message, model.queue, model.exchange,
                      model.queue if model.routing_key is None else model.routing_key)
    if pieces is None:
        return [encode(other, model.queue, next(tags), exchange=model.exchange,
                       routing_key=model.routing_key) for other in likes.messages()]
    e0, e1, e2, e3, e4 = pieces
    out: list[str] = []
    append = out.append
    body_of: bytes | None = None
    b64 = ""
    for (quoted, headers, body), tag in zip(likes.parts(), tags):
        if body is not body_of:  # calls without arguments share one body
            body_of, b64 = body, b64encode(body).decode("ascii")
        append(f'{e0}"{b64}"{e1}{headers}{e2}{quoted}{e3}"{tag}"{e4}')
    return out
