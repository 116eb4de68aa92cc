"""The Redis result store, byte-compatible with Celery's: SETEX + PUBLISH writes, pub/sub waits.

Layer: backends. Keys and values are exactly Celery's (``celery-task-meta-<id>`` holding the JSON
meta), and every write PUBLISHes the same bytes on a channel named like the key, so a Celery
``AsyncResult`` waiting on this store wakes, and celeriac waits on a Celery worker's results the
same way. Waiting never polls: one background thread per backend owns a pub/sub connection and
hands each message to the waiters of its channel (``redis_pubsub.Subscriber``).

URL forms: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; ``ssl_cert_reqs``
etc. from the query or the ``redis_backend_use_ssl`` setting), ``unix:///path.sock?db=N`` and
``redis+socket:///path.sock``. Celeriac extension: ``?global_keyprefix=p:`` in the URL (or in
``result_backend_transport_options``) prefixes every key and channel, as Celery's option does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Sequence, cast
from urllib.parse import parse_qsl, urlencode

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import ResponseError
from redis.retry import Retry

from .. import states
from ..exceptions import BackendError, ImproperlyConfigured
from ..utils import redis_wire
from ..utils.forks import PidGuard
from ..utils.urls import redact_url
from . import meta as metamod
from . import redis_chord
from .base import (
    RATE_BUCKET_PREFIX,
    RATE_SLOT_MARGIN,
    ChordPart,
    RateGrant,
    ResultBackend,
    ResultWrite,
    _any_failed,
    rate_slot_key,
    wait_spin_option,
)
from .redis_pubsub import SoloWaiter, Subscriber, Unsupported

logger = logging.getLogger(__name__)

#: pauses between the attempts of a write that hit a connection error (then it is raised)
_STORE_RETRY_DELAYS = (0.1, 0.5, 2.0)
_TRANSIENT = redis_wire.TRANSIENT
#: keys per DEL, so one huge forget never blocks the server for long
_DELETE_CHUNK = 1000
_SSL_NAMES = {"none": "none", "cert_none": "none", "optional": "optional",
              "cert_optional": "optional", "required": "required", "cert_required": "required"}
# Lock scripts: each is one atomic step in Redis, so no other client changes the key between
# the check of its token and the change (a retried call finds its own token and succeeds again).
_LOCK_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LOCK_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Rate limits (RateLimits): rate_step in backends/base.py, on the server's clock (TIME), in
# whole microseconds kept as decimal strings (exact: below 2^53). KEYS: the bucket, the ticket's
# slot; ARGV: the interval and the slot margin (microseconds), the most slots to grant. Returns
# {wait in microseconds, slots granted}.
_RATE_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slot = redis.call('GET', KEYS[2])
if slot then
  slot = tonumber(slot)
  if slot <= now then
    redis.call('DEL', KEYS[2])
    return {0, 1}
  end
  return {slot - now, 0}
end
local first = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local horizon = now + (tonumber(ARGV[3]) - 1) * interval
if first <= horizon then
  local slots = math.min(tonumber(ARGV[3]), math.floor((horizon - first) / interval) + 1)
  local tat = first + slots * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX',
             math.floor((tat - now) / 1000) + 1000)
  return {0, slots}
end
redis.call('SET', KEYS[1], string.format('%.0f', first + interval), 'PX',
           math.floor((first + interval - now) / 1000) + 1000)
redis.call('SET', KEYS[2], string.format('%.0f', first), 'PX',
           math.floor((first - now + tonumber(ARGV[2])) / 1000) + 1)
return {first - now, 0}
"""
_RATE_TAKE_SHA = redis_wire.script_sha(_RATE_TAKE)
#: redis-py leaves parse_url unannotated; this is its type
_parse_url: Callable[[str], dict[str, Any]] = parse_url
#: objects a forked child inherited (sockets, pipe fds): never used there, only kept referenced
_INHERITED: list[Any] = []


