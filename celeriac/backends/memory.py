"""The in-process result store (``memory://``): a dict with expiry and change notification.

Layer: backends. Used by tests and single-process apps. Values are kept as the encoded bytes, like
a real store, so a reader mutating its copy never changes what is stored. Every backend opened on
the same ``memory://name`` in this process shares one store (``memory://`` is the shared default),
so a client app and a worker app in one process see the same results.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Sequence

from ..exceptions import BackendError
from ..utils import memory_wire
from ..utils.registry import NamedRegistry
from .base import (
    CHORD_DONE,
    RATE_BUCKET_PREFIX,
    RATE_SLOT_MARGIN,
    ChordPart,
    RateGrant,
    ResultBackend,
    ResultWrite,
    join_member,
    rate_slot_key,
    rate_step,
)

#: how often (seconds) a write also sweeps out expired keys nobody read again
_SWEEP_INTERVAL = 10.0


class _Store:
    """The shared state behind every backend opened on one ``memory://`` name."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        #: key -> (value, expires_at on the monotonic clock or None)
        self.data: dict[str, tuple[bytes, float | None]] = {}
        #: key -> sequence number of its last write; what waiters compare against
        self.stamps: dict[str, int] = {}
        self.seq = itertools.count(1)
        self.next_sweep = 0.0
        #: chord joins: join key -> ({"<task_id>:<index>": (index, entry)}, expires_at or None)
        self.joins: dict[str, tuple[dict[str, tuple[float, bytes]], float | None]] = {}
        #: append-only logs: key -> ([(seq, entry), ...], expires_at or None)
        self.logs: dict[str, tuple[list[tuple[int, bytes]], float | None]] = {}

    def live(self, key: str, now: float) -> bytes | None:
        """The value at ``key`` unless expired (expired entries are dropped). Hold ``cond``."""
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self.data[key]
            self.stamps.pop(key, None)
            return None
        return entry[0]

    def put(self, key: str, value: bytes, expires_at: float | None, now: float) -> None:
        """Write and wake waiters. Hold ``cond``."""
        self.data[key] = (value, expires_at)
        self.stamps[key] = next(self.seq)
        if now >= self.next_sweep:
            self.next_sweep = now + _SWEEP_INTERVAL
            for stale in [k for k, (_, exp) in self.data.items() if exp is not None and exp <= now]:
                del self.data[stale]
                self.stamps.pop(stale, None)
            for stale in [k for k, (_, exp) in self.joins.items()
                          if exp is not None and exp <= now]:
                del self.joins[stale]
            for stale in [k for k, (_, exp) in self.logs.items()
                          if exp is not None and exp <= now]:
                del self.logs[stale]
        self.cond.notify_all()


_REGISTRY: NamedRegistry[_Store] = NamedRegistry(_Store)
_shared_store = _REGISTRY.get


def reset(name: str | None = None) -> None:
    """Forget the shared store ``memory://name`` (every one when None) so tests start clean."""
    _REGISTRY.reset(name)


