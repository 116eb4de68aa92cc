"""SQLite plumbing shared by the embedded transport and result store.

Layer: utils. One place for URL parsing, connection pragmas, the cheap cross-process change wait
(``PRAGMA data_version``) that lets consumers and result readers react within a fraction of a
millisecond without long polling sleeps, and the per-thread wire on which the broker and the result
store stage writes that commit together.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Callable, Protocol, runtime_checkable
from urllib.parse import unquote

from ..exceptions import ImproperlyConfigured
from .urls import redact_url

DEFAULT_SQLITE_URL = "sqlite:///celeriac.db"


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db`` (relative to cwd); ``sqlite:////abs.db`` -> ``/abs.db``.

    Also accepts Celery's ``db+sqlite://`` and ``sqla+sqlite://`` spellings. ``sqlite://`` alone
    (no path) is refused: an in-memory SQLite file cannot be shared between processes.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("sqlite", "db+sqlite", "sqla+sqlite"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = rest[1:] if rest.startswith("/") else rest
    path = unquote(path.split("?", 1)[0])
    if not path:
        # ImproperlyConfigured: the CLI shows it as one line
        raise ImproperlyConfigured(
            f"sqlite URL {redact_url(url)!r} names no file (an in-memory database cannot be "
            "shared between processes); use sqlite:///path/to/file.db")
    return path


def connect(path: str, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open ``path`` in WAL mode, autocommit, with a busy timeout so processes queue politely.

    New database files are created with mode 0600: the queue may hold private task arguments.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        # Switching a brand-new file to WAL takes a lock that the busy handler does not wait
        # for, so several processes opening one new file at once retry briefly.
        for attempt in range(200):
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.005 * (1 + attempt % 10))
        if str(mode).lower() != "wal":  # pragma: no cover - filesystems without shared memory
            raise RuntimeError(f"could not put {path!r} in WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


class ChangeWaiter:
    """Waits until the database file changes, from any process.

    ``PRAGMA data_version`` changes whenever *another* connection commits; reading it touches only
    the WAL index in shared memory (a few microseconds), so polling it often costs little. Writers
    in the same process also ``notify()`` to wake waiters at once (the pragma does not see commits
    made on the same connection).

    A wait polls every ``interval`` seconds for its first ``hot`` seconds, then backs off to
    ``max_interval``: what one waits for (the next task, a result) usually comes within a few
    milliseconds, and the time it waits unseen adds to every round trip, while a long quiet spell
    polls at the slow rate.
    """

    def __init__(self, path: str, *, interval: float = 0.00025, max_interval: float = 0.02,
                 hot: float = 0.005) -> None:
        self._conn = connect(path, synchronous="NORMAL")
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._generation = 0
        self.interval = min(interval, max_interval)
        self.max_interval = max_interval
        self.hot = hot

    def _read(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def token(self) -> tuple[int, int]:
        """Take this *before* reading the data you may wait on; pass it to ``wait``."""
        with self._cond:
            generation = self._generation
        return self._read(), generation

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, timeout: float, token: tuple[int, int] | None = None, *,
             hot: bool = True) -> bool:
        """Return True once the database changed since ``token`` was taken, False after ``timeout``.

        The poll interval stays short for the first ``hot`` seconds, then grows while the
        database stays quiet, so an idle consumer costs little CPU while a busy one reacts in a
        fraction of a millisecond. ``hot=False`` polls at ``max_interval`` from the start: for
        waiters that need no such haste and would otherwise poll fast after every commit of a
        busy file (a broadcast subscriber).
        """
        version, generation = token if token is not None else self.token()
        start = time.monotonic()
        deadline, hot_until = start + timeout, start + (self.hot if hot else 0.0)
        interval = self.interval if hot else self.max_interval
        while True:
            if self._read() != version:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            with self._cond:
                if self._generation != generation:
                    return True
                self._cond.wait(min(interval, deadline - now))
                if self._generation != generation:
                    return True
            if now >= hot_until:
                interval = min(interval * 1.5, self.max_interval)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Staged:
    """One staged operation: ``run(conn)`` inside the flush's transaction, ``then(reply)`` after
    its commit; ``failed()`` if it did not commit (or, with ``retain``, staged again instead)."""

    __slots__ = ("run", "then", "failed", "retain")

    def __init__(self, run: Callable[[sqlite3.Connection], Any],
                 then: Callable[[Any], None] | None, failed: Callable[[], None] | None,
                 retain: bool) -> None:
        self.run, self.then, self.failed, self.retain = run, then, failed, retain


class SQLiteWire:
    """Each thread's operations staged for one file, sent in one write transaction.

    The SQLite counterpart of a connection shared by broker and result store (see
    ``transport.base.SharedConnectionSettling``): the worker stages a task's result, its ack and
    the next fetch, and they cost one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (one write lock, one WAL
    append) instead of one each, committed all together or not at all.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _staged(self) -> list[_Staged]:
        staged: list[_Staged] | None = getattr(self._local, "staged", None)
        if staged is None:
            staged = self._local.staged = []
        return staged

    @property
    def pending(self) -> int:
        """How many operations this thread has staged."""
        return len(self._staged())

    def stage(self, run: Callable[[sqlite3.Connection], Any],
              then: Callable[[Any], None] | None = None, *,
              failed: Callable[[], None] | None = None, retain: bool = False) -> None:
        """Stage ``run`` for this thread's next ``send``. ``retain``: if that transaction fails,
        ``run`` stays staged (ahead of later ones) for the next; else ``failed()`` is called."""
        self._staged().append(_Staged(run, then, failed, retain))

    def send(self, conn: sqlite3.Connection,
             read: Callable[[sqlite3.Connection], Any] | None = None
             ) -> tuple[Any, Callable[[], None]]:
        """Run this thread's staged operations, then ``read``, in one write transaction on
        ``conn``; returns what ``read`` returned and a function that hands each operation its
        reply: call it once ``conn`` is released (a reply may use the store or the broker)."""
        staged = self._staged()
        ops, staged[:] = list(staged), []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                replies = [op.run(conn) for op in ops]
                value = read(conn) if read is not None else None
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            staged[:0] = [op for op in ops if op.retain]
            for op in ops:
                if not op.retain and op.failed is not None:
                    op.failed()
            raise

        def deliver() -> None:
            # every operation committed: each hears of it even if an earlier reply raised
            error: BaseException | None = None
            for op, reply in zip(ops, replies):
                if op.then is not None:
                    try:
                        op.then(reply)
                    except BaseException as exc:
                        error = error or exc
            if error is not None:
                raise error

        return value, deliver


@runtime_checkable
class OnSQLiteFile(Protocol):
    """A result store on a SQLite file: the wire its writes can ride on with the broker's, or
    None when they must not (they need a stronger ``synchronous`` than the broker's acks)."""

    def sqlite_wire(self) -> SQLiteWire | None: ...


_WIRES: dict[str, SQLiteWire] = {}
_WIRES_LOCK = threading.Lock()


def wire_for(path: str) -> SQLiteWire:
    """The one wire of ``path`` (the same file however it is spelled) in this process."""
    key = os.path.realpath(path)
    with _WIRES_LOCK:
        wire = _WIRES.get(key)
        if wire is None:
            wire = _WIRES[key] = SQLiteWire()
        return wire
