"""The SQLite result store: results in one file, shared by every process on the machine.

Layer: backends. The table (``celeriac_result``) can live in the same file as the embedded broker's
``celeriac_queue*`` tables. Waiting readers wake through ``ChangeWaiter`` (a cross-process change
check that costs one pragma read), so ``AsyncResult.get`` reacts within a couple of milliseconds
without polling the table.

Durability: writes use ``PRAGMA synchronous=NORMAL`` unless the URL says ``?synchronous=FULL``
(or ``EXTRA``/``OFF``). In WAL mode NORMAL never corrupts the file and survives a process crash;
only a power cut or OS crash can lose the commits since the WAL was last synced (at a checkpoint,
or by any fsynced commit to the same file, such as a broker publish at ``?synchronous=FULL``).
The broker's publishes, leases and acks commit at NORMAL too by default. The WAL keeps commit
order, so a power cut never keeps a task's ack while losing its result: with ``acks_late`` such a
task is simply run again. Use ``?synchronous=FULL`` if results must survive a power cut.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .. import states
from ..exceptions import BackendError
from ..utils.forks import PidGuard
from ..utils.spin import AdaptiveSpin
from ..utils.sqlite import (
    DEFAULT_SQLITE_URL,
    ChangeWaiter,
    SQLiteWire,
    begin_immediate,
    busy_handler,
    connect,
    sqlite_path_from_url,
    synchronous_from_url,
    wire_for,
)
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
    wait_spin_option,
)

TABLE = "celeriac_result"
#: chord joins: one row per counted header result (Redis keeps these in a sorted set)
JOIN_TABLE = "celeriac_result_chord"
#: append-only logs (``AppendLog``): a log lives as long as its marker row in ``TABLE``
LOG_TABLE = "celeriac_result_log"
#: keys per ``IN (...)`` list, well under SQLite's bound-parameter limit
_CHUNK = 500

# WITHOUT ROWID (in the files made from now on; older ones keep their tables, which the same
# statements serve): a row lives in its key's b-tree alone, so storing a result or counting a
# chord member rewrites one page fewer per table (the key's index page), and each page a commit
# changes is a WAL frame checksummed and written.
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL) WITHOUT ROWID",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires_at)"
    " WHERE expires_at IS NOT NULL",
    # (join_key, idx, member): members arrive about in header order, so each lands at the end
    # of its join, beside the join's count (``_COUNT_ROW``), and are read back in order unsorted.
    # A member's name holds its index, so the key is unique where (join_key, member) is.
    f"CREATE TABLE IF NOT EXISTS {JOIN_TABLE} ("
    " join_key TEXT NOT NULL, member TEXT NOT NULL, idx REAL NOT NULL, value BLOB NOT NULL,"
    " PRIMARY KEY (join_key, idx, member)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {LOG_TABLE} ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, log_key TEXT NOT NULL, value BLOB NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {LOG_TABLE}_key ON {LOG_TABLE} (log_key, seq)",
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"

_UPSERT = (
    f"INSERT INTO {TABLE} (key, value, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)

# One statement, so the increment is atomic across processes. Counters are stored as INTEGER; a
# value written by _set counts only if it is the canonical decimal text of an integer (Redis's
# rule). Anything else yields NULL, which the NOT NULL constraint turns into an error.
_INCR = f"""
INSERT INTO {TABLE} (key, value, expires_at) VALUES (:key, :amount, :expires_at)
ON CONFLICT (key) DO UPDATE SET
  value = CASE
    WHEN expires_at IS NOT NULL AND expires_at <= :now THEN :amount
    WHEN typeof(value) = 'integer' THEN value + :amount
    WHEN typeof(value) IN ('blob', 'text')
         AND CAST(CAST(value AS INTEGER) AS BLOB) = CAST(value AS BLOB)
      THEN CAST(value AS INTEGER) + :amount
    ELSE NULL END,
  expires_at = CASE
    WHEN :expires_at IS NOT NULL THEN :expires_at
    WHEN expires_at <= :now THEN NULL
    ELSE expires_at END
