"""The ``rpc://`` result backend: every state of a task is a message sent back to the client that
sent the task, in Celery's rpc format; nothing is stored for any other reader.

Layer: backends. What goes over the wire (checked against a Celery 5.7 worker and client on
RabbitMQ 3.10, see tests/contract/test_rpc_backend.py):

- The client's reply queue is named by its oid (``app.oid``, which frozen workflow signatures
  also carry): durable, auto-delete, not exclusive, ``x-expires`` = ``result_expires`` in
  milliseconds (86400000 by default), no binding but the default exchange's. The client declares
  it before the first task that names it is sent.
- Task messages carry ``reply_to=<oid>`` and ``correlation_id=<task id>``.
- A worker publishes each state of the task (STARTED when tracked, RETRY, custom states from
  ``update_state``, SUCCESS, FAILURE, REVOKED) to the default exchange ``""`` with routing key
  ``reply_to``; properties ``content_type``/``content_encoding`` of ``result_serializer``,
  headers ``{}``, ``delivery_mode`` 1 (2 with ``result_persistent``), ``priority`` 0,
  ``correlation_id`` = the task id; the body is the meta document (backends/meta.py). A message
  with an empty ``reply_to`` gets no reply, and nothing is declared on the worker's side: a
  reply to a queue that is gone is dropped by the broker.
- The client consumes its queue (no acks) on a connection of its own, run by a listener thread
  started at the first read, and keeps the latest state of each task in memory (bounded).

So results are not persistent (``persistent = False``): only the process that sent a task sees
its result, ``AsyncResult(id)`` in another process stays PENDING, a result read once is not in
the broker any more, and revokes, chords and saved groups, which need a store, are not available
(``NotImplementedError``, as on Celery).

The connection settings come from ``broker_url`` (``amqp://user:password@host:port/vhost``,
``amqps://``) and ``broker_use_ssl``, read by ``utils.amqp_url`` as the amqp:// transport reads
them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .. import states
from ..exceptions import ContentDisallowed, DecodeError, ImproperlyConfigured, OperationalError
from ..protocol import serialization
from ..utils.amqp_url import SCHEMES, parse_url
from ..utils.amqp_url import close_quietly as _close_quietly
from ..utils.amqp_url import connection_params as amqp_connection_params
from ..utils.extras import require
from ..utils.forks import PidGuard
from ..utils.urls import redact_url
from . import meta as metamod
from .base import TASK_KEY_PREFIX, ChordPart, ResultBackend, ResultWrite

_amqp: ModuleType = require("amqp", "amqp", "the rpc:// result backend")

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the one line a chord (or a group chained with a task, which is one) gets at apply time
E_NO_CHORDS = ("the rpc:// result backend does not support chords (a group chained with a task "
               "is a chord too): use a result backend that stores results, such as redis:// or "
               "sqlite://")
E_NO_GROUPS = ("the rpc:// result backend does not store groups (GroupResult.save/restore): use "
               "a result backend that stores results, such as redis:// or sqlite://")
E_NO_STORE = ("the rpc:// result backend keeps no stored values ({what}): results only travel "
              "to the client that sent the task")

AMQP_SCHEMES = SCHEMES
#: ``type`` of the marker a client sends to its own reply queue to know it has read it all
SYNC_TYPE = "celeriac.rpc.sync"
#: states of tasks kept in memory per client; the oldest go first
CACHE_LIMIT = 50_000
#: pauses between the attempts of a publish or declare that hit a connection error
_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0)
#: the longest a read waits for its marker to come back before answering from what it has
_SYNC_WAIT = 5.0
#: how often the listener thread wakes to look for close()
_DRAIN_TICK = 1.0
#: forked children's inherited connections: never used there, only kept referenced
_INHERITED: list[Any] = []


# ---- connection settings ---------------------------------------------------------------------
def connection_params(broker_url: str, use_ssl: Any = None, connect_timeout: float | None = None,
                      login_method: str | None = None) -> dict[str, Any]:
    """py-amqp ``Connection`` arguments for a broker URL, read as the amqp:// transport reads it
    (``amqp://user:password@host:port/vhost?connect_timeout=&login_method=&ssl=1``; the first of
    ``;``-separated failover URLs). ``use_ssl`` is Celery's ``broker_use_ssl``: True, or a dict of
    ssl options (``ca_certs``, ``certfile``, ``keyfile``, ``cert_reqs``, ...); ``amqps://`` means
    TLS too. No heartbeat is negotiated: TCP keepalive finds dead peers."""
    url = broker_url.split(";", 1)[0].strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in AMQP_SCHEMES:
        raise ImproperlyConfigured(
            "the rpc:// result backend sends results through the broker, which must be "
            f"RabbitMQ (amqp://...): broker_url is {redact_url(url) if url else 'not set'!r}")
    try:
        return amqp_connection_params(parse_url(url), ssl=use_ssl,
                                      connect_timeout=connect_timeout,
                                      login_method=login_method)
    except ValueError as exc:
        raise ImproperlyConfigured(f"broker_url {redact_url(url)!r}: {exc}") from None


def queue_arguments(expires: float | None) -> dict[str, Any]:
    """The reply queue's arguments: ``x-expires`` in whole milliseconds, as Celery declares it."""
    return {"x-expires": int(expires * 1000)} if expires else {}


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        OSError, *_amqp.Connection.recoverable_connection_errors)
    return errors


