"""Waiting for results on Redis without polling: one pub/sub connection per result store.

Layer: backends (used by ``RedisBackend``). Waiters register the channels of the results they
wait for (``Subscriber.watch``); one background thread owns the connection, subscribes, and
hands each message to the waiters of its channel. After a reconnect every waiter re-reads its
keys, so a result published while the connection was down is never missed.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..exceptions import BackendError

logger = logging.getLogger("celeriac.backends.redis")

#: seconds of silence on the pub/sub connection before a PING checks it is still alive
_HEALTH_INTERVAL = 15.0


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
            try:
                conn = self._connect()
                failures = 0
                self._serve(conn)
            except (RedisError, OSError) as exc:
                failures += 1
                self._connection_lost(exc)
                if not self._closed:
                    logger.warning("Redis result store: pub/sub connection lost (%s); "
                                   "reconnecting", exc)
                    self._sleep(min(0.05 * 2 ** failures, 2.0))
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