RETURNING value
"""

# One statement: insert the lock, or take over a row that expired or that this token holds
# already; rowcount is 0 exactly when a live row holds another token.
_LOCK_ACQUIRE = f"""
INSERT INTO {TABLE} (key, value, expires_at) VALUES (:key, :token, :expires_at)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
WHERE (expires_at IS NOT NULL AND expires_at <= :now) OR value = excluded.value
"""

#: (idx, member) of the row holding a join's count of distinct members, in the join itself and
#: sorted after its members (each member's name has a ":", this one none; "~" sorts after the
#: characters of ids): an arrival's member and the count then usually share a page, and its
#: commit writes that page alone, where a count in ``TABLE`` cost a page (a WAL frame) more
_COUNT_ROW = (float("inf"), "~n")
#: a chord arrival's first statement: its claim (``.c``), size (``.s``), extras (``.t``) and join
#: marker (``.j``), whichever exist, expired or not, and its count (keyed by its member name).
#: One equality lookup per key rather than ``key IN (...)``, which builds and sorts a temporary
#: index of the four keys first: about a third less CPU for the statement.
_JOIN_KEYS = " UNION ALL ".join(
    [f"SELECT key, value, expires_at FROM {TABLE} WHERE key = ?"] * 4
    + [f"SELECT member, value, NULL FROM {JOIN_TABLE}"
       " WHERE join_key = ? AND idx = ? AND member = ?"])
_JOIN_ADD = (f"INSERT OR IGNORE INTO {JOIN_TABLE} (join_key, member, idx, value)"
             " VALUES (?, ?, ?, ?)")
#: a live join's count, set to the one the arrival read plus its member (the arrival holds the
#: write lock from that read on, so nobody counts in between; no ``RETURNING`` to step through)
_COUNT_SET = f"UPDATE {JOIN_TABLE} SET value = ? WHERE join_key = ? AND idx = ? AND member = ?"
#: how far short of a full ``result_expires`` from now a chord's keys may expire before an
#: arrival pushes them back: 1% of ``result_expires``, and at most this (seconds)
_REFRESH_SLACK = 60.0


def _fresh(found: dict[str, tuple[Any, float | None]], keys: Sequence[str],
           expires_at: float | None, now: float, *, required: bool = True) -> bool:
    """Whether each of ``keys`` that ``found`` holds (each of them, if ``required``) expires as
    ``expires_at`` says to within ``_REFRESH_SLACK`` (or, ``expires_at`` None, never), and has
    not expired."""
    for key in keys:
        row = found.get(key)
        if row is None:
            if required:
                return False
            continue
        row_expires = row[1]
        if expires_at is None or row_expires is None:
            if expires_at is not None or row_expires is not None:
                return False
        elif not (now < row_expires
                  and row_expires >= expires_at - min(_REFRESH_SLACK,
                                                      (expires_at - now) / 100)):
            return False
    return True


#: connection handles and waiters a forked child inherited: never used or closed there (that could
#: disturb the parent's locks and WAL), only kept referenced so garbage collection leaves them be
_INHERITED: list[Any] = []


class SQLiteBackend(ResultBackend):
    """Results in a SQLite file; one connection per thread, safe across processes.

    Options: ``cleanup_interval`` (seconds between sweeps that delete expired rows, default 60).
    """

    def __init__(self, app: Any = None, url: str | None = None, *, cleanup_interval: float = 60.0,
                 **options: Any) -> None:
        super().__init__(app=app, url=url, **options)
        self.url = url or DEFAULT_SQLITE_URL
        self.path = sqlite_path_from_url(self.url)
        #: the file as a path from anywhere (a relative URL is relative to where the app started)
        self.abspath = os.path.abspath(self.path)
        self.synchronous = _synchronous_from_url(self.url)
        self.cleanup_interval = cleanup_interval
        conf = app.conf if app is not None else None
        #: seconds a ``get()`` looks for its result before it sleeps (``DEFAULT_WAIT_SPIN``)
        self.wait_spin = wait_spin_option(conf.result_backend_transport_options if conf else None)
        #: the broker's wire for this file (looked up once), or None (see ``sqlite_wire``)
        self._staging = (wire_for(self.path) if self.synchronous in ("OFF", "NORMAL")
                         else None)
        self._lock = threading.Lock()
        self._forks = PidGuard()
        self._start_fresh()

    def __repr__(self) -> str:
        return f"<SQLiteBackend {self.path!r}>"

    def waited_on(self) -> str:
        return (f"in the SQLite result store {self.abspath}: is a worker running on that same "
                "file?")

    def _start_fresh(self) -> None:
        self._forks.adopt()
        self._local = threading.local()
        self._handles: list[_Handle] = []
        self._waiter: ChangeWaiter | None = None
        self._schema_ready = False
        self._next_cleanup = 0.0

    def _check_fork(self) -> None:
        # In a forked child only the forking thread survives, and a lock some other parent thread
        # held stays held forever: replace the lock instead of taking it.
        if self._forks.forked():
            _INHERITED.extend(self._handles)
            if self._waiter is not None:
                _INHERITED.append(self._waiter)
            self._lock = threading.Lock()
            self._start_fresh()

    def _handle(self) -> _Handle:
        """This thread's connection handle, opened (and the schema created) on first use."""
        self._check_fork()
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is None or handle.conn is None:
            conn = connect(self.path, synchronous=self.synchronous)
            try:
                if not self._schema_ready:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    self._schema_ready = True
            except BaseException:
                conn.close()
                raise
            handle = _Handle(conn)
            with self._lock:
                self._close_dead_threads()
                self._handles.append(handle)
            self._local.handle = handle
        return handle

    @contextmanager
    def _connection(self, *, writing: bool = False) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held so a ``close()`` from another thread waits for the
        statement in progress instead of pulling the connection out from under it.
        ``writing``: the block runs ``begin_immediate`` transactions only (the busy handler
        may be off)."""
        while True:
            handle = self._handle()
            with handle.lock:
                conn = handle.conn
                if conn is None:  # closed after we looked it up: take a fresh one
                    continue
                cleanup = time.monotonic() >= self._next_cleanup
                if cleanup or not writing:
                    busy_handler(conn)
                if cleanup:
                    self._next_cleanup = time.monotonic() + self.cleanup_interval
                    conn.execute(f"DELETE FROM {TABLE} WHERE expires_at <= ?", (time.time(),))
                    # a join lives as long as its ".j" marker row, refreshed by every arrival
                    conn.execute(f"DELETE FROM {JOIN_TABLE} WHERE join_key NOT IN"
                                 f" (SELECT key FROM {TABLE})")
                    conn.execute(f"DELETE FROM {LOG_TABLE} WHERE log_key NOT IN"
                                 f" (SELECT key FROM {TABLE})")
                yield conn
                return

    def _close_dead_threads(self) -> None:
        """Close connections whose thread ended (thread pools come and go). Hold ``_lock``."""
        for handle in [h for h in self._handles if not h.thread_alive()]:
            handle.close()
            self._handles.remove(handle)

    def _changes(self) -> ChangeWaiter:
        self._check_fork()
        with self._lock:
            if self._waiter is None:
                self._waiter = ChangeWaiter(self.path, max_interval=0.005)
            return self._waiter

    def _remember_token(self) -> None:
        # Taken before reading: a commit landing between the read and the base class's following
        # _wait_change then still counts as a change.
        try:
            self._local.token = self._changes().token()
        except sqlite3.ProgrammingError:  # closed by a concurrent close(): wait() takes a new one
            self._local.token = None

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            waiter.notify()

    # ---- primitives ----------------------------------------------------------------------------
    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        expires_at = time.time() + ttl if ttl else None
        with self._transaction() as conn:  # (one statement, but the lock taken in short naps)
            conn.execute(_UPSERT, (key, bytes(value), expires_at))

    def write_results(self, writes: Sequence[ResultWrite]) -> None:
        """Every write in one transaction: one commit (and one wake-up of the waiters) for a
        batch of results instead of one per result."""
        if len(writes) <= 1:
            super().write_results(writes)
            return
        now = time.time()
        rows = [(w.key, bytes(w.value), now + w.ttl if w.ttl else None) for w in writes]
        with self._transaction() as conn:
            conn.executemany(_UPSERT, rows)

    def _get(self, key: str) -> bytes | None:
        return self._mget([key])[0]

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if getattr(self._local, "waits", False):  # (see ``_wait_change``)
            self._remember_token()
        now = time.time()

        def read(conn: sqlite3.Connection) -> list[bytes | None]:
            found: dict[str, bytes] = {}
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start:start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key, value FROM {TABLE} WHERE key IN ({marks})"
                                    f" AND {_LIVE}", (*chunk, now))
                found.update((key, _as_bytes(value)) for key, value in rows)
            return [found.get(key) for key in keys]

        wire = self.sqlite_wire()
        if wire is None or not wire.pending:
            with self._connection() as conn:
                return read(conn)
        # what this thread staged (the worker's acks, results, next fetch) rides along with the
        # read, in one transaction, as it would with a Redis round trip
        with self._connection(writing=True) as conn:
            values, deliver = wire.send(conn, read)
        self._notify()
        deliver()
        return values  # type: ignore[no-any-return]

    # ---- writes riding with the broker's (StagedWrites) -----------------------------------------
    def sqlite_wire(self) -> SQLiteWire | None:
        """The wire this file's broker stages acks on, when results may share its transactions:
        those commit at ``synchronous=NORMAL``, so a store asked for more has none."""
        return self._staging

    def _wire(self) -> SQLiteWire:
        wire = self.sqlite_wire()
        if wire is None:
            raise BackendError(f"{self!r} stages no writes (synchronous={self.synchronous})")
        return wire

    def stage_results(self, writes: Sequence[ResultWrite]) -> None:
        """Stage the writes for this thread's next transaction on the file (the worker's next
        ack or flush); tried again at the next if that one fails."""
        if not writes:
            return
        rows = [(w.key, bytes(w.value), w.ttl) for w in writes]

        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(_UPSERT, [(key, value, now + ttl if ttl else None)
                                       for key, value, ttl in rows])

        self._wire().stage(run, retain=True)

    def chord_part_return_later(self, group_id: str, task_id: str, group_index: int | None,
                                entry: bytes, *, claim_token: str, claim_ttl: float,
                                then: Callable[[ChordPart], None]) -> None:
        """``chord_part_return`` in this thread's next transaction on the file; ``then(part)``
        after it commits. Staged again if it fails, which is safe: a member counts once, and the
        same token keeps the claim it took."""
        # (everything but the statements made here, outside the write lock the run holds)
        keys, (member, index) = self._join_keys(group_id), join_member(task_id, group_index)
        row, token = bytes(entry), claim_token.encode()
        self._wire().stage(lambda conn: self._part_return(conn, keys, member, index, row, token,
                                                          claim_ttl),
                           then, retain=True)

    def _delete(self, keys: Sequence[str]) -> None:
        with self._connection() as conn:
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start:start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM {TABLE} WHERE key IN ({marks})", chunk)
        self._notify()

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        now = time.time()
        params = {"key": key, "amount": amount, "now": now,
                  "expires_at": now + ttl if ttl else None}
        try:
            with self._connection() as conn:
                rows = conn.execute(_INCR, params).fetchall()  # fetchall ends the statement
        except sqlite3.IntegrityError:
            raise BackendError(f"the value at {key!r} is not an integer") from None
        self._notify()
        return int(rows[0][0])

    # ---- chord joins ----------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One immediate (write-locked) transaction: what it reads, nobody changes under it."""
        with self._connection(writing=True) as conn:
            begin_immediate(conn, keep_off=True)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._notify()

    @staticmethod
    def _live(conn: sqlite3.Connection, key: str, now: float) -> bytes | None:
        row = conn.execute(f"SELECT value FROM {TABLE} WHERE key = ? AND {_LIVE}",
                           (key, now)).fetchone()
        return None if row is None else _as_bytes(row[0])

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          entry: bytes, *, claim_token: str, claim_ttl: float) -> ChordPart:
        keys, (member, index) = self._join_keys(group_id), join_member(task_id, group_index)
        with self._transaction() as conn:
            return self._part_return(conn, keys, member, index, bytes(entry),
                                     claim_token.encode(), claim_ttl)

    def write_and_part_return(self, write: ResultWrite, group_id: str, task_id: str,
                              group_index: int | None, entry: bytes, *, claim_token: str,
                              claim_ttl: float) -> ChordPart:
        """``write_results([write])`` then ``chord_part_return``, in one transaction: one write
        lock and one commit for a header task's own result and its count."""
        keys, (member, index) = self._join_keys(group_id), join_member(task_id, group_index)
        with self._transaction() as conn:
            expires_at = time.time() + write.ttl if write.ttl else None
            conn.execute(_UPSERT, (write.key, bytes(write.value), expires_at))
            return self._part_return(conn, keys, member, index, bytes(entry),
                                     claim_token.encode(), claim_ttl)

    def _join_keys(self, group_id: str) -> tuple[str, str, str, str]:
        """A chord's claim, size, extras and join marker keys (``.c``, ``.s``, ``.t``, ``.j``)."""
        key = self.chord_key
        return key(group_id, ".c"), key(group_id, ".s"), key(group_id, ".t"), key(group_id, ".j")

    def _part_return(self, conn: sqlite3.Connection, keys: tuple[str, str, str, str],
                     member: str, index: float, entry: bytes, claim_token: bytes,
                     claim_ttl: float) -> ChordPart:
        """``chord_part_return`` inside the caller's write transaction (which the pool
        processes all want after each task: the fewer statements and pages, the better)."""
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        ckey, skey, tkey, jkey = keys
        found = {row_key: (value, row_expires) for row_key, value, row_expires
                 in conn.execute(_JOIN_KEYS, (*keys, jkey, *_COUNT_ROW))}
        claim, claim_expires = found.get(ckey, (None, None))
        if claim is not None and (claim_expires is None or claim_expires > now):
            claim = _as_bytes(claim)
        else:
            claim = None  # none, or a crashed claimer's that expired: nobody holds it
        if claim == CHORD_DONE:
            return ChordPart(-1, None, False)
        # Every arrival pushes the chord's keys' expiry back, as on Redis (the ".j" marker row
        # keeps the join's rows alive), to within ``_REFRESH_SLACK``: an arrival that finds them
        # that fresh leaves them be, and so rewrites neither their rows nor the expiry index.
        # A running count instead of COUNT(*): counting a 10,000-row join on every arrival
        # would make a big chord quadratic.
        counted = found.get(_COUNT_ROW[1], (None, None))[0]
        if not (isinstance(counted, int)
                and _fresh(found, (jkey,), expires_at, now)
                and _fresh(found, (skey, tkey), expires_at, now, required=False)):
            # refreshed, the size and extras count if they exist at all (expired or not)
            conn.execute(f"UPDATE {TABLE} SET expires_at = ? WHERE key IN (?, ?)",
                         (expires_at, skey, tkey))
            marker_expires = found.get(jkey, (None, 0.0))[1]
            if marker_expires is not None and marker_expires <= now:
                # no join, or an expired one whose rows await the sweep: none of them counts
                conn.execute(f"DELETE FROM {JOIN_TABLE} WHERE join_key = ?", (jkey,))
                counted = None
            conn.execute(_UPSERT, (jkey, b"1", expires_at))
        added = conn.execute(_JOIN_ADD, (jkey, member, index, entry)).rowcount
        if not isinstance(counted, int):
            # a join's first arrival (or the first since a version that kept the count in
            # ``TABLE``, as ".n"): its members, counted once
            ready = int(conn.execute(f"SELECT COUNT(*) FROM {JOIN_TABLE} WHERE join_key = ?"
                                     " AND member <> ?", (jkey, _COUNT_ROW[1])).fetchone()[0])
            conn.execute(f"INSERT OR REPLACE INTO {JOIN_TABLE} (join_key, idx, member, value)"
                         " VALUES (?, ?, ?, ?)", (jkey, *_COUNT_ROW, ready))
        elif added:
            ready = counted + 1
            conn.execute(_COUNT_SET, (ready, jkey, *_COUNT_ROW))
        else:
            ready = counted  # a copy counted before changes nothing
        size = found.get(skey, (None, None))[0]
        extra = found.get(tkey, (None, None))[0]
        expected = int(_as_bytes(size)) + int(_as_bytes(extra or 0)) if size is not None else None
        claimed = expected is not None and ready == expected and claim is None
        if claimed:
            conn.execute(_UPSERT, (ckey, claim_token, now + claim_ttl))
        return ChordPart(ready, expected, claimed)

    def chord_results(self, group_id: str) -> list[bytes]:
        jkey = self.chord_key(group_id, ".j")
        with self._connection() as conn:
            if self._live(conn, jkey, time.time()) is None:
                return []
            rows = conn.execute(f"SELECT value FROM {JOIN_TABLE} WHERE join_key = ?"
                                " AND member <> ? ORDER BY idx", (jkey, _COUNT_ROW[1]))
            return [_as_bytes(value) for (value,) in rows]

    def chord_cleanup(self, group_id: str, claim_token: str, done_ttl: float) -> bool:
        key = self.chord_key
        now = time.time()
        with self._transaction() as conn:
            if self._live(conn, key(group_id, ".c"), now) != claim_token.encode():
                return False
            conn.execute(f"DELETE FROM {JOIN_TABLE} WHERE join_key = ?", (key(group_id, ".j"),))
            # (".n": a count kept apart by an older version, for a chord it began)
            conn.execute(f"DELETE FROM {TABLE} WHERE key IN (?, ?, ?, ?)",
                         (key(group_id, ".s"), key(group_id, ".t"), key(group_id, ".n"),
                          key(group_id, ".j")))
            conn.execute(_UPSERT, (key(group_id, ".c"), CHORD_DONE,
                                   now + done_ttl if done_ttl else None))
        return True

    # ---- append-only logs (AppendLog) -----------------------------------------------------------
    def log_append(self, key: str, entries: Sequence[bytes], ttl: float | None) -> None:
        expires_at = time.time() + ttl if ttl else None
        with self._transaction() as conn:
            conn.executemany(f"INSERT INTO {LOG_TABLE} (log_key, value) VALUES (?, ?)",
                             [(key, bytes(entry)) for entry in entries])
            conn.execute(_UPSERT, (key, b"log", expires_at))

    def log_read(self, key: str, cursor: str, limit: int,
                 timeout: float) -> tuple[list[bytes], str]:
        deadline = time.monotonic() + timeout
        after = int(cursor or 0)
        while True:
            self._remember_token()
            with self._connection() as conn:
                rows = conn.execute(f"SELECT seq, value FROM {LOG_TABLE} WHERE log_key = ?"
                                    " AND seq > ? ORDER BY seq LIMIT ?",
                                    (key, after, int(limit))).fetchall()
            if rows:
                return [_as_bytes(value) for _, value in rows], str(rows[-1][0])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], cursor
            self._wait_change([key], min(remaining, 1.0))

    def log_trim(self, key: str, cursor: str) -> None:
        if cursor:
            with self._connection() as conn:
                conn.execute(f"DELETE FROM {LOG_TABLE} WHERE log_key = ? AND seq <= ?",
                             (key, int(cursor)))

    def log_delete(self, key: str) -> None:
        with self._connection() as conn:
            conn.execute(f"DELETE FROM {LOG_TABLE} WHERE log_key = ?", (key,))
            conn.execute(f"DELETE FROM {TABLE} WHERE key = ?", (key,))

    # ---- locks (Locks): a row holding its token; each call one statement in its transaction ----
    def lock_acquire(self, key: str, token: str, ttl: float) -> bool:
        now = time.time()
        with self._transaction() as conn:
            return conn.execute(_LOCK_ACQUIRE, {"key": key, "token": token.encode(), "now": now,
                                                "expires_at": now + ttl}).rowcount == 1

    def lock_release(self, key: str, token: str) -> bool:
        with self._transaction() as conn:
            return conn.execute(f"DELETE FROM {TABLE} WHERE key = ? AND value = ? AND {_LIVE}",
                                (key, token.encode(), time.time())).rowcount == 1

    def lock_extend(self, key: str, token: str, ttl: float) -> bool:
        now = time.time()
        with self._transaction() as conn:
            cur = conn.execute(f"UPDATE {TABLE} SET expires_at = ? WHERE key = ? AND value = ?"
                               f" AND {_LIVE}", (now + ttl, key, token.encode(), now))
            return cur.rowcount == 1

    def lock_owner(self, key: str) -> str | None:
        with self._connection() as conn:
            held = self._live(conn, key, time.time())
        return None if held is None else held.decode()

    # ---- listing (KeyListing): a range scan on the primary key --------------------------------
    def keys_with_prefix(self, prefix: str) -> list[str]:
        if not prefix:
            lower, upper = "", None
        else:
            lower, upper = prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
        bound = "" if upper is None else " AND key < ?"
        params: tuple[Any, ...] = (lower,) + (() if upper is None else (upper,)) + (time.time(),)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT key FROM {TABLE} WHERE key >= ?{bound}"
                " AND (expires_at IS NULL OR expires_at > ?) ORDER BY key", params).fetchall()
        return [str(row[0]) for row in rows]

    # ---- rate limits (RateLimits): the bucket and the slots as rows, in one write transaction --
    def rate_take(self, bucket: str, interval: float, ticket: str,
                  count: int = 1) -> RateGrant:
        bucket_key, slot_key = RATE_BUCKET_PREFIX + bucket, rate_slot_key(bucket, ticket)
        # BEGIN IMMEDIATE: no other process reads the bucket between our read and our write
        with self._transaction() as conn:
            now = time.time()
            slot, tat = self._live(conn, slot_key, now), self._live(conn, bucket_key, now)
            step = rate_step(now, None if tat is None else float(tat),
                             None if slot is None else float(slot), interval, count)
            if step.used:
                conn.execute(f"DELETE FROM {TABLE} WHERE key = ?", (slot_key,))
            if step.tat is not None:
                conn.execute(_UPSERT, (bucket_key, repr(step.tat).encode(), step.tat + 1.0))
            if step.reserve is not None:
                conn.execute(_UPSERT, (slot_key, repr(step.reserve).encode(),
                                       step.reserve + RATE_SLOT_MARGIN))
        return step.grant

    def wait_for(self, task_id: str, timeout: float | None = None,
                 states_wanted: frozenset[str] = states.READY_STATES) -> dict[str, Any]:
        """The base class's wait, its first ``wait_spin`` seconds spent looking instead of
        sleeping when this thread's last wait was over within that long."""
        if not self.wait_spin:
            return super().wait_for(task_id, timeout, states_wanted)
        local = self._local
        spin = getattr(local, "spin", None)
        if spin is None:
            spin = local.spin = AdaptiveSpin(self.wait_spin)
        local.spin_until, began = spin.begin()
        try:
            return super().wait_for(task_id, timeout, states_wanted)
        finally:
            local.spin_until = 0.0
            spin.end(began)

    def _wait_change(self, keys: Sequence[str], timeout: float) -> None:
        if not getattr(self._local, "waits", False):
            # This thread's first wait: its reads took no change token (one costs a pragma and
            # two locks, and most reads, such as a pool process's revoke look-ups, never wait).
            # From now on they take one; this read is done again first (a spurious wake-up).
            self._local.waits = True
            return
        token = getattr(self._local, "token", None)
        self._local.token = None
        try:
            self._changes().wait(timeout, token, spin_until=getattr(self._local, "spin_until", 0.0))
        except sqlite3.ProgrammingError:  # closed by a concurrent close(): the caller re-reads
            pass

    def close(self) -> None:
        """Close every thread's connection; the backend reopens lazily if used again."""
        self._check_fork()
        with self._lock:
            handles = self._handles
            waiter = self._waiter
            self._start_fresh()
        for handle in handles:
            handle.close()
        if waiter is not None:
            waiter.close()


class _Handle:
    """One thread's connection; its lock is held while a statement runs."""

    __slots__ = ("conn", "lock", "_thread")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.lock = threading.Lock()
        self._thread = weakref.ref(threading.current_thread())

    def thread_alive(self) -> bool:
        thread = self._thread()
        return thread is not None and thread.is_alive()

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def _as_bytes(value: bytes | int | str) -> bytes:
    """Counters are stored as INTEGER; readers get Redis's view of them, the decimal bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


def _synchronous_from_url(url: str) -> str:
    return synchronous_from_url(url, "result_backend") or "NORMAL"
