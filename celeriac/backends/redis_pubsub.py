"""Waiting for results on Redis without polling: one pub/sub connection per result store.

Layer: backends (used by ``RedisBackend``). Waiters register the channels of the results they
wait for (``Subscriber.watch``); one background thread owns the connection, subscribes, and
hands each message to the waiters of its channel. After a reconnect every waiter re-reads its
keys, so a result published while the connection was down is never missed.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError

from ..exceptions import BackendError
from ..utils.spin import AdaptiveSpin, look_until
from .base import DEFAULT_WAIT_SPIN

logger = logging.getLogger("celeriac.backends.redis")

#: seconds of silence on the pub/sub connection before a PING checks it is still alive
_HEALTH_INTERVAL = 15.0
#: a connection that served at least this long ends a run of failures: the next reconnect waits
#: the shortest back-off again (one killed at once keeps backing off, up to ``_MAX_BACKOFF``)
_STABLE_AFTER = 5.0
_MAX_BACKOFF = 2.0


class Watch:
    """One waiter's view of some channels: armed once all are subscribed, then fed messages."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(dict.fromkeys(keys))
        self.cond = threading.Condition(threading.Lock())
        self.is_armed = False
        self.error: BaseException | None = None
        #: channel -> the latest payload since the last take(); None means "re-read it"
        self.news: dict[str, bytes | None] = {}

    def armed(self, deadline: float | None) -> bool:
        """Wait until every channel is subscribed (so a GET now misses nothing); False on
        timeout. A connection failure before that is raised as BackendError."""
        with self.cond:
            while not self.is_armed and self.error is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(remaining)
            if self.error is not None:
                raise BackendError(f"Redis result store: cannot subscribe: {self.error}") \
                    from self.error
            return True

    def take(self, deadline: float | None) -> dict[str, bytes | None] | None:
        """The news since the last call, waiting for some; None on timeout."""
        with self.cond:
            while not self.news:
                if self.error is not None:
                    raise BackendError(f"Redis result store: {self.error}") from self.error
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.cond.wait(remaining)
            news, self.news = self.news, {}
            return news

    def arm(self, resync: bool) -> None:
        with self.cond:
            self.is_armed = True
            if resync:  # re-subscribed after a reconnect: anything may have been missed
                self.news.update(dict.fromkeys(self.keys))
            self.cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.cond:
            self.error = error
            self.cond.notify_all()

    def deliver(self, channel: str, data: bytes) -> None:
        with self.cond:
            self.news[channel] = data
            self.cond.notify_all()