class RedisBackend(ResultBackend):
    """Results in Redis, laid out as Celery lays them out; thread-safe, reopened after fork."""

    writes_ride_with_reads = True

    def __init__(self, app: Any = None, url: str | None = None, **options: Any) -> None:
        conf = app.conf if app is not None else None
        transport_options = dict((conf.result_backend_transport_options if conf else None) or {})
        self.keyprefix: str = options.pop("global_keyprefix", None) or ""
        backend_url = url or "redis://"
        super().__init__(app=app, url=backend_url, **options)
        redis_url, url_prefix, kwargs = client_options(backend_url, conf, transport_options)
        self.keyprefix = self.keyprefix or url_prefix
        self._redis_url = redis_url
        self._client_kwargs = kwargs
        self._busy_poll = _busy_poll(transport_options.get("busy_poll"))
        self._wait_spin = wait_spin_option(transport_options)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._forks = PidGuard()
        self._client: redis.Redis | None = None
        self._subscriber: Subscriber | None = None
        self._solo: SoloWaiter | None = None

    def __repr__(self) -> str:
        return f"<RedisBackend {redact_url(cast(str, self.url))}>"  # set in __init__

    # ---- connections -----------------------------------------------------------------------------
    def _check_fork(self) -> None:
        # A child must not share the parent's sockets or listener; take fresh ones, never closing
        # the inherited ones (that could shut the parent's connections down).
        if self._forks.forked():
            _INHERITED.extend(x for x in (self._client, self._subscriber, self._solo)
                              if x is not None)
            self._lock = threading.Lock()
            self._local = threading.local()
            self._client = self._subscriber = self._solo = None
            self._forks.adopt()

    def client(self) -> redis.Redis:
        """The shared client of this process (its own thread-safe connection pool)."""
        self._check_fork()
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(self._redis_url, **self._client_kwargs)
                    redis_wire.set_busy_poll(self._client.connection_pool, self._busy_poll)
                client = self._client
        return client

    def _solo_waiter(self) -> SoloWaiter | None:
        """The connection one waiting thread at a time reads itself (None: not on this
        server or client library)."""
        self._check_fork()
        solo = self._solo
        if solo is None:
            pool = self.client().connection_pool
            with self._lock:
                if self._solo is None:
                    overrides: dict[str, Any] = {"socket_timeout": None, "health_check_interval": 0,
                                                 "protocol": 3}
                    if issubclass(pool.connection_class, redis.connection.Connection):
                        overrides["socket_keepalive"] = True  # TCP only (not a unix socket)
                    self._solo = SoloWaiter(redis_wire.connector(pool, **overrides),
                                            self._wait_spin)
                solo = self._solo
        return solo if solo.supported else None

    def _subscriber_for_waits(self) -> "Subscriber":
        self._check_fork()
        subscriber = self._subscriber
        if subscriber is None:
            pool = self.client().connection_pool
            with self._lock:
                if self._subscriber is None:
                    overrides: dict[str, Any] = {"socket_timeout": None, "health_check_interval": 0}
                    if issubclass(pool.connection_class, redis.connection.Connection):
                        overrides["socket_keepalive"] = True  # TCP only (not a unix socket)
                    self._subscriber = Subscriber(redis_wire.connector(pool, **overrides))
                subscriber = self._subscriber
        return subscriber

    def close(self) -> None:
        """Stop the listener and drop the connections; the backend reopens lazily if used again."""
        self._check_fork()
        with self._lock:
            client, subscriber, solo = self._client, self._subscriber, self._solo
            self._client = self._subscriber = self._solo = None
        if solo is not None:
            solo.close()
        if subscriber is not None:
            subscriber.close()
        if client is not None:
            client.close()

    # ---- primitives ------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.keyprefix + key

    def _wire(self) -> redis_wire.Wire:
        """This thread's raw connection (shared with a Redis broker on the same database)."""
        return redis_wire.wire_for(self.client().connection_pool)

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        commands = _set_commands(self._key(key), value, ttl)
        self._retrying(lambda: self._wire().call_checked(*commands), key)

    def write_results(self, writes: Sequence[ResultWrite]) -> None:
        """Every write (and its PUBLISH) in one round trip: a batch's results, a chain's."""
        commands = [command for write in writes
                    for command in _set_commands(self._key(write.key), write.value, write.ttl)]
        if commands:
            self._retrying(lambda: self._wire().call_checked(*commands), writes[0].key)

    def write_results_then_mget(self, writes: Sequence[ResultWrite],
                                keys: Sequence[str]) -> list[bytes | None]:
        """Every write (and its PUBLISH), then one MGET, in one round trip; tried once (the
        caller keeps the writes for later if it fails)."""
        commands = [command for write in writes
                    for command in _set_commands(self._key(write.key), write.value, write.ttl)]
        if not keys:
            if commands:
                self._retrying(lambda: self._wire().call_checked(*commands), writes[0].key)
            return []
        commands.append(("MGET", *[self._key(k) for k in keys]))
        values: list[bytes | None] = self._wire().call_checked(*commands)[-1]
        self._local.seen = dict(zip(keys, values))
        return values

    def stage_results(self, writes: Sequence[ResultWrite]) -> None:
        """Put the writes on this thread's connection: they go out ahead of its next command to
        this database (the worker's ack of the task, in one round trip), or at its next flush."""
        wire = self._wire()
        for write in writes:
            wire.defer(*_set_commands(self._key(write.key), write.value, write.ttl))

    def redis_pool(self) -> Any:
        """The redis-py pool whose database this store uses (to tell whether a broker shares it)."""
        return self.client().connection_pool

    def _get(self, key: str) -> bytes | None:
        return self._mget([key])[0]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = self._wire().call_one("MGET", *[self._key(k) for k in keys])
        self._local.seen = dict(zip(keys, values))
        return values

    def _delete(self, keys: Sequence[str]) -> None:
        names = [self._key(k) for k in keys]
        for start in range(0, len(names), _DELETE_CHUNK):
            chunk = names[start:start + _DELETE_CHUNK]
            # _retrying calls the lambda before the loop moves on: it sees this chunk
            self._retrying(lambda: self.client().delete(*chunk), chunk[0])  # noqa: B023

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        # Not retried here: a connection lost after EXEC ran would count twice.
        name = self._key(key)
        pipe = self.client().pipeline(transaction=True)
        pipe.incrby(name, amount)
        if ttl:
            pipe.pexpire(name, _ttl_ms(ttl))
        # Celery does not publish counters; an empty message is harmless to it and lets
        # _wait_change on a counter wake at once.
        pipe.publish(name, b"")
        try:
            value = pipe.execute()[0]
        except ResponseError as exc:
            raise BackendError(f"the value at {key!r} is not an integer") from exc
        return int(value)

    def _wait_change(self, keys: Sequence[str], timeout: float) -> None:
        seen: dict[str, bytes | None] = getattr(self._local, "seen", None) or {}
        self._local.seen = None
        deadline = time.monotonic() + timeout
        names = [self._key(k) for k in keys]
        subscriber = self._subscriber_for_waits()
        watch = subscriber.watch(names)
        try:
            if not watch.armed(deadline):
                return
            known = [k for k in keys if k in seen]
            if known and self.client().mget([self._key(k) for k in known]) != [
                    seen[k] for k in known]:
                return  # written between the caller's read and our subscribe
            watch.take(deadline)
        finally:
            subscriber.unwatch(watch)

    # ---- append-only logs (AppendLog): one Redis stream per log ---------------------------------
    def log_append(self, key: str, entries: Sequence[bytes], ttl: float | None) -> None:
        name = self._key(key)
        pipe = self.client().pipeline(transaction=True)
        for entry in entries:
            pipe.xadd(name, {b"v": entry})
        if ttl:
            pipe.pexpire(name, _ttl_ms(ttl))
        # not retried: a connection lost after EXEC ran would append twice (the reader counts
        # each subtask once all the same)
        pipe.execute()

    def log_read(self, key: str, cursor: str, limit: int,
                 timeout: float) -> tuple[list[bytes], str]:
        # blocks in the server, never longer than the client's socket timeout allows
        block_ms = max(1, int(min(timeout, 60.0) * 1000)) if timeout > 0 else None
        reply: Any = self.client().xread({self._key(key): cursor or "0-0"}, count=int(limit),
                                         block=block_ms)
        if not reply:
            return [], cursor
        items: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
        last = items[-1][0]
        return [fields[b"v"] for _, fields in items], (
            last.decode() if isinstance(last, bytes) else str(last))

    def log_trim(self, key: str, cursor: str) -> None:
        if cursor:
            # entries up to the cursor: every id below the next one possible after it
            ms, _, seq = cursor.partition("-")
            self.client().xtrim(self._key(key), minid=f"{ms}-{int(seq or 0) + 1}",
                                approximate=False)

    def log_delete(self, key: str) -> None:
        self.client().delete(self._key(key))

    # ---- locks (Locks): SET NX PX, and scripts that change a lock only for its token -------------
    def lock_acquire(self, key: str, token: str, ttl: float) -> bool:
        return bool(self._retrying(lambda: self.client().eval(
            _LOCK_ACQUIRE, 1, self._key(key), token, _ttl_ms(ttl)), key))

    def lock_release(self, key: str, token: str) -> bool:
        return bool(self._retrying(lambda: self.client().eval(
            _LOCK_RELEASE, 1, self._key(key), token), key))

    def lock_extend(self, key: str, token: str, ttl: float) -> bool:
        return bool(self._retrying(lambda: self.client().eval(
            _LOCK_EXTEND, 1, self._key(key), token, _ttl_ms(ttl)), key))

    def lock_owner(self, key: str) -> str | None:
        held: bytes | None = self._wire().call_one("GET", self._key(key))
        return None if held is None else held.decode()

    # ---- listing (KeyListing): SCAN with a literal prefix ---------------------------------------
    def keys_with_prefix(self, prefix: str) -> list[str]:
        skip = len(self.keyprefix)
        pattern = _glob_escape(self._key(prefix)) + "*"
        names = self.client().scan_iter(match=pattern, count=500)
        return sorted((n.decode() if isinstance(n, bytes) else str(n))[skip:] for n in names)

    # ---- rate limits (RateLimits): one script, on the server's clock -----------------------------
    def rate_take(self, bucket: str, interval: float, ticket: str,
                  count: int = 1) -> RateGrant:
        # Retried after a lost connection: a reserved slot is found again under its ticket (a
        # grant whose reply was lost costs its slots, never an extra run).
        keys = (self._key(RATE_BUCKET_PREFIX + bucket), self._key(rate_slot_key(bucket, ticket)))
        waited, slots = self._retrying(lambda: self._wire().call_one(
            "EVALSHA", _RATE_TAKE_SHA, 2, *keys, max(1, round(interval * 1e6)),
            round(RATE_SLOT_MARGIN * 1e6), max(1, int(count))), keys[0])
        return RateGrant(max(0, int(waited)) / 1e6, int(slots))

    # ---- chords (Celery 5.7's keys and semantics; see backends/redis_chord.py) -------------------
    def _chord_keys(self, group_id: str) -> dict[str, str]:
        return {suffix: self._key(self.chord_key(group_id, suffix))
                for suffix in (".j", ".t", ".s", ".d", ".c")}

    def set_chord_size(self, group_id: str, size: int) -> None:
        keys = self._chord_keys(group_id)
        commands = [("DEL", keys[".c"]),
                    *_set_commands(keys[".s"], str(int(size)).encode(), self.expires or None,
                                   publish=False)]
        self._retrying(lambda: self._wire().call_checked(*commands), keys[".s"])

    def _part_return_command(self, group_id: str, task_id: str, group_index: int | None,
                             entry: bytes, claim_token: str, claim_ttl: float) -> tuple[Any, ...]:
        return redis_chord.part_return_command(
            self._chord_keys(group_id), task_id, group_index, entry, expires=self.expires,
            claim_token=claim_token, claim_ttl=claim_ttl)

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          entry: bytes, *, claim_token: str, claim_ttl: float) -> ChordPart:
        # Safe to retry: the member counts once, and the same token keeps the claim it took.
        command = self._part_return_command(group_id, task_id, group_index, entry, claim_token,
                                            claim_ttl)
        return redis_chord.part_from_reply(self._retrying(
            lambda: self._wire().call(command)[0], self.chord_key(group_id)))

    def write_and_part_return(self, write: ResultWrite, group_id: str, task_id: str,
                              group_index: int | None, entry: bytes, *, claim_token: str,
                              claim_ttl: float) -> ChordPart:
        """``write_results([write])`` then ``chord_part_return``, in one script and one round
        trip (a header task's own result, then its count). Safe to retry, as both are."""
        command = redis_chord.write_and_part_return_command(
            self._chord_keys(group_id), self._key(write.key), write.value, write.ttl, task_id,
            group_index, entry, expires=self.expires, claim_token=claim_token,
            claim_ttl=claim_ttl)
        return redis_chord.part_from_reply(self._retrying(
            lambda: self._wire().call(command)[0], write.key))

    def chord_part_return_later(self, group_id: str, task_id: str, group_index: int | None,
                                entry: bytes, *, claim_token: str, claim_ttl: float,
                                then: Callable[[ChordPart], None]) -> None:
        """``chord_part_return`` sent with this thread's next round trip (the worker's next
        ack or flush); ``then(part)`` runs once it is over. Sent again if that round trip
        fails, which is safe (see above)."""
        command = self._part_return_command(group_id, task_id, group_index, entry, claim_token,
                                            claim_ttl)
        self._wire().defer_read(command, lambda reply: then(redis_chord.part_from_reply(reply)),
                                retain=True)

    def chord_results(self, group_id: str) -> list[bytes]:
        entries: list[bytes] = self._wire().call_one(
            "ZRANGE", self._key(self.chord_key(group_id, ".j")), 0, -1)
        return entries

    def chord_cleanup(self, group_id: str, claim_token: str, done_ttl: float) -> bool:
        return redis_chord.cleanup(self._wire(), self._chord_keys(group_id), claim_token,
                                   done_ttl)

    def _retrying(self, operation: Callable[[], Any], key: str) -> Any:
        """Run a write, retrying transient connection errors; the last one is raised, so the
        worker does not acknowledge a task whose result was not stored."""
        delays = iter(_STORE_RETRY_DELAYS)
        while True:
            try:
                return operation()
            except _TRANSIENT as exc:
                delay = next(delays, None)
                if delay is None:
                    raise
                logger.warning("Redis result store: writing %s failed (%s); retrying in %.1fs",
                               key, exc, delay)
                time.sleep(delay)

    # ---- waiting, without polling ----------------------------------------------------------------
    def wait_for(self, task_id: str, timeout: float | None = None,
                 states_wanted: frozenset[str] = states.READY_STATES) -> dict[str, Any]:
        """Celery's reading order: SUBSCRIBE, GET, then wait for PUBLISH. One waiting thread at
        a time does it on a connection of its own, SUBSCRIBE and GET in one packet
        (``SoloWaiter``); the others, or all on a server without RESP3, through the shared
        listener, after a first GET."""
        deadline = None if timeout is None else time.monotonic() + timeout
        solo = self._solo_waiter()
        if solo is not None and solo.try_acquire():
            try:
                meta = self._wait_solo(solo, task_id, timeout, deadline, states_wanted)
            finally:
                solo.release()
            if meta is not None:
                return meta
        meta = self.get_task_meta(task_id)
        if meta["status"] in states_wanted:
            return meta
        name = self._key(self.task_key(task_id))
        subscriber = self._subscriber_for_waits()
        watch = subscriber.watch([name])
        try:
            if not watch.armed(deadline):
                raise self._timed_out(timeout, f"task {task_id} (still {meta['status']})")
            meta = self.get_task_meta(task_id)
            while meta["status"] not in states_wanted:
                news = watch.take(deadline)
                if news is None:
                    raise self._timed_out(timeout, f"task {task_id} (still {meta['status']})")
                raw = news.get(name)
                meta = self.decode(raw) if raw is not None else self.get_task_meta(task_id)
            return meta
        finally:
            subscriber.unwatch(watch)

    def _wait_solo(self, solo: SoloWaiter, task_id: str, timeout: float | None,
                   deadline: float | None, states_wanted: frozenset[str]) -> dict[str, Any] | None:
        """``wait_for`` on the solo connection; None when it cannot serve (the caller goes on
        through the shared listener, which reads the key again: nothing is missed)."""
        last: list[dict[str, Any]] = []

        def answer(raw: bytes | None) -> dict[str, Any] | None:
            meta = metamod.pending_meta(task_id) if raw is None else self.decode(raw)
            last[:] = [meta]
            return meta if meta["status"] in states_wanted else None

        name = self._key(self.task_key(task_id))
        try:
            found, meta = solo.wait(name, name, answer, deadline)
        except Unsupported as exc:
            logger.debug("Redis result store: waiting on the shared listener only (%s)", exc)
            return None
        except _TRANSIENT as exc:
            logger.debug("Redis result store: the waiting connection failed (%r); waiting on the "
                         "shared listener", exc)
            return None
        if not found:
            state = last[0]["status"] if last else states.PENDING
            raise self._timed_out(timeout, f"task {task_id} (still {state})")
        return cast(dict[str, Any], meta)

    def wait_for_many(self, task_ids: Sequence[str], timeout: float | None = None, *,
                      until_failure: bool = False) -> dict[str, dict[str, Any]]:
        """Subscribe to every pending task, MGET once, then take the PUBLISHes as they come."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = {t: m for t, m in self.get_many_meta(task_ids).items()
                if m["status"] in states.READY_STATES}
        pending = {self._key(self.task_key(t)): t for t in task_ids if t not in done}
        if not pending or (until_failure and _any_failed(done)):
            return {t: done[t] for t in task_ids if t in done}
        subscriber = self._subscriber_for_waits()
        watch = subscriber.watch(list(pending))
        try:
            if not watch.armed(deadline):
                raise self._not_ready(timeout, list(pending.values()))
            news: dict[str, bytes | None] = dict.fromkeys(pending)
            while True:
                reread = [name for name, raw in news.items() if raw is None and name in pending]
                if reread:
                    metas = self.get_many_meta([pending[n] for n in reread])
                    found = {n: metas[pending[n]] for n in reread}
                else:
                    found = {}
                found.update((n, self.decode(raw)) for n, raw in news.items()
                             if raw is not None and n in pending)
                for name, meta in found.items():
                    if meta["status"] in states.READY_STATES:
                        done[pending.pop(name)] = meta
                if not pending or (until_failure and _any_failed(done)):
                    return {t: done[t] for t in task_ids if t in done}
                taken = watch.take(deadline)
                if taken is None:
                    raise self._not_ready(timeout, list(pending.values()))
                news = taken
        finally:
            subscriber.unwatch(watch)


# ---- helpers ------------------------------------------------------------------------------------
def client_options(url: str, conf: Any = None, transport_options: dict[str, Any] | None = None
                   ) -> tuple[str, str, dict[str, Any]]:
    """Split a backend URL into (URL redis-py understands, key prefix, client keyword options)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "unix", "redis+socket"):
        raise ImproperlyConfigured(f"result_backend: not a Redis URL: {redact_url(url)!r}")
    redis_wire.check_redis_url(url, "result_backend")
    if scheme == "redis+socket":
        scheme = "unix"
    base, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    options = dict(transport_options or {})
    prefix = params.pop("global_keyprefix", None) or options.get("global_keyprefix") or ""
    kwargs: dict[str, Any] = {
        # redis-py 8 defaults to 5 s, which would break long commands; waits use their own
        # connection with no timeout at all.
        "socket_timeout": _conf(conf, "redis_socket_timeout", 120.0),
        "socket_connect_timeout": _conf(conf, "redis_socket_connect_timeout", None) or 10.0,
        "socket_keepalive": bool(_conf(conf, "redis_socket_keepalive", False)),
        "retry_on_timeout": bool(_conf(conf, "redis_retry_on_timeout", False)),
        # one quick retry for a pooled connection gone stale; _retrying handles real outages
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        "health_check_interval": 25,
    }
    max_connections = _conf(conf, "redis_max_connections", None)
    if max_connections:
        kwargs["max_connections"] = int(max_connections)
    ssl_options: dict[str, Any] = {k: params.pop(k) for k in list(params) if k.startswith("ssl_")}
    if scheme == "rediss":
        ssl_options = {**(_conf(conf, "redis_backend_use_ssl", None) or {}), **ssl_options}
        ssl_options["ssl_cert_reqs"] = _cert_reqs(ssl_options.get("ssl_cert_reqs", "required"))
        if "ssl_check_hostname" in ssl_options:
            ssl_options["ssl_check_hostname"] = str(ssl_options["ssl_check_hostname"]).lower() \
                in ("1", "true", "yes")
        kwargs.update(ssl_options)
    elif ssl_options:
        raise ImproperlyConfigured("result_backend: ssl_* options need a rediss:// URL")
    if scheme == "unix":  # TCP keepalive means nothing on a unix socket (redis-py refuses it)
        kwargs.pop("socket_keepalive", None)
    redis_url = f"{scheme}://{base}" + (f"?{urlencode(params)}" if params else "")
    try:
        parsed = _parse_url(redis_url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"result_backend: {exc} ({redact_url(url)!r})") from None
    for name in ("username", "password"):  # the settings fill in what the URL leaves out
        value = _conf(conf, f"redis_{name}", None)
        if value and name not in parsed:
            kwargs[name] = value
    return redis_url, prefix, kwargs


