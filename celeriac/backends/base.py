"""The result-store interface: Celery's meta layout over a few key-value primitives.

Layer: backends. A concrete store implements the primitives (``_set``/``_get``/``_mget``/
``_delete``/``_incr``/``_wait_change``); this class turns them into Celery's operations, so every
store writes the same documents (``celery-task-meta-<id>``, see backends/meta.py). Chords, groups
and batches build on ``incr`` and the key-value calls; they never live inside a store.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Protocol, Sequence, runtime_checkable

from .. import states
from ..exceptions import EncodeError
from ..exceptions import TimeoutError as CeleriacTimeoutError
from ..protocol import serialization
from ..utils.spin import spin_seconds
from . import meta as metamod

TASK_KEY_PREFIX = "celery-task-meta-"
#: seconds a ``get()`` looks for its result before it sleeps, when the last wait was over within
#: that long: the thread's last one on SQLite, the last one on the process's own waiting
#: connection on Redis (``result_backend_transport_options["wait_spin"]``, ``utils/spin.py``).
#: Off by default: on the benchmark machine it shortened round trips in one slow spell and
#: lengthened them in another, the looking thread taking CPU the worker needed
#: (docs/benchmarks.md).
DEFAULT_WAIT_SPIN = 0.0
GROUP_KEY_PREFIX = "celery-taskset-meta-"


#: what a chord's dispatch claim holds once the body has been sent (Celery 5.7's marker)
CHORD_DONE = b"done"


@dataclass(frozen=True, slots=True)
class ChordPart:
    """What counting one header result in a chord's join found."""

    #: distinct header results counted so far; -1 when the chord had already fired (a late copy)
    ready: int
    #: results the chord waits for (its size plus ``add_to_chord`` extras); None while unknown
    expected: int | None
    #: True for exactly one caller: the one that counted the last result and must fire the body
    claimed: bool


def join_member(task_id: str, group_index: int | None) -> tuple[str, float]:
    """A header result's identity in a chord's join, ``"<id>:<index>"`` (counted once, however
    often it is delivered), and its place in header order (without an index: after the rest)."""
    if group_index is None:
        return f"{task_id}:+inf", float("inf")
    return f"{task_id}:{int(group_index)}", float(group_index)


@dataclass(frozen=True, slots=True)
class ResultWrite:
    """One result document, encoded and addressed, not yet sent."""

    key: str
    value: bytes
    ttl: float | None
    meta: dict[str, Any]


@runtime_checkable
class StagedWrites(Protocol):
    """A store that shares each thread's connection with the broker (see the transport's
    ``SharedConnectionSettling``): writes can be put on that connection now and travel with
    the thread's next round trip, in order, before the ack queued after them."""

    def stage_results(self, writes: Sequence[ResultWrite]) -> None: ...

    def chord_part_return_later(self, group_id: str, task_id: str, group_index: int | None,
                                entry: bytes, *, claim_token: str, claim_ttl: float,
                                then: Callable[[ChordPart], None]) -> None: ...


@runtime_checkable
class AppendLog(Protocol):
    """A store that keeps append-only logs: entries pushed by many writers, read in order from a
    cursor by one reader that may wait for more, and trimmed once handled. Dispatch keeps each
    dispatch's finished subtasks here (its inbox), so a reader that crashes and comes back reads
    again from its last saved cursor and loses nothing. Cursors are opaque strings; ``""`` is the
    start."""

    def log_append(self, key: str, entries: Sequence[bytes], ttl: float | None) -> None:
        """Append ``entries`` in order (one atomic step) and push the log's expiry back."""

    def log_read(self, key: str, cursor: str, limit: int,
                 timeout: float) -> tuple[list[bytes], str]:
        """Up to ``limit`` entries after ``cursor`` and the cursor after the last of them;
        waits up to ``timeout`` seconds for one when there are none (then ``([], cursor)``)."""

    def log_trim(self, key: str, cursor: str) -> None:
        """Drop the entries up to and including ``cursor`` (they were handled)."""

    def log_delete(self, key: str) -> None:
        """Drop the whole log."""


