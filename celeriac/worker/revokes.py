"""Revocations that outlive any one worker: kept in the result store until ``result_expires``.

Layer: worker (shared by ``app.control`` on the client side). Celery keeps revokes only in each
worker's memory, so a worker started after the revoke runs the task anyway; celeriac writes them to
the result store instead, where every worker, present or future, finds them:

- ``celeriac-revoked-<task id>``: the revoke itself (checked for each fetched batch);
- ``celeriac-revoked-seq`` and ``celeriac-revoked-log-<n>``: an append-only log workers poll
  (a few times a second) to learn of revokes, including ``terminate`` requests for running tasks.
"""

from __future__ import annotations

import logging
import signal as signal_module
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    from ..backends.base import ResultBackend, ResultWrite

logger = logging.getLogger("celeriac.worker")

REVOKED_KEY = "celeriac-revoked-"
SEQ_KEY = "celeriac-revoked-seq"
LOG_KEY = "celeriac-revoked-log-"
#: the log counter's lifetime, refreshed by each revoke: far beyond ``result_expires`` (a day),
#: so the counter does not start again at 1 after a quiet day and climb back to a worker's last
#: seen value between two of its syncs (that worker would miss the new entries); only a store
#: that is wiped starts it again
SEQ_TTL = 10 * 365 * 24 * 3600.0
#: log entries a worker's first sync reads, the newest: the counter never starts again, so after
#: years of revokes reading them all would hold up every start; older ones have expired, and each
#: fetched task's revoke key is checked anyway
FIRST_SYNC_ENTRIES = 1000
#: seconds a log entry the counter already counts is looked for again: ``record_revoke`` counts
#: it first and writes it a round trip later, so a sync in between finds it missing
LATE_ENTRY_GRACE = 10.0


def signal_number(value: Any) -> int:
    """``"SIGTERM"``, ``"TERM"``, ``15`` or a ``signal.Signals`` -> the number (SIGTERM for
    None)."""
    if value is None:
        return int(signal_module.SIGTERM)
    if isinstance(value, int):
        return int(value)
    name = str(value).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signal_module, name))
    except AttributeError:
        raise ValueError(f"unknown signal {value!r}") from None


def record_revoke(backend: "ResultBackend", task_ids: Sequence[str], *, terminate: bool = False,
                  signal: Any = None) -> None:
    """Write the revoke where every worker will see it (now and until the results expire)."""
    signum = signal_number(signal)
    entry = {"terminate": bool(terminate), "signal": signum}
    for task_id in task_ids:
        backend.set_value(REVOKED_KEY + task_id, entry)
    seq = backend.incr(SEQ_KEY, ttl=SEQ_TTL)
    backend.set_value(f"{LOG_KEY}{seq}", {"ids": list(task_ids), **entry})


def stored_revokes(backend: "ResultBackend", task_ids: Sequence[str]) -> set[str]:
    """Which of ``task_ids`` are revoked in the store: one read, which on a connection the
    broker shares carries whatever that thread queued before it (a prefork child's early ack)."""
    if not task_ids:
        return set()
    raws = backend._mget([REVOKED_KEY + t for t in task_ids])
    return {t for t, raw in zip(task_ids, raws) if raw is not None}


#: states of a task no worker has started: a revoke may store REVOKED over them at once
_NOT_STARTED = frozenset({"PENDING", "RECEIVED", "RETRY", "REJECTED"})


def store_revoked_states(backend: "ResultBackend", task_ids: Sequence[str],
                         running: Iterable[str] = ()) -> None:
    """As a Celery 5.7 worker does on a revoke: each task that has not started anywhere (its
    stored state PENDING, RECEIVED, RETRY or REJECTED) and is not in ``running`` is stored as
    REVOKED now, so a caller waiting on it learns at once, not when a worker takes its message
    (which may be an ETA away). A finished task, or one a worker started (STARTED, a custom
    state), keeps its state. One read for all of them; a store that cannot be read is logged:
    the revoke itself still holds."""
    if not backend.persistent:
        return
    skip = set(running)
    wanted = [task_id for task_id in task_ids if task_id not in skip]
    if not wanted:
        return
    try:
        metas = backend.get_many_meta(wanted)
        for task_id in wanted:
            if metas[task_id].get("status") in _NOT_STARTED:
                backend.mark_as_revoked(task_id, "revoked")
    except Exception as exc:  # noqa: BLE001 - the revoke itself still holds
        logger.warning("revoke: could not store %d task(s) as revoked: %s", len(wanted), exc)


class RevokedSet:
    """A worker's view of revokes, kept fresh from the result store's log."""

    def __init__(self, backend: "ResultBackend",
                 on_terminate: Callable[[str, int], None] | None = None) -> None:
        self.backend = backend
        self.on_terminate = on_terminate
        self._ids: set[str] = set()
        self._seen = 0
        #: log entries counted but not written when last read: seq -> when to stop looking
        self._late: dict[int, float] = {}
        self._synced = False
        self._lock = threading.Lock()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._ids)

    def add(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.update(task_ids)

    def check_stored(self, task_ids: Sequence[str],
                     writes: Sequence["ResultWrite"] = ()) -> set[str]:
        """Which of ``task_ids`` are revoked in the store (one round trip for a fetched batch).
        ``writes``: results sent first, in that round trip where the store can (a solo worker's
        kept results); if they fail, this raises and nothing was checked."""
        if writes:
            raws = self.backend.write_results_then_mget(
                writes, [REVOKED_KEY + t for t in task_ids])
            found = {t for t, raw in zip(task_ids, raws) if raw is not None}
        else:
            found = stored_revokes(self.backend, task_ids)
        if found:
            self.add(found)
        return found

    def sync(self) -> None:
        """Read log entries written since the last sync; apply terminate requests. An entry
        counted but not yet written is read again at the next syncs (for ``LATE_ENTRY_GRACE``
        seconds), so a terminate whose writer was between its two writes still lands."""
        current = self.backend.get_value(SEQ_KEY)
        current = int(current) if current is not None else 0
        if current < self._seen:
            # the counter started again (the store was wiped): every entry is new
            self._seen = 0
            self._late.clear()
        if self._late:
            now = time.monotonic()
            for seq, give_up_at in list(self._late.items()):
                if self._apply(seq) or now >= give_up_at:
                    del self._late[seq]
        if current <= self._seen:
            self._synced = True
            return
        start = self._seen + 1
        if not self._synced:  # older entries have expired, and their revoke keys still hold
            start = max(start, current - FIRST_SYNC_ENTRIES + 1)
        for seq in range(start, current + 1):
            # missing: expired (the first sync reads old entries; their revoke keys outlive
            # them and nothing runs here yet), or counted a moment before it was written
            if not self._apply(seq) and self._synced:
                self._late[seq] = time.monotonic() + LATE_ENTRY_GRACE
        self._seen = current
        self._synced = True

    def _apply(self, seq: int) -> bool:
        """Apply log entry ``seq``; False when it is not there."""
        entry = self.backend.get_value(f"{LOG_KEY}{seq}")
        if not entry:
            return False
        ids = list(entry.get("ids") or ())
        self.add(ids)
        if entry.get("terminate") and self.on_terminate is not None:
            for task_id in ids:
                self.on_terminate(task_id, int(entry.get("signal") or signal_module.SIGTERM))
        return True
