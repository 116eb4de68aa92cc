"""Fanout (``Broadcast``) for the embedded broker: a mixin for ``SQLiteTransport``.

Layer: transport. A broadcast is a row of ``celeriac_broadcast`` (created on first use, pruned as
new rows come); a subscription reads the rows after the last id it saw, from any process, and waits
on the transport's ``ChangeWaiter`` between reads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import weakref
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..protocol.message import Message
from ..utils.sqlite import ChangeWaiter
from .base import Subscription, topic_matches

#: seconds a broadcast row is kept for subscribers that have not read it yet
BROADCAST_RETENTION = 60.0
#: rows kept at most, however young
BROADCAST_MAX_ROWS = 10_000
#: seconds between a subscriber's looks at a file other processes commit to: each look is a
#: query, and a busy file (a worker draining its queue) changes at every look, so polling at the
#: transport's 2 ms cost a worker's remote control thread ~5% of a core; a broadcast (a control
#: command, an event) is seen within this, and at once when it comes from the same process
BROADCAST_POLL_INTERVAL = 0.01

_SCHEMA = (
    # AUTOINCREMENT: ids never go back after pruning, so "after the last id seen" stays exact
    """CREATE TABLE IF NOT EXISTS celeriac_broadcast (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        headers TEXT NOT NULL,
        properties TEXT NOT NULL,
        body BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS celeriac_broadcast_exchange ON celeriac_broadcast (exchange, id)",
)
_INSERT = ("INSERT INTO celeriac_broadcast (exchange, routing_key, created_at, content_type,"
           " content_encoding, headers, properties, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# looks at the oldest few rows only, so a publish prunes in constant time (and keeps up, as each
# publish adds one row)
_PRUNE = ("DELETE FROM celeriac_broadcast WHERE id IN (SELECT id FROM celeriac_broadcast"
          " ORDER BY id LIMIT 64) AND id < ? AND (created_at < ? OR id <= ?)")
_READ = ("SELECT id, routing_key, content_type, content_encoding, headers, properties, body"
         " FROM celeriac_broadcast WHERE exchange = ? AND id > ? ORDER BY id")


class _Host(Protocol):
    def _connection(self) -> AbstractContextManager[sqlite3.Connection]: ...
    def _write(self, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]: ...
    def _change_waiter(self) -> ChangeWaiter: ...
    def _notify(self) -> None: ...


#: transports whose file is known to have the table
_READY: weakref.WeakSet[Any] = weakref.WeakSet()
_READY_LOCK = threading.Lock()


def _ensure_table(host: _Host) -> None:
    with _READY_LOCK:
        if host in _READY:
            return
    with host._write() as conn:
        for statement in _SCHEMA:
            conn.execute(statement)
    with _READY_LOCK:
        _READY.add(host)


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


class SQLiteSubscription:
    """Reads the broadcast rows of one exchange after the last id it saw."""

    def __init__(self, host: _Host, exchange: str, binding: str, last_id: int) -> None:
        self.exchange, self.binding = exchange, binding
        self._host = host
        self._last_id = last_id
        self._lock = threading.Lock()
        self._closed = False

    def _read(self) -> list[Message]:
        with self._host._connection() as conn:
            rows = conn.execute(_READ, (self.exchange, self._last_id)).fetchall()
        if rows:
            self._last_id = rows[-1][0]
        return [Message(bytes(body), ctype, cenc, json.loads(headers), json.loads(props))
                for _, key, ctype, cenc, headers, props, body in rows
                if topic_matches(self.binding, key)]

    def get(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            while not self._closed:
                waiter = self._host._change_waiter()
                token = waiter.token()  # before reading: a commit after the read wakes the wait
                messages = self._read()
                remaining = deadline - time.monotonic()
                if messages or remaining <= 0:
                    return messages
                # not hot: every commit to a busy file would wake this wait
                waiter.wait(remaining, token, hot=False, every=BROADCAST_POLL_INTERVAL)
            return []

    def close(self) -> None:
        self._closed = True
        self._host._notify()  # a get() waiting in this process returns at once


class SQLiteBroadcastMixin:
    """``Broadcast`` for ``SQLiteTransport`` (needs its ``_connection``, ``_write``,
    ``_change_waiter`` and ``_notify``). A subscriber that does not read for
    ``BROADCAST_RETENTION`` seconds (or falls ``BROADCAST_MAX_ROWS`` behind) misses what was
    pruned meanwhile, as a slow kombu subscriber loses what Redis drops."""

    def broadcast(self: _Host, exchange: str, message: Message, routing_key: str = "") -> None:
        """Store one row every current subscriber will read; prune rows too old to matter."""
        now = time.time()
        row = (exchange, routing_key, now, message.content_type, message.content_encoding,
               _dumps(message.headers), _dumps(message.properties), bytes(message.body))
        _ensure_table(self)
        with self._write(durable=False) as conn:  # fanout keeps nothing: no fsync
            new_id = conn.execute(_INSERT, row).lastrowid or 0
            conn.execute(_PRUNE, (new_id, now - BROADCAST_RETENTION, new_id - BROADCAST_MAX_ROWS))
        self._notify()

    def subscribe(self: _Host, exchange: str, binding: str = "#") -> Subscription:
        """Receive what ``exchange`` broadcasts from now on (``binding``: AMQP topic pattern)."""
        _ensure_table(self)
        with self._connection() as conn:
            last_id = conn.execute("SELECT coalesce(max(id), 0) FROM celeriac_broadcast"
                                   ).fetchone()[0]
        return SQLiteSubscription(self, exchange, binding, int(last_id))