@runtime_checkable
class Locks(Protocol):
    """A store that holds named locks, each held by a token and expiring on the store's clock
    unless renewed, so a holder that dies frees it after its ``ttl``. Every call is one atomic
    step in the store (no read-then-write a second client could slip between); ``app.lock()``
    and the task options ``lock`` and ``unique`` (celeriac/locks.py) build on it."""

    def lock_acquire(self, key: str, token: str, ttl: float) -> bool:
        """Take ``key`` for ``token`` for ``ttl`` seconds if nobody holds it (or it expired);
        True if ``token`` holds it now. Never waits. Acquiring again with the token that holds
        it succeeds and restarts its ``ttl`` (a retried call is harmless)."""

    def lock_release(self, key: str, token: str) -> bool:
        """Free ``key`` if ``token`` still holds it; False (and nothing changed) otherwise."""

    def lock_extend(self, key: str, token: str, ttl: float) -> bool:
        """Restart the ``ttl`` of ``key`` if ``token`` still holds it; False otherwise."""

    def lock_owner(self, key: str) -> str | None:
        """The token holding ``key``, or None when it is free."""


@runtime_checkable
class KeyListing(Protocol):
    """A store whose live keys can be listed by prefix, for readers that must find records
    they hold no id for: the dashboard finds every worker's heartbeat record this way."""

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Every live (unexpired) key that starts with ``prefix``, sorted. Meant for small
        families of keys (one per worker), not for walking every result."""


#: where a rate bucket keeps its theoretical arrival time, and where a call's reserved slot is
RATE_BUCKET_PREFIX = "celeriac-rate-bucket-"
RATE_SLOT_PREFIX = "celeriac-rate-slot-"
#: seconds a reserved slot is kept after its time, for a call whose message comes back late (a
#: busy broker, a worker whose pool was full); after that the call contends again
RATE_SLOT_MARGIN = 60.0


def rate_slot_key(bucket: str, ticket: str) -> str:
    """The key of ``ticket``'s reserved slot in ``bucket`` (every store names it alike)."""
    return f"{RATE_SLOT_PREFIX}{bucket}|{ticket}"


class RateGrant(NamedTuple):
    """What one ``rate_take`` gives: the call runs now (``slots`` >= 1) or waits (``wait``)."""

    #: seconds until the call may run (0.0: now)
    wait: float
    #: slots granted now: the call's own, and ``slots - 1`` more the caller may hand out to
    #: later calls within the block's horizon; 0 when the call must wait
    slots: int


@runtime_checkable
class RateLimits(Protocol):
    """A store that spaces calls out across every process that uses it: one GCRA bucket per
    name (a "theoretical arrival time" on the store's clock, burst of 1), each take one atomic
    step in the store. A call that must wait gets a slot reserved under its ``ticket``, so when
    it comes back at that time it runs without contending again: N waiting calls cost N
    reservations, not N retries per free slot. A caller may take a block of slots in one step
    (``count``), so a high rate costs one round trip per block rather than per call. The
    worker's rate limits build on it (worker/rate_limits.py)."""

    def rate_take(self, bucket: str, interval: float, ticket: str,
                  count: int = 1) -> RateGrant:
        """Slots are ``interval`` seconds apart. Up to ``count`` of the bucket's next free slots
        are granted when the first of them has come: as many as fall within the horizon of
        ``(count - 1) * interval`` seconds from now (``wait`` 0.0, ``slots`` >= 1; with
        ``count`` 1, exactly the classic single slot). Else one slot is reserved for
        ``ticket`` and ``wait`` is the seconds until it (the same slot however often it asks
        before then; kept until ``RATE_SLOT_MARGIN`` seconds after its time); when it has
        come, that reserved slot alone is granted and used up."""


