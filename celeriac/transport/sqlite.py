"""The embedded broker (``sqlite:///file.db``): durable queues in one SQLite file, shared by
processes.

Layer: transport. Every state change is one ``BEGIN IMMEDIATE`` transaction, so any number of
producer and worker processes on one machine can share the file safely. Consumers wait on
``utils.sqlite.ChangeWaiter``, woken by another process's commit through inotify on Linux (by
polling elsewhere, within a millisecond or two).
"""

from __future__ import annotations

import functools
import itertools
import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from ..exceptions import ImproperlyConfigured
from ..protocol.entities import Queue, as_queue
from ..protocol.message import Message
from ..utils.forks import PidGuard
from ..utils.spin import AdaptiveSpin, spin_seconds
from ..utils.sqlite import (
    ChangeWaiter,
    OnSQLiteFile,
    SQLiteWire,
    begin_immediate,
    busy_handler,
    connect,
    sqlite_path_from_url,
    synchronous_from_url,
    synchronous_mode,
    wire_for,
)
from .base import DEFAULT_FETCH_SPIN, DeadLetter, Delivery, Outgoing, check_queue_names
from .bindings import (
    Binding,
    FanoutFeed,
    binding_of,
    exchange_type_of,
    route,
    route_outgoing,
)
from .sqlite_broadcast import SQLiteBroadcastMixin

#: ``synchronous`` levels the broker offers: OFF would let a power cut corrupt the file
BROKER_SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")

# Row states. READY rows are fetchable now; LEASED and DELAYED rows become fetchable again once
# ``visible_at`` passes (lease expiry, due time), which the next fetch notices on its own.
READY, LEASED, DELAYED = 0, 1, 2


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS celeriac_queue (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state INTEGER NOT NULL,
        visible_at REAL NOT NULL,
        lease_token INTEGER,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        headers TEXT NOT NULL,
        properties TEXT NOT NULL,
        body BLOB NOT NULL,
        exchange TEXT,
        routing_key TEXT)""",
    # serves the fetch: ready rows of a queue, best priority first, then oldest
    "CREATE INDEX IF NOT EXISTS celeriac_queue_ready"
    " ON celeriac_queue (queue, state, priority DESC, id)",
    # finds leased/delayed rows that have come due, and the next time one will
    "CREATE INDEX IF NOT EXISTS celeriac_queue_waiting"
    " ON celeriac_queue (queue, visible_at) WHERE state != 0",
    # AUTOINCREMENT: a dead letter id is never reused, so a stale id cannot delete a newer letter
    """CREATE TABLE IF NOT EXISTS celeriac_dead_letter (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        headers TEXT NOT NULL,
        properties TEXT NOT NULL,
        body BLOB NOT NULL)""",
    # what declare() bound: publishes to a named exchange are routed through these
    """CREATE TABLE IF NOT EXISTS celeriac_queue_binding (
        exchange TEXT NOT NULL,
        exchange_type TEXT NOT NULL,
        binding_key TEXT NOT NULL,
        queue TEXT NOT NULL,
        PRIMARY KEY (exchange, binding_key, queue))""",
)
_BIND = ("INSERT INTO celeriac_queue_binding (exchange, exchange_type, binding_key, queue)"
         " VALUES (?, ?, ?, ?) ON CONFLICT (exchange, binding_key, queue)"
         " DO UPDATE SET exchange_type = excluded.exchange_type")

_INSERT = (
    "INSERT INTO celeriac_queue (queue, priority, state, visible_at, created_at, content_type,"
    " content_encoding, headers, properties, body, exchange, routing_key)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: columns a file made by an older celeriac lacks (added in place, NULL for its rows)
_ADDED_COLUMNS = (("celeriac_queue", "exchange", "TEXT"), ("celeriac_queue", "routing_key", "TEXT"))
_FENCE = "WHERE id = ? AND lease_token = ?"
_DEAD_FIELDS = ("queue, reason, created_at, content_type, content_encoding, headers, properties,"
                " body")

#: connections a forked child inherited. SQLite forbids using a connection across fork(), so the
#: child neither uses nor closes them; keeping them referenced stops them being finalized too.
_INHERITED: list[Any] = []


@functools.lru_cache(maxsize=32)
def _lease_sql(n_queues: int) -> str:
    """One statement that picks and leases: the k-th queue's candidates are ranked, and ranks
    are interleaved across queues (round-robin), each queue's best priority then oldest first."""
    picks = " UNION ALL ".join(
        f"SELECT id, {k} AS k, ROW_NUMBER() OVER (ORDER BY priority DESC, id) AS rn FROM"
        " (SELECT id, priority FROM celeriac_queue WHERE queue = ? AND state = 0"
        " ORDER BY priority DESC, id LIMIT ?)"
        for k in range(n_queues)
    )
    return (
        "UPDATE celeriac_queue SET state = 1, visible_at = ?, lease_token = ?,"
        " delivery_count = delivery_count + 1"
        f" WHERE id IN (SELECT id FROM ({picks}) ORDER BY rn, k LIMIT ?)"
        " RETURNING id, queue, priority, delivery_count, exchange, routing_key, content_type,"
        " content_encoding, headers, properties, body"
    )