# ---- what a worker sends ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReplyWrite(ResultWrite):
    """A result made ready to send: ``key`` is the routing key (the request's ``reply_to``;
    empty when the sender wants no reply)."""

    correlation_id: str = ""


def destination_for(task_id: str, request: Any) -> tuple[str, str]:
    """``(reply_to, correlation_id)`` of a request: where its states go, and the id they carry."""
    reply_to = getattr(request, "reply_to", None) or ""
    correlation_id = getattr(request, "correlation_id", None) or task_id
    return str(reply_to), str(correlation_id)


def reply_properties(content_type: str, content_encoding: str, correlation_id: str,
                     durable: bool) -> dict[str, Any]:
    """The AMQP properties of a reply, as Celery's worker sends them."""
    return {"content_type": content_type, "content_encoding": content_encoding,
            "application_headers": {}, "delivery_mode": 2 if durable else 1, "priority": 0,
            "correlation_id": correlation_id}


def meta_from_reply(body: bytes, properties: Mapping[str, Any],
                    accept: frozenset[str] | None) -> tuple[str, dict[str, Any]] | None:
    """``(task id, meta)`` of a reply message; a reply whose content is refused or unreadable
    becomes a FAILURE carrying that error (the caller would otherwise wait forever); None for a
    message that names no task."""
    task_id = properties.get("correlation_id") or ""
    content_type = properties.get("content_type") or ""
    try:
        meta = serialization.loads(body, content_type,
                                   properties.get("content_encoding") or "utf-8", accept=accept)
    except (ContentDisallowed, DecodeError) as exc:
        if not task_id:
            return None
        return task_id, metamod.build_meta(task_id, states.FAILURE,
                                           metamod.exception_to_dict(exc))
    if not isinstance(meta, dict) or not isinstance(meta.get("status"), str):
        if not task_id:
            return None
        error = DecodeError(f"the rpc:// reply for task {task_id} is not a result document")
        return task_id, metamod.build_meta(task_id, states.FAILURE,
                                           metamod.exception_to_dict(error))
    task_id = task_id or meta.get("task_id") or ""
    return (task_id, meta) if task_id else None