def _busy_poll(value: Any) -> float:
    """``result_backend_transport_options["busy_poll"]``, checked like the broker's."""
    if value is None:
        return redis_wire.DEFAULT_BUSY_POLL
    try:
        return redis_wire.busy_poll_seconds(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"result_backend_transport_options: {exc}") from None


def _cert_reqs(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # an ssl.VerifyMode
    name = _SSL_NAMES.get(value.lower())
    if name is None:
        raise ImproperlyConfigured(f"result_backend: ssl_cert_reqs={value!r} is not one of "
                                   "required, optional, none")
    return name


def _conf(conf: Any, name: str, default: Any) -> Any:
    value = getattr(conf, name, None) if conf is not None else None
    return default if value is None else value


def _set_commands(name: str, value: bytes, ttl: float | None, *,
                  publish: bool = True) -> list[tuple[Any, ...]]:
    """SETEX with whole seconds (the command Celery sends; milliseconds only when needed), then
    PUBLISH of the same bytes on the key's channel, so a waiting Celery reader wakes."""
    if not ttl:
        write: tuple[Any, ...] = ("SET", name, value)
    elif ttl >= 1 and float(ttl).is_integer():
        write = ("SETEX", name, int(ttl), value)
    else:
        write = ("SET", name, value, "PX", _ttl_ms(ttl))
    return [write, ("PUBLISH", name, value)] if publish else [write]


def _ttl_ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