@functools.lru_cache(maxsize=32)
def _probe_sql(n_queues: int) -> str:
    """(whether any of the queues has a ready message, the earliest ``visible_at`` of their
    leased and delayed ones): a read, through the same indexes as the lease."""
    per_queue = ("SELECT EXISTS (SELECT 1 FROM celeriac_queue WHERE queue = ? AND state = 0)"
                 " AS r, (SELECT min(visible_at) FROM celeriac_queue WHERE queue = ?"
                 " AND state != 0) AS d")
    return f"SELECT max(r), min(d) FROM ({' UNION ALL '.join([per_queue] * n_queues)})"


#: ``json.dumps(value, separators=(",", ":"))``, without building an encoder per call (dumps
#: does whenever an argument is not its default); the lenient one for dead letters
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_ENCODE_LENIENT = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def _dumps(value: dict[str, Any], lenient: bool = False) -> str:
    # Dead letters must never fail to store, so odd header values degrade to their repr there.
    return _ENCODE_LENIENT(value) if lenient else _ENCODE(value)


def _message(content_type: str, content_encoding: str, headers: str, properties: str,
             body: bytes) -> Message:
    return Message(bytes(body), content_type, content_encoding, json.loads(headers),
                   json.loads(properties))


class SQLiteTransport(SQLiteBroadcastMixin):
    """Durable queues in one SQLite file; safe for many threads and processes at once.

    Options (``broker_transport_options``): ``visibility_timeout`` — seconds a lease lasts
    before the message is delivered again (default 3600); ``polling_interval`` — the longest
    pause between checks for other processes' commits while idle (default 0.002 s; where
    inotify wakes the wait, a safety net: another process's publish is seen at once; without
    it, within ~2 ms, for ~2% of a core per idle consumer. Raise it to trade that for CPU. A
    commit in this process wakes waiters at once); ``synchronous`` —
    the ``PRAGMA synchronous`` of publishes and the other writes that create or keep messages
    (default ``NORMAL``: in WAL mode a commit survives any process crash, SIGKILL included, and
    only an OS crash or power cut can undo the commits since the WAL was last synced;
    ``FULL``/``EXTRA``: every such commit is fsynced before it returns; ``OFF`` is refused, as
    it lets a power cut corrupt the file), also spelled ``?synchronous=FULL`` on the URL.
    Leases, acks and renewals commit at ``NORMAL`` whatever it says. Other keys are ignored,
    each with one warning line (``transport.options``).

    Semantics, shared with ``MemoryTransport`` and checked by ``celeriac.testing.transport_suite``:

    * ``fetch`` leases (never deletes) in one transaction. A message is fetchable when it is due
      and not leased, or its lease expired: a dead worker's messages come back by themselves.
    * Queues are served round-robin (one queue further on each call), as Celery does; within a
      queue a HIGHER ``Message.priority`` is served first (like RabbitMQ, unlike Celery on Redis),
      then the oldest. A requeued or expired message keeps its place.
    * ``delivery_count`` is 1 on the first delivery and grows with every redelivery.
    * Ack, reject, renewal, deferral and dead-lettering with a delivery are fenced: they act only
      while the lease token is still the one handed out, so a worker that was paused past its
      lease cannot touch a message someone else now holds.
    * ``SharedConnectionSettling``: acks and fetches a thread stages (``ack_later``,
      ``fetch_later``), with the result writes a store on the same file stages, are committed in
      one transaction at that thread's ``flush`` or its store's next read (``utils.sqlite``'s
      ``SQLiteWire``).
    """

    #: errors a publish may be retried after (``task_publish_retry``): the file was busy
    transient_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: str, *, visibility_timeout: float = 3600.0,
                 polling_interval: float = 0.002, synchronous: str = "NORMAL",
                 wait_spin: float = DEFAULT_FETCH_SPIN, **options: Any) -> None:
        self.path = path
        #: how long a waiting fetch polls for a commit before it sleeps
        self._spin = AdaptiveSpin(spin_seconds(wait_spin, "wait_spin"))
        self.visibility_timeout = float(visibility_timeout)
        self.polling_interval = float(polling_interval)
        #: ``PRAGMA synchronous`` of the writes that create or keep messages (publishes...)
        self.synchronous = synchronous_mode(synchronous, "broker_transport_options",
                                            BROKER_SYNCHRONOUS_MODES)
        self.options = options
        self._lock = threading.Lock()
        self._forks = PidGuard()
        #: idle connections by ``synchronous`` mode, and whether they write (``_connection``'s
        #: ``writing``): a connection keeps its mode for life, so no write pays two extra pragma
        #: statements to switch, and a writing one its busy handler off
        self._idle: dict[tuple[str, bool], list[sqlite3.Connection]] = {}
        self._all: list[sqlite3.Connection] = []
        self._waiter: ChangeWaiter | None = None
        self._schema_ready = False
        self._turn = itertools.count()
        self._feed = FanoutFeed()
        self._wire: SQLiteWire | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "SQLiteTransport":
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (see
        ``sqlite_path_from_url``); ``?synchronous=FULL`` sets the ``synchronous`` option."""
        asked = synchronous_from_url(url, "broker_url", BROKER_SYNCHRONOUS_MODES)
        if asked is not None:
            given = options.get("synchronous")
            if given is not None and synchronous_mode(given, "broker_transport_options",
                                                      BROKER_SYNCHRONOUS_MODES) != asked:
                raise ImproperlyConfigured(
                    f"broker_url says synchronous={asked} but broker_transport_options says "
                    f"synchronous={given!r}: give it in one place")
            options["synchronous"] = asked
        return cls(sqlite_path_from_url(url), **options)

    def __repr__(self) -> str:
        return f"<SQLiteTransport {self.path!r}>"

    # ---- connections ------------------------------------------------------------------------
    def _check_fork(self) -> None:
        if self._forks.forked():
            _INHERITED.extend([*self._all, *([self._waiter] if self._waiter else [])])
            self._lock = threading.Lock()
            self._forks.adopt()
            self._idle, self._all, self._waiter = {}, [], None

    @contextmanager
    def _connection(self, durable: bool = True, *,
                    writing: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection of this thread's own for the block (a small pool, one per concurrent
        user) at ``synchronous``; ``durable=False``: at ``NORMAL``, never fsynced.
        ``writing``: the block runs ``begin_immediate`` transactions only (the busy handler
        may be off)."""
        self._check_fork()
        mode = self.synchronous if durable else "NORMAL"
        with self._lock:
            idle = self._idle.setdefault((mode, writing), [])
            conn = idle.pop() if idle else None
        if conn is None:
            conn = self._open(mode)
        if not writing:
            busy_handler(conn)
        try:
            yield conn
        finally:
            with self._lock:
                kept = conn in self._all
                if kept:
                    self._idle[mode, writing].append(conn)
            if not kept:  # close() ran meanwhile; closing from here never blocks another thread
                conn.close()

    def _open(self, mode: str) -> sqlite3.Connection:
        conn = connect(self.path, synchronous=mode)
        with self._lock:
            self._all.append(conn)
            ready = self._schema_ready
        if not ready:
            with _transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                for table, column, kind in _ADDED_COLUMNS:
                    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._schema_ready = True
        return conn

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction at ``synchronous``. ``durable=False`` (leases, acks, renewals):
        at ``NORMAL`` whatever ``synchronous`` says: such a commit survives a crash of any
        process, and only an OS crash or power cut can undo it, which at worst delivers a
        message once more (at-least-once holds)."""
        with self._connection(durable, writing=True) as conn, _transaction(conn):
            yield conn

    def _change_waiter(self) -> ChangeWaiter:
        waiter = self._waiter
        if waiter is None or self._forks.forked():
            with self._connection():  # the file exists, in WAL mode, with its tables
                pass
            with self._lock:
                if self._waiter is None:
                    self._waiter = ChangeWaiter(self.path, max_interval=self.polling_interval)
                waiter = self._waiter
        return waiter

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            waiter.notify()

    # ---- producing --------------------------------------------------------------------------
    def declare(self, queue: Queue | str) -> None:
        """Record the queue's binding (in the file, for every process); queues themselves need
        no declaration."""
        queue = as_queue(queue)
        binding = binding_of(queue)
        if binding is None:
            with self._connection():  # the file and its tables exist
                pass
        else:
            with self._write() as conn:
                conn.execute(_BIND, (binding.exchange, binding.exchange_type, binding.key,
                                     binding.queue))
        self._feed.declare(self, queue)

    @staticmethod
    def _bindings(conn: sqlite3.Connection, exchanges: Sequence[str]) -> list[Binding]:
        marks = ", ".join("?" * len(exchanges))
        return [Binding(queue, exchange, kind, key) for exchange, kind, key, queue in conn.execute(
            "SELECT exchange, exchange_type, binding_key, queue FROM celeriac_queue_binding"
            f" WHERE exchange IN ({marks}) ORDER BY rowid", tuple(exchanges))]

    def _route(self, conn: sqlite3.Connection, items: Sequence[Outgoing]
               ) -> tuple[list[Outgoing], list[Outgoing]]:
        """(the items to store, with routed ones copied to each bound queue; the fanout ones)."""
        exchanges = list(dict.fromkeys(item.exchange for item in items if item.routed))
        bindings = self._bindings(conn, exchanges)
        fanout: list[Outgoing] = []
        out = route_outgoing(
            items, exchange_type=lambda exchange: exchange_type_of(bindings, exchange),
            queues=lambda exchange, key, kind: route(bindings, exchange, key,
                                                     exchange_type=kind),
            fanout=fanout.append)
        return out, fanout

    def publish(self, items: Sequence[Outgoing]) -> None:
        """Store every item in one transaction (at ``synchronous``: see the class's docstring);
        ``not_before`` holds an item until then.
        Routed items go to every queue their exchange's bindings take them to (read in the same
        transaction); fanout ones are broadcast."""
        if not items:
            return
        now = time.time()
        rows = self._rows(items, now)  # every item encodes, or nothing is stored
        fanout: list[Outgoing] = []
        with self._write() as conn:
            if any(item.routed for item in items):
                stored, fanout = self._route(conn, items)
                rows = self._rows(stored, now)
            if rows:
                conn.executemany(_INSERT, rows)
        for item in fanout:
            self.broadcast(item.exchange, item.message, item.routing_key or "")
        self._notify()

    @staticmethod
    def _rows(items: Sequence[Outgoing], now: float) -> list[tuple[Any, ...]]:
        rows = []
        for item in items:
            if item.routed:
                continue
            msg = item.message
            delayed = item.not_before is not None and item.not_before > now
            rows.append((item.queue, msg.priority, DELAYED if delayed else READY,
                         item.not_before if delayed else 0.0, now, msg.content_type,
                         msg.content_encoding, _dumps(msg.headers), _dumps(msg.properties),
                         bytes(msg.body), item.exchange or None, item.routing_key))
        return rows

    # ---- consuming --------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_n: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_n`` due messages, waiting up to ``timeout`` seconds for the first.

        Wakes when any process commits to the file, and in time for the earliest deferred
        message or lease expiry among ``queues``.
        """
        check_queue_names(queues)
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n!r}")
        deadline = time.monotonic() + max(timeout, 0.0)
        start = next(self._turn) % len(queues)
        order = list(dict.fromkeys([*queues[start:], *queues[:start]]))
        fed = self._feed.active(order)
        spin_until, began = self._spin.begin() if timeout > 0 else (0.0, 0.0)
        while True:
            token = self._change_waiter().token()
            if fed:
                self._feed.drain(self, order)
            leased, next_due = self._lease(order, max_n)
            remaining = deadline - time.monotonic()
            if leased or remaining <= 0:
                if timeout > 0:
                    self._spin.end(began)
                return leased
            if next_due is not None:
                remaining = min(remaining, max(next_due - time.time(), 0.0005))
            self._change_waiter().wait(remaining, token, spin_until=spin_until)

    def _lease(self, order: list[str], max_n: int) -> tuple[list[Delivery], float | None]:
        # Read first, and take the write lock only when something is due: an idle consumer
        # wakes at every commit to the file, and its empty write transactions would make the
        # producers' and the result writers' transactions wait (SQLite's busy handler sleeps
        # a millisecond or more before it tries again).
        now = time.time()
        with self._connection(durable=False) as conn:
            ready, next_due = conn.execute(_probe_sql(len(order)),
                                           [q for q in order for _ in (0, 1)]).fetchone()
        expired = next_due is not None and next_due <= now
        if not ready and not expired:
            return [], next_due
        with self._write(durable=False) as conn:
            leased, next_due = self._lease_in(conn, order, max_n, expired)
        # decoded once the write lock is released: the pool processes' transactions wait on it
        return _deliveries(leased, order), next_due

    def _lease_in(self, conn: sqlite3.Connection, order: list[str], max_n: int,
                  expired: bool = True) -> tuple[_Leased, float | None]:
        """The lease, inside the caller's write transaction: (the leased rows, for
        ``_deliveries``, and when none is due yet, the earliest time one will be).
        ``expired=False``: the caller has just seen that no lease or due time among ``order``
        had passed (nothing to make ready first)."""
        now = time.time()
        token = secrets.randbits(63)
        marks = ", ".join("?" * len(order))
        params: list[Any] = [now + self.visibility_timeout, token]
        for queue in order:
            params += (queue, max_n)
        params.append(max_n)
        if expired:
            conn.execute(f"UPDATE celeriac_queue SET state = 0 WHERE queue IN ({marks})"
                         " AND state != 0 AND visible_at <= ?", (*order, now))
        rows = conn.execute(_lease_sql(len(order)), params).fetchall()
        if not rows:
            dues = [conn.execute("SELECT min(visible_at) FROM celeriac_queue"
                                 " WHERE queue = ? AND state != 0", (q,)).fetchone()[0]
                    for q in order]
            return (token, rows), min((d for d in dues if d is not None), default=None)
        return (token, rows), None

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Delete each message if its lease is still ours; False where it was lost (fencing)."""
        if not deliveries:
            return []
        with self._write(durable=False) as conn:
            return _ack_in(conn, deliveries)

    # ---- settling on the connection the result store shares (SharedConnectionSettling) -------
    def sqlite_wire(self) -> SQLiteWire:
        """This file's wire: what this thread stages on it goes out in one transaction."""
        wire = self._wire
        if wire is None:  # looked up once: resolving the path costs system calls
            wire = self._wire = wire_for(self.path)
        return wire

    def shares_connection_with(self, backend: Any) -> bool:
        """Whether ``backend`` stores results in this file and its writes may ride along with
        the acks' unsynced transactions (``synchronous`` NORMAL or OFF)."""
        return isinstance(backend, OnSQLiteFile) and backend.sqlite_wire() is self.sqlite_wire()

    def ack_later(self, deliveries: Sequence[Delivery],
                  on_reply: Callable[[list[bool] | None], None] | None = None) -> None:
        """Stage the ack for this thread's next flush. ``on_reply`` gets what ``ack`` would
        return, or None if that transaction failed; without it, a failed one is tried again at
        the next flush."""
        batch = list(deliveries)
        if not batch:
            return
        self.sqlite_wire().stage(
            lambda conn: _ack_in(conn, batch), on_reply,
            failed=None if on_reply is None else lambda: on_reply(None),
            retain=on_reply is None)

    def ack_with_writes_later(self, deliveries: Sequence[Delivery],
                              stage_writes: Callable[[], None]) -> None:
        """The writes, then the ack: one transaction, so the ack commits only with them."""
        stage_writes()
        self.ack_later(deliveries)

    def fetch_later(self, queues: Sequence[str], max_n: int,
                    on_fetched: Callable[[list[Delivery]], None]) -> None:
        """A lease (no waiting) in this thread's next flush; ``on_fetched`` gets its deliveries
        after the commit, and is not called if the transaction failed (nothing was leased)."""
        check_queue_names(queues)
        if max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n!r}")
        start = next(self._turn) % len(queues)
        order = list(dict.fromkeys([*queues[start:], *queues[:start]]))
        self.sqlite_wire().stage(lambda conn: self._lease_in(conn, order, max_n)[0],
                                 lambda leased: on_fetched(_deliveries(leased, order)))

    def flush(self) -> None:
        """Send what this thread staged (results included) in one write transaction."""
        wire = self.sqlite_wire()
        if not wire.pending:
            return
        with self._connection(durable=False, writing=True) as conn:
            _, deliver = wire.send(conn)
        self._notify()
        deliver()

    def reject(self, delivery: Delivery, requeue: bool) -> bool:
        """``requeue``: fetchable again at once, in its old place; else deleted. Fenced like ack."""
        with self._write() as conn:
            if requeue:
                cur = conn.execute("UPDATE celeriac_queue SET state = 0, visible_at = 0,"
                                   f" lease_token = NULL {_FENCE}", delivery.receipt)
            else:
                cur = conn.execute(f"DELETE FROM celeriac_queue {_FENCE}", delivery.receipt)
        if requeue and cur.rowcount == 1:
            self._notify()
        return cur.rowcount == 1

    def extend_lease(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> None:
        """Push each lease's end to now + ``seconds`` (default ``visibility_timeout``); fenced."""
        if not deliveries:
            return
        until = time.time() + (self.visibility_timeout if seconds is None else seconds)
        with self._write(durable=False) as conn:
            conn.executemany(f"UPDATE celeriac_queue SET state = 1, visible_at = ? {_FENCE}",
                             [(until, *d.receipt) for d in deliveries])

    def defer(self, delivery: Delivery, not_before: float) -> bool:
        """Release the lease and hold the message until ``not_before``; fenced.

        A deferral is not a failed delivery, so it takes back the count the fetch added.
        """
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE celeriac_queue SET state = 2, visible_at = ?, lease_token = NULL,"
                f" delivery_count = max(delivery_count - 1, 0) {_FENCE}",
                (not_before, *delivery.receipt))
        if cur.rowcount == 1:
            self._notify()
        return cur.rowcount == 1

    # ---- dead letters -------------------------------------------------------------------------
    def dead_letter(self, queue: str, message: Message, reason: str,
                    delivery: Delivery | None = None) -> str:
        """Keep ``message`` byte for byte with ``reason``; returns its id.

        With ``delivery``, the leased row is deleted in the same transaction (never lost, never
        both). If that lease was lost (someone else holds or finished the message) nothing is
        stored and "" is returned.
        """
        row = (queue, reason, time.time(), message.content_type, message.content_encoding,
               _dumps(message.headers, True), _dumps(message.properties, True), bytes(message.body))
        with self._write() as conn:
            if delivery is not None and conn.execute(
                    f"DELETE FROM celeriac_queue {_FENCE}", delivery.receipt).rowcount != 1:
                return ""
            cur = conn.execute(f"INSERT INTO celeriac_dead_letter ({_DEAD_FIELDS})"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            return str(cur.lastrowid)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._connection() as conn:
            rows = conn.execute(f"SELECT id, {_DEAD_FIELDS} FROM celeriac_dead_letter"
                                " ORDER BY id LIMIT ?", (max(limit, 0),)).fetchall()
        return [_dead_letter(row) for row in rows]

    def dead_letter_get(self, dead_letter_id: str) -> DeadLetter | None:
        key = _dead_key(dead_letter_id)
        if key is None:
            return None
        with self._connection() as conn:
            row = conn.execute(f"SELECT id, {_DEAD_FIELDS} FROM celeriac_dead_letter WHERE id = ?",
                               (key,)).fetchone()
        return _dead_letter(row) if row is not None else None

    def dead_letter_delete(self, dead_letter_ids: Sequence[str] | None = None) -> int:
        with self._write() as conn:
            if dead_letter_ids is None:
                return conn.execute("DELETE FROM celeriac_dead_letter").rowcount
            keys = {k for k in map(_dead_key, dead_letter_ids) if k is not None}
            return conn.executemany("DELETE FROM celeriac_dead_letter WHERE id = ?",
                                    [(k,) for k in keys]).rowcount if keys else 0

    # ---- admin --------------------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        """Delete every message of ``queue`` not held by a live lease (deferred ones included)."""
        with self._write() as conn:
            return conn.execute("DELETE FROM celeriac_queue WHERE queue = ?"
                                " AND (state != 1 OR visible_at <= ?)",
                                (queue, time.time())).rowcount

    def qsize(self, queue: str) -> int:
        """Every message of ``queue``: ready, deferred or leased."""
        with self._connection() as conn:
            count: int = conn.execute("SELECT count(*) FROM celeriac_queue WHERE queue = ?",
                                      (queue,)).fetchone()[0]
            return count

    def close(self) -> None:
        """Close every connection this process opened; the transport reopens lazily if used again.

        A connection another thread is using is closed by that thread when it is done with it.
        """
        self._check_fork()
        self._feed.close()
        with self._lock:
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._all, self._idle = [], {}
            waiter, self._waiter = self._waiter, None
        for conn in idle:
            conn.close()
        if waiter is not None:
            waiter.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE``: take the write lock up front so readers never need to upgrade.
    The busy handler may stay off (``_connection`` turns it on for other uses)."""
    begin_immediate(conn, keep_off=True)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


#: what a lease took: (its token, the rows its ``UPDATE ... RETURNING`` returned)
_Leased = tuple[int, list[Any]]


def _deliveries(leased: _Leased, order: list[str]) -> list[Delivery]:
    """The leased rows as deliveries, in the round-robin of ``order`` the statement chose
    (RETURNING has no order of its own)."""
    token, rows = leased
    if not rows:
        return []
    by_queue: dict[str, list[Any]] = {}
    for row in sorted(rows, key=lambda r: (-r[2], r[0])):
        by_queue.setdefault(row[1], []).append(row)
    tiers = itertools.zip_longest(*(by_queue.get(q, ()) for q in order))
    return [Delivery(_message(*row[6:]), row[1], (row[0], token), row[3], row[3] > 1,
                     exchange=row[4] or "", routing_key=row[5])
            for tier in tiers for row in tier if row is not None]


def _ack_in(conn: sqlite3.Connection, deliveries: Sequence[Delivery]) -> list[bool]:
    return [conn.execute(f"DELETE FROM celeriac_queue {_FENCE}", d.receipt).rowcount == 1
            for d in deliveries]


def _dead_key(dead_letter_id: str) -> int | None:
    try:
        return int(dead_letter_id)
    except (TypeError, ValueError):
        return None


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(str(row[0]), row[1], row[2], _message(*row[4:]), row[3])