class MemoryBackend(ResultBackend):
    """Results kept in this process; thread-safe, and waiters wake on the write itself."""

    def __init__(self, app: Any = None, url: str | None = None, **options: Any) -> None:
        super().__init__(app=app, url=url, **options)
        rest = url.split("://", 1)[1] if url and "://" in url else ""
        self.name = rest.split("?", 1)[0].strip("/")
        self._store = _shared_store(self.name)
        # The stamps of the keys this thread last read: a write landing between that read and
        # the following _wait_change must still wake it.
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<MemoryBackend memory://{self.name}>"

    # ---- staged writes (shared with a memory broker of the same name) ---------------------------
    def memory_wire(self) -> memory_wire.MemoryWire:
        return memory_wire.wire_for(self.name)

    def stage_results(self, writes: Sequence[ResultWrite]) -> None:
        batch = list(writes)
        self.memory_wire().stage(lambda: self.write_results(batch))

    def chord_part_return_later(self, group_id: str, task_id: str, group_index: int | None,
                                entry: bytes, *, claim_token: str, claim_ttl: float,
                                then: Callable[[ChordPart], None]) -> None:
        self.memory_wire().stage(lambda: then(self.chord_part_return(
            group_id, task_id, group_index, entry, claim_token=claim_token,
            claim_ttl=claim_ttl)))

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        now = time.monotonic()
        with self._store.cond:
            self._store.put(key, bytes(value), now + ttl if ttl else None, now)

    def _get(self, key: str) -> bytes | None:
        return self._mget([key])[0]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        store = self._store
        now = time.monotonic()
        with store.cond:
            values = [store.live(k, now) for k in keys]
            self._local.seen = {k: store.stamps.get(k, 0) for k in keys}
        return values

    def _delete(self, keys: Sequence[str]) -> None:
        store = self._store
        with store.cond:
            for key in keys:
                store.data.pop(key, None)
                store.stamps.pop(key, None)
            store.cond.notify_all()

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        store = self._store
        now = time.monotonic()
        with store.cond:
            current = store.live(key, now)
            value = _as_int(key, current) + amount if current is not None else amount
            # Like Redis INCR + EXPIRE: a ttl refreshes the expiry, no ttl keeps the old one.
            expires_at = now + ttl if ttl else (store.data[key][1] if current is not None else None)
            store.put(key, str(value).encode(), expires_at, now)
        return value

    # ---- chord joins ----------------------------------------------------------------------------
    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          entry: bytes, *, claim_token: str, claim_ttl: float) -> ChordPart:
        store = self._store
        jkey, ckey = self.chord_key(group_id, ".j"), self.chord_key(group_id, ".c")
        now = time.monotonic()
        ttl = self.expires or None
        member, index = join_member(task_id, group_index)
        with store.cond:
            claim = store.live(ckey, now)
            if claim == CHORD_DONE:
                return ChordPart(-1, None, False)
            members = store.joins.get(jkey, ({}, None))[0]
            members.setdefault(member, (index, bytes(entry)))
            store.joins[jkey] = (members, now + ttl if ttl else None)
            for suffix in (".s", ".t"):  # every arrival pushes the chord's expiry back, as on Redis
                held = store.data.get(self.chord_key(group_id, suffix))
                if held is not None and ttl:
                    store.data[self.chord_key(group_id, suffix)] = (held[0], now + ttl)
            ready = len(members)
            size = store.live(self.chord_key(group_id, ".s"), now)
            extra = store.live(self.chord_key(group_id, ".t"), now)
            expected = int(size) + int(extra or 0) if size is not None else None
            claimed = expected is not None and ready == expected and claim is None
            if claimed:
                store.put(ckey, claim_token.encode(), now + claim_ttl, now)
        return ChordPart(ready, expected, claimed)

    def chord_results(self, group_id: str) -> list[bytes]:
        with self._store.cond:
            members = self._store.joins.get(self.chord_key(group_id, ".j"), ({}, None))[0]
            return [entry for _, entry in sorted(members.values(), key=lambda item: item[0])]

    def chord_cleanup(self, group_id: str, claim_token: str, done_ttl: float) -> bool:
        store = self._store
        now = time.monotonic()
        ckey = self.chord_key(group_id, ".c")
        with store.cond:
            if store.live(ckey, now) != claim_token.encode():
                return False
            store.joins.pop(self.chord_key(group_id, ".j"), None)
            for suffix in (".s", ".t"):
                store.data.pop(self.chord_key(group_id, suffix), None)
            store.put(ckey, CHORD_DONE, now + done_ttl if done_ttl else None, now)
        return True

    # ---- append-only logs (AppendLog) -----------------------------------------------------------
    def log_append(self, key: str, entries: Sequence[bytes], ttl: float | None) -> None:
        store = self._store
        now = time.monotonic()
        with store.cond:
            held = store.logs.get(key, ([], None))[0]
            held.extend((next(store.seq), bytes(entry)) for entry in entries)
            store.logs[key] = (held, now + ttl if ttl else None)
            store.cond.notify_all()

    def log_read(self, key: str, cursor: str, limit: int,
                 timeout: float) -> tuple[list[bytes], str]:
        store = self._store
        after = int(cursor or 0)
        deadline = time.monotonic() + timeout
        with store.cond:
            while True:
                held = store.logs.get(key, ([], None))[0]
                found = [item for item in held if item[0] > after][:limit]
                if found:
                    return [entry for _, entry in found], str(found[-1][0])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], cursor
                store.cond.wait(remaining)

    def log_trim(self, key: str, cursor: str) -> None:
        store = self._store
        upto = int(cursor or 0)
        with store.cond:
            held, expires_at = store.logs.get(key, ([], None))
            if held:
                store.logs[key] = ([item for item in held if item[0] > upto], expires_at)

    def log_delete(self, key: str) -> None:
        with self._store.cond:
            self._store.logs.pop(key, None)

    # ---- locks (Locks): a key holding its token, expiring on the monotonic clock ----------------
    def lock_acquire(self, key: str, token: str, ttl: float) -> bool:
        store = self._store
        now = time.monotonic()
        with store.cond:
            held = store.live(key, now)
            if held is not None and held != token.encode():
                return False
            store.put(key, token.encode(), now + ttl, now)
        return True

    def lock_release(self, key: str, token: str) -> bool:
        store = self._store
        with store.cond:
            if store.live(key, time.monotonic()) != token.encode():
                return False
            store.data.pop(key, None)
            store.stamps.pop(key, None)
        return True

    def lock_extend(self, key: str, token: str, ttl: float) -> bool:
        store = self._store
        now = time.monotonic()
        with store.cond:
            if store.live(key, now) != token.encode():
                return False
            store.data[key] = (token.encode(), now + ttl)
        return True

    def lock_owner(self, key: str) -> str | None:
        with self._store.cond:
            held = self._store.live(key, time.monotonic())
        return None if held is None else held.decode()

    # ---- listing (KeyListing) ------------------------------------------------------------------
    def keys_with_prefix(self, prefix: str) -> list[str]:
        store = self._store
        with store.cond:
            now = time.monotonic()
            return sorted(key for key in list(store.data)
                          if key.startswith(prefix) and store.live(key, now) is not None)

    # ---- rate limits (RateLimits): the bucket and the slots as keys, under the store's mutex --
    def rate_take(self, bucket: str, interval: float, ticket: str,
                  count: int = 1) -> RateGrant:
        store = self._store
        bucket_key, slot_key = RATE_BUCKET_PREFIX + bucket, rate_slot_key(bucket, ticket)
        with store.cond:
            now = time.monotonic()
            slot, tat = store.live(slot_key, now), store.live(bucket_key, now)
            step = rate_step(now, None if tat is None else float(tat),
                             None if slot is None else float(slot), interval, count)
            if step.used:
                store.data.pop(slot_key, None)
                store.stamps.pop(slot_key, None)
            if step.tat is not None:
                store.data[bucket_key] = (repr(step.tat).encode(), step.tat + 1.0)
            if step.reserve is not None:
                store.data[slot_key] = (repr(step.reserve).encode(),
                                        step.reserve + RATE_SLOT_MARGIN)
        return step.grant

    def _wait_change(self, keys: Sequence[str], timeout: float) -> None:
        store = self._store
        seen: dict[str, int] = getattr(self._local, "seen", None) or {}
        self._local.seen = None
        deadline = time.monotonic() + timeout
        with store.cond:
            baseline = {k: seen.get(k, store.stamps.get(k, 0)) for k in keys}
            while all(store.stamps.get(k, 0) == stamp for k, stamp in baseline.items()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                store.cond.wait(remaining)


def _as_int(key: str, raw: bytes) -> int:
    """Redis's rule: only the canonical decimal form counts as an integer."""
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or str(value).encode() != raw:
        raise BackendError(f"the value at {key!r} is not an integer")
    return value