class StateCache:
    """The latest state of each task, newest last, bounded (the oldest go first). A ready state is
    never replaced by a state that is not (a late STARTED or RETRY after the end is stale). The
    state of a task someone waits for (``wanted``) is never evicted: a ``wait_for`` without a
    timeout would otherwise wait for ever for a state that came and went (the cache may then
    hold more than ``limit`` while those waits last)."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self.seq = 0
        self._entries: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._wanted: Counter[str] = Counter()

    def want(self, task_ids: Iterable[str]) -> None:
        """Someone waits for these tasks: keep their states until ``unwant``."""
        self._wanted.update(task_ids)

    def unwant(self, task_ids: Iterable[str]) -> None:
        self._wanted.subtract(task_ids)
        self._wanted += Counter()  # drops the counts down to zero
        self._evict()

    def _evict(self) -> None:
        excess = len(self._entries) - self.limit
        if excess <= 0:
            return
        victims = []
        for task_id in self._entries:  # oldest first
            if task_id not in self._wanted:
                victims.append(task_id)
                if len(victims) == excess:
                    break
        for task_id in victims:
            del self._entries[task_id]

    def put(self, task_id: str, meta: dict[str, Any]) -> bool:
        old = self._entries.get(task_id)
        if (old is not None and old[1].get("status") in states.READY_STATES
                and meta.get("status") not in states.READY_STATES):
            return False
        self.seq += 1
        self._entries[task_id] = (self.seq, meta)
        self._entries.move_to_end(task_id)
        self._evict()
        return True

    def get(self, task_id: str) -> dict[str, Any] | None:
        entry = self._entries.get(task_id)
        return None if entry is None else entry[1]

    def changed_since(self, task_ids: Iterable[str], seq: int) -> bool:
        for task_id in task_ids:
            entry = self._entries.get(task_id)
            if entry is not None and entry[0] > seq:
                return True
        return False

    def pop(self, task_id: str) -> None:
        self._entries.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._entries)


# ---- connections ------------------------------------------------------------------------------
class _Link:
    """One connection and channel, opened at first use and again after a connection error or a
    fork; calls go one at a time (py-amqp connections are not thread-safe)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self._lock = threading.Lock()
        self._forks = PidGuard()
        self._conn: Any = None
        self._chan: Any = None

    def call(self, operation: Callable[[Any], T], retry_delays: Sequence[float] = ()) -> T:
        if self._forks.forked():
            _INHERITED.append(self._conn)
            self._conn = self._chan = None
            self._lock = threading.Lock()
            self._forks.adopt()
        delays = iter(retry_delays)
        with self._lock:
            while True:
                try:
                    if self._chan is None:
                        self._open()
                    return operation(self._chan)
                except _connection_errors():
                    self._drop()
                    delay = next(delays, None)
                    if delay is None:
                        raise
                    time.sleep(delay)
                except _amqp.exceptions.AMQPError:
                    self._drop()  # a channel error closed the channel: start over next time
                    raise

    def _open(self) -> None:
        conn = _amqp.Connection(**self._params)
        try:
            conn.connect()
            self._chan = conn.channel()
        except BaseException:
            _close_quietly(conn)
            raise
        self._conn = conn

    def _drop(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            _close_quietly(conn)

    def close(self) -> None:
        if self._forks.forked():
            return
        with self._lock:
            self._drop()


class _Listener:
    """The thread that consumes a client's reply queue and hands each reply to its backend. The
    first connection is made by the caller (so an unreachable broker is its error); later ones by
    the thread, with growing pauses, while it runs."""

    def __init__(self, backend: "RPCBackend") -> None:
        self.backend = backend
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._conn = self._connect()
        self._thread = threading.Thread(target=self._run, name="celeriac-rpc-replies",
                                        daemon=True)
        self._thread.start()

    def _connect(self) -> Any:
        backend = self.backend
        conn = _amqp.Connection(**backend.connection_params)
        try:
            conn.connect()
            channel = conn.channel()
            backend.declare_reply_queue(channel)
            channel.basic_consume(queue=backend.oid, no_ack=True, callback=self._on_message)
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _on_message(self, message: Any) -> None:
        try:
            body = message.body
            if isinstance(body, str):  # py-amqp decodes bodies with a content_encoding
                body = body.encode(message.properties.get("content_encoding") or "utf-8")
            self.backend.on_reply(bytes(body), message.properties)
        except Exception:  # a bug handling one reply is no lost connection: log it, go on
            logger.exception("rpc:// reply queue %s: could not handle a reply (correlation_id "
                             "%r)", self.backend.oid,
                             getattr(message, "properties", {}).get("correlation_id"))

    def _run(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    pause = 0.5
                    logger.warning("rpc:// reply queue %s: consuming again; states sent while "
                                   "it was not consumed may be lost (the queue is auto-delete, "
                                   "as on Celery): wait for results with a timeout",
                                   self.backend.oid)
                self._conn.drain_events(timeout=_DRAIN_TICK)
            except TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - connection lost: reconnect while running
                if self._stop.is_set():
                    break
                logger.warning("rpc:// reply queue %s: %r; reconnecting in %.1fs",
                               self.backend.oid, exc, pause)
                conn, self._conn = self._conn, None
                if conn is not None:
                    _close_quietly(conn)
                self._stop.wait(pause)
                pause = min(pause * 2, 10.0)
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    def close(self, timeout: float = 2 * _DRAIN_TICK + 1.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


# ---- the backend ------------------------------------------------------------------------------
class RPCBackend(ResultBackend):
    """Results as messages to the sender's reply queue (Celery's ``rpc://``)."""

    #: nothing is kept: only the sending process ever sees a result (Celery says the same)
    persistent = False
    #: but every result is sent (to the caller): see ResultBackend.receives_results
    receives_results = True

    def __init__(self, app: Any = None, url: str | None = None, **options: Any) -> None:
        super().__init__(app=app, url=url or "rpc://", **options)
        conf = app.conf if app is not None else None
        broker_url = options.get("broker_url") or (app.broker_url if app is not None else "")
        setting = conf.get if conf is not None else (lambda name: None)
        self.connection_params = connection_params(
            broker_url, setting("broker_use_ssl"), login_method=setting("broker_login_method"))
        #: the reply queue's name and what task messages carry in reply_to: the app's oid, the
        #: one its frozen workflow signatures carry too
        self.oid: str = str(app.oid) if app is not None else str(uuid.uuid4())
        #: delivery_mode 2 for replies (Celery's ``result_persistent``)
        self.durable_replies = bool(conf.get("result_persistent")) if conf is not None else False
        content_type, content_encoding, _ = serialization.dumps(None, self.serializer)
        self._content = (content_type, content_encoding)
        self._forks = PidGuard()
        self._start_fresh()

    def _start_fresh(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._local = threading.local()
        self._link = _Link(self.connection_params)
        self._listener: _Listener | None = None
        self._cache = StateCache()
        self._syncs: dict[str, bool] = {}
        self._declared_at: float | None = None

    def _check_fork(self) -> None:
        # A child must not use the parent's connections nor its listener (which did not survive
        # the fork); it starts over, with the parent's connections left open for the parent.
        if self._forks.forked():
            _INHERITED.extend(x for x in (self._link, self._listener) if x is not None)
            self._start_fresh()
            self._forks.adopt()

    def __repr__(self) -> str:
        return f"<RPCBackend rpc:// reply queue {self.oid}>"

    def waited_on(self) -> str:
        return (f"on the rpc:// reply queue {self.oid} (rpc:// results only reach the process "
                "that sent the task)")

    # ---- the client's side: sending ----------------------------------------------------------
    @property
    def reply_to(self) -> str | None:
        return self.oid

    def prepare_replies(self) -> None:
        """Declare the reply queue, once (again after ``result_expires``/2, or after close)."""
        self._check_fork()
        declared = self._declared_at
        every = self.expires / 2 if self.expires else 3600.0
        if declared is not None and time.monotonic() - declared < every:
            return
        try:
            self._link.call(self.declare_reply_queue, _RETRY_DELAYS[:2])
        except (*_connection_errors(), _amqp.exceptions.AMQPError) as exc:
            raise self._unreachable(exc, "declare the rpc:// reply queue") from exc
        self._declared_at = time.monotonic()

    def declare_reply_queue(self, channel: Any) -> None:
        channel.queue_declare(queue=self.oid, durable=True, auto_delete=True, exclusive=False,
                              arguments=queue_arguments(self.expires))

    def _unreachable(self, exc: BaseException, what: str) -> OperationalError:
        params = self.connection_params
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return OperationalError(f"could not {what} on the broker at {params['host']} "
                                f"(vhost {params['virtual_host']!r}): {reason}")

    # ---- the worker's side: replies --------------------------------------------------------
    def result_write(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, children: list[Any] | None = None) -> ResultWrite:
        made = super().result_write(task_id, result, state, traceback=traceback, request=request,
                                    children=children)
        reply_to, correlation_id = destination_for(task_id, request)
        return ReplyWrite(reply_to, made.value, None, made.meta, correlation_id)

    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, children: list[Any] | None = None) -> dict[str, Any]:
        write = self.result_write(task_id, result, state, traceback=traceback, request=request,
                                  children=children)
        self.write_results([write])
        return write.meta

    def write_results(self, writes: Sequence[ResultWrite]) -> None:
        """Publish each write to its ``reply_to`` (none for a write without one)."""
        self._check_fork()
        content_type, content_encoding = self._content
        messages = [(write.key, _amqp.Message(write.value, **reply_properties(
            content_type, content_encoding,
            getattr(write, "correlation_id", "") or str(write.meta.get("task_id") or ""),
            self.durable_replies))) for write in writes if write.key]
        if not messages:
            return

        def publish(channel: Any) -> None:
            for routing_key, message in messages:
                channel.basic_publish(message, exchange="", routing_key=routing_key)

        try:
            self._link.call(publish, _RETRY_DELAYS)
        except (*_connection_errors(), _amqp.exceptions.AMQPError) as exc:
            raise self._unreachable(exc, "send an rpc:// result") from exc

    # ---- the client's side: replies ---------------------------------------------------------
    def on_reply(self, body: bytes, properties: Mapping[str, Any]) -> None:
        """One message from the reply queue (called by the listener thread)."""
        if properties.get("type") == SYNC_TYPE:
            token = properties.get("correlation_id") or ""
            with self._cond:
                if token in self._syncs:
                    self._syncs[token] = True
                    self._cond.notify_all()
            return
        found = meta_from_reply(body, properties, self.accept)
        if found is None:
            logger.warning("rpc:// reply queue %s: dropped a message that names no task",
                           self.oid)
            return
        task_id, meta = found
        with self._cond:
            if self._cache.put(task_id, meta):
                self._cond.notify_all()

    def _ensure_listener(self) -> _Listener:
        self._check_fork()
        listener = self._listener
        if listener is None:
            with self._lock:
                listener = self._listener
                if listener is None:
                    listener = _Listener(self)
                    try:
                        listener.start()
                    except (*_connection_errors(), _amqp.exceptions.AMQPError) as exc:
                        raise self._unreachable(exc, "consume the rpc:// reply queue") from exc
                    self._listener = listener
        return listener

    def _sync(self) -> None:
        """Return once the listener has handled every reply in the queue when this was called: a
        marker sent to the queue now comes back after them (or after ``_SYNC_WAIT``, if the
        listener is reconnecting)."""
        listener = self._ensure_listener()
        token = uuid.uuid4().hex
        with self._cond:
            self._syncs[token] = False
        marker = _amqp.Message(b"", type=SYNC_TYPE, correlation_id=token, delivery_mode=1)
        try:
            self._link.call(lambda channel: channel.basic_publish(
                marker, exchange="", routing_key=self.oid), _RETRY_DELAYS[:2])
            deadline = time.monotonic() + _SYNC_WAIT
            with self._cond:
                while not self._syncs[token] and listener.alive:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
        except (*_connection_errors(), _amqp.exceptions.AMQPError) as exc:
            logger.warning("rpc:// reply queue %s: could not sync (%r): answering from the "
                           "states received so far", self.oid, exc)
        finally:
            with self._cond:
                self._syncs.pop(token, None)

    def _read(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._cond:
            self._local.seen = self._cache.seq
            found = {t: self._cache.get(t) for t in task_ids}
        return {t: dict(m) if m is not None else metamod.pending_meta(t)
                for t, m in found.items()}

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        return self.get_many_meta([task_id])[task_id]

    def get_many_meta(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        metas = self._read(task_ids)
        if all(m["status"] in states.READY_STATES for m in metas.values()):
            return metas  # a final state never changes: no need to look for newer ones
        self._sync()
        return self._read(task_ids)

    def wait_for(self, task_id: str, timeout: float | None = None,
                 states_wanted: frozenset[str] = states.READY_STATES) -> dict[str, Any]:
        done = self._wait([task_id], timeout, states_wanted, until_failure=False,
                          timed_out=lambda pending: self._timed_out(
                              timeout, f"task {task_id} (still {self._status_of(task_id)})"))
        return done[task_id]

    def wait_for_many(self, task_ids: Sequence[str], timeout: float | None = None, *,
                      until_failure: bool = False) -> dict[str, dict[str, Any]]:
        return self._wait(task_ids, timeout, states.READY_STATES, until_failure=until_failure,
                          timed_out=lambda pending: self._not_ready(timeout, pending))

    def _status_of(self, task_id: str) -> str:
        meta = self._cache.get(task_id)
        return str(meta["status"]) if meta is not None else states.PENDING

    def _wait(self, task_ids: Sequence[str], timeout: float | None,
              states_wanted: frozenset[str], *, until_failure: bool,
              timed_out: Callable[[list[str]], Exception]) -> dict[str, dict[str, Any]]:
        """The replies of ``task_ids`` once each is in ``states_wanted`` (or, ``until_failure``,
        once one has failed), read from the cache the listener thread fills."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listening = False
        with self._cond, self._wanting(task_ids):
            while True:
                done: dict[str, dict[str, Any]] = {}
                failed = False
                for task_id in task_ids:
                    meta = self._cache.get(task_id)
                    if meta is not None and meta["status"] in states_wanted:
                        done[task_id] = dict(meta)
                        failed = failed or meta["status"] in states.PROPAGATE_STATES
                pending = [t for t in task_ids if t not in done]
                if not pending or (until_failure and failed):
                    return done
                if not listening:  # (outside the lock: starting it may take a while)
                    self._cond.release()
                    try:
                        self._ensure_listener()
                    finally:
                        self._cond.acquire()
                    listening = True
                    continue
                remaining = _DRAIN_TICK if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out(pending)
                self._cond.wait(min(remaining, _DRAIN_TICK))

    @contextlib.contextmanager
    def _wanting(self, task_ids: Sequence[str]) -> Iterator[None]:
        """Hold ``_cond``. Keep the states of ``task_ids`` in the cache while this lasts."""
        ids = list(task_ids)
        self._cache.want(ids)
        try:
            yield
        finally:
            self._cache.unwant(ids)

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._cache.pop(task_id)

    def close(self) -> None:
        """Stop consuming (RabbitMQ then deletes the auto-delete reply queue) and disconnect; the
        backend starts again if used again."""
        if self._forks.forked():
            return
        with self._lock:
            listener, self._listener = self._listener, None
            self._declared_at = None
        if listener is not None:
            listener.close()
        self._link.close()

    # ---- primitives: there is no store -----------------------------------------------------------
    def _task_ids(self, keys: Sequence[str]) -> list[str]:
        return [k[len(TASK_KEY_PREFIX):] for k in keys if k.startswith(TASK_KEY_PREFIX)]

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        raise NotImplementedError(E_NO_STORE.format(what=f"cannot write {key!r}"))

    def _get(self, key: str) -> bytes | None:
        return self._mget([key])[0]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = []
        with self._cond:
            for key in keys:
                meta = (self._cache.get(key[len(TASK_KEY_PREFIX):])
                        if key.startswith(TASK_KEY_PREFIX) else None)
                values.append(None if meta is None else self.encode(meta))
        return values

    def _delete(self, keys: Sequence[str]) -> None:
        for task_id in self._task_ids(keys):
            self.forget(task_id)

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        raise NotImplementedError(E_NO_STORE.format(what=f"cannot count {key!r}"))

    def _wait_change(self, keys: Sequence[str], timeout: float) -> None:
        task_ids = self._task_ids(keys)
        seen = getattr(self._local, "seen", None)
        self._local.seen = None
        self._ensure_listener()
        deadline = time.monotonic() + timeout
        with self._cond:
            if seen is None:
                seen = self._cache.seq
            while not self._cache.changed_since(task_ids, seen):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    # ---- chords and groups: not supported (as on Celery) ----------------------------------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        raise NotImplementedError(E_NO_CHORDS)

    def add_to_chord(self, group_id: str, result: Any = None) -> None:
        raise NotImplementedError(E_NO_CHORDS)

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          entry: bytes, *, claim_token: str, claim_ttl: float) -> ChordPart:
        raise NotImplementedError(E_NO_CHORDS)

    def chord_results(self, group_id: str) -> list[bytes]:
        raise NotImplementedError(E_NO_CHORDS)

    def chord_cleanup(self, group_id: str, claim_token: str, done_ttl: float) -> bool:
        raise NotImplementedError(E_NO_CHORDS)

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        raise NotImplementedError(E_NO_GROUPS)

    def restore_group(self, group_id: str) -> Any:
        raise NotImplementedError(E_NO_GROUPS)

    def delete_group(self, group_id: str) -> None:
        raise NotImplementedError(E_NO_GROUPS)