class Subscriber:
    """The pub/sub connection of one backend, owned by one background thread.

    Waiters register channels with ``watch``; the thread subscribes them (a pipe wakes it), arms
    each watch once the server confirmed every channel, and hands it the messages. Channels
    nobody watches any more are unsubscribed on the thread's next wake-up.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._unarmed: set[Watch] = set()
        #: channels last asked to be subscribed, and replies still due per channel
        self._active: set[str] = set()
        self._inflight: Counter[str] = Counter()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None

    def watch(self, channels: Sequence[str]) -> Watch:
        watch = Watch(channels)
        with self._lock:
            if self._closed:
                raise BackendError("the Redis result store is closed")
            for channel in watch.keys:
                self._watches.setdefault(channel, set()).add(watch)
            if self._ready(watch.keys):
                watch.is_armed = True
                return watch
            self._unarmed.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="celeriac-redis-results")
                self._thread.start()
        self._poke()
        return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            self._unarmed.discard(watch)
            for channel in watch.keys:
                watchers = self._watches.get(channel)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del self._watches[channel]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            watches = {w for ws in self._watches.values() for w in ws} | self._unarmed
            self._unarmed = set()
        for watch in watches:  # waiters still blocked get an error instead of hanging
            watch.fail(BackendError("the Redis result store was closed"))
        self._poke()
        if thread is not None:
            thread.join(5.0)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _ready(self, channels: Iterable[str]) -> bool:
        """Hold ``_lock``."""
        return all(c in self._active and not self._inflight[c] for c in channels)

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # already full of pokes, or closed

    # ---- the listener thread ---------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._closed:
            conn = None
            connected_at: float | None = None
            try:
                conn = self._connect()
                connected_at = time.monotonic()
                self._serve(conn)
            except (RedisError, OSError) as exc:
                if connected_at is not None and time.monotonic() - connected_at >= _STABLE_AFTER:
                    failures = 0
                failures += 1
                self._connection_lost(exc)
                if not self._closed:
                    delay = min(0.05 * 2 ** failures, _MAX_BACKOFF)
                    logger.warning("Redis result store: pub/sub connection lost (%s); "
                                   "reconnecting in %.1f s", exc, delay)
                    self._sleep(delay)
            finally:
                if conn is not None:
                    conn.disconnect()

    def _connection_lost(self, exc: BaseException) -> None:
        with self._lock:
            self._active.clear()
            self._inflight.clear()
            never_armed = [w for w in self._unarmed if not w.is_armed]
            self._unarmed -= set(never_armed)
            # The armed ones stay: they are re-armed, with a re-read, once subscribed again.
            self._unarmed.update(w for ws in self._watches.values() for w in ws)
        for watch in never_armed:
            watch.fail(exc)

    def _sleep(self, seconds: float) -> None:
        select.select([self._wake_r], [], [], seconds)
        self._drain_pokes()

    def _drain_pokes(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _serve(self, conn: Any) -> None:
        ping_sent = False
        while not self._closed:
            self._reconcile(conn)
            while conn.can_read(timeout=0):
                self._handle(conn.read_response(push_request=True))
                ping_sent = False
            ready, _, _ = select.select([conn._sock, self._wake_r], [], [], _HEALTH_INTERVAL)
            if self._wake_r in ready:
                self._drain_pokes()
            if not ready:
                if ping_sent:
                    raise RedisConnectionError("no reply to PING on the pub/sub connection")
                conn.send_command("PING")
                ping_sent = True

    def _reconcile(self, conn: Any) -> None:
        with self._lock:
            wanted = set(self._watches)
            subscribe = sorted(wanted - self._active)
            unsubscribe = sorted(self._active - wanted)
            self._active = wanted
            self._inflight.update(subscribe + unsubscribe)
        if unsubscribe:
            conn.send_command("UNSUBSCRIBE", *unsubscribe)
        if subscribe:
            conn.send_command("SUBSCRIBE", *subscribe)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # the PING reply
        kind, channel = reply[0], reply[1].decode("utf-8", "replace")
        if kind == b"message":
            with self._lock:
                watchers = list(self._watches.get(channel, ()))
            for watch in watchers:
                watch.deliver(channel, reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            with self._lock:
                self._inflight[channel] -= 1
                if self._inflight[channel] <= 0:
                    del self._inflight[channel]
                armed = [w for w in self._unarmed if channel in w.keys and self._ready(w.keys)]
                self._unarmed.difference_update(armed)
            for watch in armed:
                watch.arm(resync=watch.is_armed)


# ---- one waiter on its own connection ------------------------------------------------------------
_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _hiredis = None
#: what our hiredis reader returns while a reply is incomplete
_NOT_ENOUGH_DATA = object()
#: RESP3 push messages (hiredis 3 and later)
_PUSH: Any = getattr(_hiredis, "PushNotification", None)


def _pack(*command: Any) -> bytes:
    packed: bytes = _hiredis.pack_command(command)
    return packed


class Unsupported(Exception):
    """The server or the client library cannot serve a ``SoloWaiter`` (no RESP3 or hiredis)."""


class SoloWaiter:
    """One thread's wait for one key, read by that thread itself on a private RESP3 connection.

    ``SUBSCRIBE <channel>`` and ``GET <key>`` go in one packet: the server runs them in that
    order on one connection, so the GET sees every value written before the subscription took
    effect and each PUBLISH after it arrives as a push message on the same socket. The waiting
    thread reads them itself: no listener thread to wake and hand over to, and one round trip
    where the shared ``Subscriber`` takes three (GET, SUBSCRIBE, GET again). One waiter at a time
    (``try_acquire``); the others use the shared ``Subscriber``, so a store keeps two pub/sub
    connections at most. A connection error is raised for the caller to fall back on.
    """

    def __init__(self, connect: Callable[[], Any], spin: float = DEFAULT_WAIT_SPIN) -> None:
        self._connect = connect
        #: how long a wait polls its socket before it sleeps (``wait_spin``)
        self._spin = AdaptiveSpin(spin)
        self._lock = threading.Lock()  # held by the thread using the connection
        self._conn: Any = None
        self._reader: Any = None
        self._poller: Any = None  # select.poll on the connection's socket (any fd number)
        self._buffer = bytearray(65536)
        #: non-push replies still due from commands of earlier waits (a PING's PONG)
        self._owed = 0
        #: the last wait's channel, unsubscribed in the next wait's packet (or at close)
        self._leftover: str | None = None
        self._closed = False
        self.supported = _hiredis is not None and _PUSH is not None

    def try_acquire(self) -> bool:
        return self.supported and not self._closed and self._lock.acquire(blocking=False)

    def release(self) -> None:
        self._lock.release()

    def close(self) -> None:
        """Drop the connection; a thread blocked in ``wait`` gets a BackendError."""
        self._closed = True
        conn = self._conn
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            except OSError:
                pass
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()

    def _drop(self) -> None:
        conn, self._conn, self._reader, self._owed = self._conn, None, None, 0
        self._poller = None
        self._leftover = None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001 - closing a broken socket must not raise
                pass

    def _open(self) -> Any:
        try:
            conn = self._connect()
        except ResponseError as exc:  # HELLO 3 refused: a server older than Redis 6
            self.supported = False
            raise Unsupported(str(exc)) from exc
        parser = getattr(conn, "_parser", None)
        if getattr(conn, "_sock", None) is None or parser is None:
            conn.disconnect()
            self.supported = False
            raise Unsupported("no socket to read")
        self._reader = _hiredis.Reader(protocolError=InvalidResponse,
                                       replyError=parser.parse_error,
                                       notEnoughData=_NOT_ENOUGH_DATA)
        self._poller = select.poll()
        self._poller.register(conn._sock.fileno(), select.POLLIN)
        self._conn = conn
        return conn

    def wait(self, channel: str, key: str, answer: Callable[[bytes | None], Any],
             deadline: float | None) -> tuple[bool, Any]:
        """``(True, answer(value))`` for the first value (the stored one, then each published
        one) for which ``answer`` returns something other than None; ``(False, None)`` at the
        deadline. Hold ``try_acquire``'s lock."""
        if self._closed:
            raise BackendError("the Redis result store was closed")
        conn = self._conn or self._open()
        try:
            return self._wait(conn, channel, key, answer, deadline)
        except BaseException:
            self._drop()
            if self._closed:
                raise BackendError("the Redis result store was closed") from None
            raise

    def _wait(self, conn: Any, channel: str, key: str, answer: Callable[[bytes | None], Any],
              deadline: float | None) -> tuple[bool, Any]:
        sock, reader, buffer = conn._sock, self._reader, self._buffer
        wanted = channel.encode()
        packet = _pack("SUBSCRIBE", channel) + _pack("GET", key)
        if self._leftover is not None:
            packet = _pack("UNSUBSCRIBE", self._leftover) + packet
        self._leftover = channel
        conn.send_packed_command([packet], check_health=False)
        skip, self._owed = self._owed, self._owed + 1  # the GET's reply comes after `skip`
        found: Any = None
        stored_read = done = False  # the GET answered; an answer found
        ping_sent = False
        spin_until, began = self._spin.begin()
        try:  # a wait that timed out or failed counts too
            while not done:
                reply = reader.gets()
                if reply is _NOT_ENOUGH_DATA:
                    if self._closed:  # close() came while this connection was being opened
                        raise BackendError("the Redis result store was closed")
                    if not self._readable(sock, deadline, spin_until):
                        if deadline is not None and time.monotonic() >= deadline:
                            return False, None
                        if ping_sent:
                            raise RedisConnectionError("no reply to PING on the pub/sub "
                                                       "connection")
                        conn.send_packed_command([_pack("PING")], check_health=False)
                        self._owed += 1
                        ping_sent = True
                        continue
                    size = sock.recv_into(buffer)
                    if not size:
                        raise RedisConnectionError("Connection closed by server.")
                    reader.feed(buffer, 0, size)
                    ping_sent = False
                    continue
                if isinstance(reply, _PUSH):
                    # This channel's messages once the GET is answered: one that comes before was
                    # published before the GET ran (the server ran it after the SUBSCRIBE), so the
                    # GET saw that value or a newer one. The rest are (un)subscribe confirmations
                    # and leftovers of earlier waits.
                    if stored_read and len(reply) >= 3 and reply[0] == b"message" and \
                            reply[1] == wanted:
                        found = answer(reply[2])
                        done = found is not None
                    continue
                if isinstance(reply, RedisConnectionError):  # LOADING and the like
                    raise reply
                self._owed -= 1
                if skip > 0:  # the PONG of an earlier wait's PING
                    skip -= 1
                    continue
                if stored_read:  # this wait's PONG
                    continue
                stored_read = True
                if isinstance(reply, Exception):  # the GET was refused (WRONGTYPE, ...)
                    raise reply
                found = answer(reply)
                done = found is not None
        finally:
            self._spin.end(began)
        return True, found

    def _readable(self, sock: Any, deadline: float | None, spin_until: float = 0.0) -> bool:
        """Whether ``sock`` has data before the deadline (at most ``_HEALTH_INTERVAL``: False
        after that much silence). Until ``spin_until`` (a ``perf_counter`` time) it polls,
        yielding the CPU between looks, then it sleeps: on a virtual machine a thread that
        slept takes longer to wake than a short task takes to run."""
        pending = getattr(sock, "pending", None)  # TLS: records already read and decrypted
        if pending is not None and pending():
            return True
        if spin_until:
            if deadline is not None:  # (never past the wait's own end)
                spin_until = min(spin_until, time.perf_counter() + deadline - time.monotonic())
            if look_until(lambda: self._poller.poll(0), spin_until):
                return True
        remaining = _HEALTH_INTERVAL
        if deadline is not None:
            remaining = min(remaining, max(0.0, deadline - time.monotonic()))
        return bool(self._poller.poll(math.ceil(remaining * 1000)))