@dataclass(frozen=True, slots=True)
class RateStep:
    """What one ``rate_take`` does to a bucket: pure arithmetic, shared by the stores that run
    it in Python (Redis runs the same steps in Lua, on the server's clock)."""

    #: seconds until the call may run (0.0: now)
    wait: float
    #: the bucket's new theoretical arrival time; None leaves it as it is
    tat: float | None = None
    #: a slot to keep for the ticket (at this time); None keeps none
    reserve: float | None = None
    #: the ticket's reserved slot has come and is used up now: drop it
    used: bool = False
    #: slots granted (``RateGrant.slots``)
    slots: int = 0

    @property
    def grant(self) -> RateGrant:
        return RateGrant(self.wait, self.slots)


def rate_step(now: float, tat: float | None, slot: float | None, interval: float,
              count: int = 1) -> RateStep:
    """GCRA with a burst of 1, reservations and blocks. ``tat``: the bucket's arrival time
    (None when it has none); ``slot``: the time reserved for this ticket, if any; ``count``:
    the most slots to grant, within ``(count - 1) * interval`` seconds of now."""
    if slot is not None:  # it was given a slot: that one, and only once
        return RateStep(0.0, used=True, slots=1) if slot <= now else RateStep(slot - now)
    first = now if tat is None or tat <= now else tat
    count = max(1, count)
    horizon = now + (count - 1) * interval
    if first <= horizon:
        slots = min(count, int((horizon - first) / interval + 1e-9) + 1)
        return RateStep(0.0, tat=first + slots * interval, slots=slots)
    return RateStep(first - now, tat=first + interval, reserve=first)


#: ``ResultBackend.last_store``'s numbers (``next`` is atomic: no two calls get the same one)
_store_serials = itertools.count(1)


class ResultBackend(ABC):
    """Stores and reads task results in Celery's meta format."""

    #: whether results are persisted at all (DisabledBackend says no)
    persistent = True
    #: whether a worker sends results here at all (DisabledBackend says no). Not the same as
    #: ``persistent``: rpc:// takes every result but keeps none (each goes to the caller's reply
    #: queue), so revokes, chords and other readers cannot use it.
    receives_results = True
    #: whether ``write_results_then_mget`` sends its writes and its read in one round trip
    #: (else it is the two calls, and a worker sends kept results on their own)
    writes_ride_with_reads = False
    #: the serial number of the latest ``store_result`` call through any store of this process,
    #: from any thread (each call takes a new one): a batch reads back what its task may have
    #: stored itself (``app.backend.mark_as_done``) only when this changed during the call
    #: (worker/batching.py)
    last_store = 0

    def __init__(self, app: Any = None, url: str | None = None, *, serializer: str | None = None,
                 accept: Iterable[str] | None = None, expires: float | None = None,
                 extended: bool | None = None, **options: Any) -> None:
        self.app = app
        self.url = url
        conf = app.conf if app is not None else None
        self.serializer = serializer or (conf.result_serializer if conf else "json")
        accept_names = accept if accept is not None else (
            conf.result_accept_content or conf.accept_content if conf else ["json"])
        self.accept = serialization.normalize_accept(accept_names)
        self.expires = expires if expires is not None else (
            _seconds(conf.result_expires) if conf else 86400.0)
        self.extended = extended if extended is not None else (
            bool(conf.result_extended) if conf else False)

    # ---- primitives a store implements -------------------------------------------------------
    @abstractmethod
    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` at ``key`` (replacing), expiring after ``ttl`` seconds if given, and
        wake anyone waiting on ``key``."""

    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _mget(self, keys: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    def _delete(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        """Atomically add ``amount`` to the integer at ``key`` (missing = 0); return the new
        value."""

    @abstractmethod
    def _wait_change(self, keys: Sequence[str], timeout: float) -> None:
        """Block until any of ``keys`` may have changed, or ``timeout`` passes. Spurious wake-ups
        are fine; missed ones are not (callers re-read after every return)."""

    # ---- chord joins: primitives a store implements -------------------------------------------
    # Keys follow Celery's Redis layout under ``celery-taskset-meta-<group_id>``: ``.s`` the size,
    # ``.t`` extras, ``.j`` the results, ``.d`` who was counted, ``.c`` the dispatch claim.
    @abstractmethod
    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          entry: bytes, *, claim_token: str, claim_ttl: float) -> ChordPart:
        """Atomically add one header result (``entry``, counted once per task id and index,
        however often it is delivered), count the results, and, if that completes the chord,
        take its dispatch claim (``.c``) for ``claim_ttl`` seconds with ``claim_token``."""

    def write_and_part_return(self, write: ResultWrite, group_id: str, task_id: str,
                              group_index: int | None, entry: bytes, *, claim_token: str,
                              claim_ttl: float) -> ChordPart:
        """A header task's own result stored, then counted (``chord_part_return``). Stores that
        can do both in one round trip or transaction (Redis, SQLite) override it."""
        self.write_results([write])
        return self.chord_part_return(group_id, task_id, group_index, entry,
                                      claim_token=claim_token, claim_ttl=claim_ttl)

    @abstractmethod
    def chord_results(self, group_id: str) -> list[bytes]:
        """Every counted entry, in header order (``group_index``)."""

    @abstractmethod
    def chord_cleanup(self, group_id: str, claim_token: str, done_ttl: float) -> bool:
        """If ``claim_token`` still holds the claim: drop the join and mark the chord done (a
        late copy of a header task then counts nothing). False if the claim was lost."""

    def close(self) -> None:
        """Release connections."""

    # ---- replies to the sender (rpc://) --------------------------------------------------------
    @property
    def reply_to(self) -> str | None:
        """What the task messages this client sends carry in ``reply_to`` when results come back
        to the sender (rpc://: its reply queue); None when they do not."""
        return None

    def prepare_replies(self) -> None:
        """Called before a task naming ``reply_to`` is sent from outside a task: make sure its
        replies have somewhere to go (rpc:// declares its reply queue). Cheap once done."""

    # ---- encoding --------------------------------------------------------------------------------
    def encode(self, obj: Any) -> bytes:
        """``obj`` in the result serializer; ``EncodeError`` for any value it cannot encode
        (pickle's own errors too), never a write of something half made."""
        return serialization.dumps(obj, self.serializer)[2]

    def decode(self, data: bytes) -> Any:
        content_type = serialization.content_type_of(self.serializer)
        return serialization.loads(data, content_type, "utf-8", accept=self.accept)

    # ---- task results ---------------------------------------------------------------------------
    def task_key(self, task_id: str) -> str:
        return TASK_KEY_PREFIX + task_id

    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, children: list[Any] | None = None) -> dict[str, Any]:
        """Write a task's state in Celery's meta layout; returns the meta written."""
        ResultBackend.last_store = next(_store_serials)
        write = self.result_write(task_id, result, state, traceback=traceback, request=request,
                                  children=children)
        self._set(write.key, write.value, write.ttl)
        return write.meta

    def result_write(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, children: list[Any] | None = None) -> ResultWrite:
        """The write ``store_result`` would make, made ready but not sent: a worker gathers
        these in a batch and sends them with other writes (see worker/pending.py)."""
        meta = metamod.build_meta(task_id, state, result, traceback=traceback, request=request,
                                  children=children, extended=self.extended)
        try:
            value = self.encode(meta)
        except EncodeError:
            if not ("args" in meta or "kwargs" in meta):
                raise
            # result_extended: the request's arguments may be what the result serializer cannot
            # encode (a task sent with pickle, results in json). The outcome must not be lost for
            # them: they are stored as their reprs. Raises again if the result is the culprit.
            meta = {**meta, "args": metamod.safe_repr(meta.get("args")),
                    "kwargs": metamod.safe_repr(meta.get("kwargs"))}
            value = self.encode(meta)
        return ResultWrite(self.task_key(task_id), value, self.expires or None, meta)

    def write_results(self, writes: Sequence[ResultWrite]) -> None:
        """Send writes made by ``result_write`` now, in order."""
        for write in writes:
            self._set(write.key, write.value, write.ttl)

    def write_results_then_mget(self, writes: Sequence[ResultWrite],
                                keys: Sequence[str]) -> list[bytes | None]:
        """``write_results(writes)``, then ``_mget(keys)``: a store that can send both in one
        round trip does (a solo worker's kept results ride with the revoke check it makes
        anyway). Raises if a write failed; the reads are then lost too."""
        self.write_results(writes)
        return self._mget(keys) if keys else []

    def mark_as_started(self, task_id: str, request: Any = None, **info: Any) -> dict[str, Any]:
        return self.store_result(task_id, info, states.STARTED, request=request)

    def mark_as_done(self, task_id: str, result: Any, request: Any = None,
                     children: list[Any] | None = None) -> dict[str, Any]:
        return self.store_result(task_id, result, states.SUCCESS, request=request,
                                 children=children)

    def mark_as_failure(self, task_id: str, exc: BaseException, traceback: str | None = None,
                        request: Any = None, state: str = states.FAILURE,
                        children: list[Any] | None = None) -> dict[str, Any]:
        return self.store_result(task_id, metamod.exception_to_dict(exc), state,
                                 traceback=traceback, request=request, children=children)

    def mark_as_retry(self, task_id: str, exc: BaseException, traceback: str | None = None,
                      request: Any = None) -> dict[str, Any]:
        return self.mark_as_failure(task_id, exc, traceback, request, state=states.RETRY)

    def mark_as_revoked(self, task_id: str, reason: str = "revoked",
                        request: Any = None) -> dict[str, Any]:
        from ..exceptions import TaskRevokedError

        return self.mark_as_failure(task_id, TaskRevokedError(reason), None, request,
                                    state=states.REVOKED)

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        """The stored meta, or a PENDING meta when nothing is stored (Celery's convention)."""
        raw = self._get(self.task_key(task_id))
        if raw is None:
            return metamod.pending_meta(task_id)
        meta: dict[str, Any] = self.decode(raw)
        return meta

    def get_many_meta(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        stored = self.stored_metas(task_ids)
        return {t: stored[t] if t in stored else metamod.pending_meta(t) for t in task_ids}

    def stored_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored meta of each of ``task_ids`` that has one, in one read; nothing for the
        rest (no PENDING document is made for them: a batch reads back a hundred ids at once,
        most of them unwritten)."""
        raws = self._mget([self.task_key(t) for t in task_ids])
        return {t: self.decode(r) for t, r in zip(task_ids, raws) if r is not None}

    def waited_on(self) -> str:
        """Where a timed-out wait looked, for its message ("" if the URL says enough); a store
        kept in a local file names the file, since a worker on another file never answers."""
        return ""

    def _timed_out(self, timeout: float | None, what: str) -> CeleriacTimeoutError:
        where = self.waited_on()
        return CeleriacTimeoutError(f"the operation timed out after {float(timeout or 0)}s waiting "
                                    f"for {what}" + (f" {where}" if where else ""))

    def _not_ready(self, timeout: float | None, pending: Sequence[str]) -> CeleriacTimeoutError:
        return self._timed_out(timeout, f"{len(pending)} task(s) (still not ready: "
                                        f"{', '.join(pending[:3])}"
                                        f"{', ...' if len(pending) > 3 else ''})")

    def wait_for(self, task_id: str, timeout: float | None = None,
                 states_wanted: frozenset[str] = states.READY_STATES) -> dict[str, Any]:
        """Block until the task's state is in ``states_wanted``; raise TimeoutError after
        ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self.task_key(task_id)
        while True:
            meta = self.get_task_meta(task_id)
            if meta["status"] in states_wanted:
                return meta
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(timeout, f"task {task_id} (still {meta['status']})")
            self._wait_change([key], min(remaining, 1.0))

    def wait_for_many(self, task_ids: Sequence[str], timeout: float | None = None, *,
                      until_failure: bool = False) -> dict[str, dict[str, Any]]:
        """Block until every task is ready (or, ``until_failure``, until one has failed);
        returns the metas of those that are ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, dict[str, Any]] = {}
        pending = list(task_ids)
        while True:
            for tid, meta in self.get_many_meta(pending).items():
                if meta["status"] in states.READY_STATES:
                    done[tid] = meta
            pending = [t for t in pending if t not in done]
            if not pending or (until_failure and _any_failed(done)):
                return done
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise self._not_ready(timeout, pending)
            self._wait_change([self.task_key(t) for t in pending], min(remaining, 1.0))

    def forget(self, task_id: str) -> None:
        self._delete([self.task_key(task_id)])

    # ---- counters and group meta (used by chords, groups, dispatch, batches) ---------------------
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        return self._incr(key, amount, ttl if ttl is not None else (self.expires or None))

    def set_value(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._set(key, self.encode(value), ttl if ttl is not None else (self.expires or None))

    def get_value(self, key: str) -> Any:
        raw = self._get(key)
        return None if raw is None else self.decode(raw)

    def delete_keys(self, keys: Sequence[str]) -> None:
        self._delete(keys)

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        self.set_value(GROUP_KEY_PREFIX + group_id, {"result": result_tuple})

    def restore_group(self, group_id: str) -> Any:
        value = self.get_value(GROUP_KEY_PREFIX + group_id)
        return None if value is None else value.get("result")

    def delete_group(self, group_id: str) -> None:
        self._delete([GROUP_KEY_PREFIX + group_id])

    # ---- chords (the join itself lives in canvas/chords.py) -------------------------------------
    def chord_key(self, group_id: str, suffix: str = "") -> str:
        return GROUP_KEY_PREFIX + group_id + suffix

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Written by the client before the header is sent (a re-applied chord starts over)."""
        self._delete([self.chord_key(group_id, ".c")])
        self._set(self.chord_key(group_id, ".s"), str(int(size)).encode(), self.expires or None)

    def add_to_chord(self, group_id: str, result: Any = None) -> None:
        """One more header result to wait for (a header task that added a task to its chord)."""
        self.incr(self.chord_key(group_id, ".t"), 1)

    # ---- exceptions --------------------------------------------------------------------------
    def exception_from_meta(self, meta: dict[str, Any]) -> BaseException:
        return metamod.exception_from_dict(meta.get("result"))


class DisabledBackend(ResultBackend):
    """No result backend configured: storing is a no-op and reading is an error naming the fix."""

    persistent = False
    receives_results = False

    def _fail(self, *_: Any, **__: Any) -> Any:
        from ..exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "No result backend is configured: set result_backend (e.g. 'sqlite:///celeriac.db')")

    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, children: list[Any] | None = None) -> dict[str, Any]:
        return {}

    def write_results(self, writes: Sequence[ResultWrite]) -> None:
        pass

    _set = _get = _mget = _delete = _incr = _wait_change = _fail
    chord_part_return = chord_results = chord_cleanup = _fail


def _any_failed(metas: dict[str, dict[str, Any]]) -> bool:
    return any(m["status"] in states.PROPAGATE_STATES for m in metas.values())


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return float(value)


def wait_spin_option(transport_options: dict[str, Any] | None) -> float:
    """``result_backend_transport_options["wait_spin"]`` as seconds (0 to 1), the default when
    absent; anything else raises ImproperlyConfigured naming the option."""
    value = (transport_options or {}).get("wait_spin")
    if value is None:
        return DEFAULT_WAIT_SPIN
    try:
        return spin_seconds(value, "wait_spin")
    except ValueError as exc:
        from ..exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"result_backend_transport_options: {exc}") from None
