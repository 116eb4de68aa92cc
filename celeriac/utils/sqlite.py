"""SQLite plumbing shared by the embedded transport and result store.

Layer: utils. One place for URL parsing, connection pragmas, the cheap cross-process change wait
(``PRAGMA data_version``) that lets consumers and result readers react within a fraction of a
millisecond without long polling sleeps, and the per-thread wire on which the broker and the result
store stage writes that commit together.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import sqlite3
import struct
import sys
import threading
import time
import weakref
from typing import Any, Callable, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote

from ..exceptions import ImproperlyConfigured
from .spin import look_until
from .urls import redact_url

logger = logging.getLogger(__name__)

DEFAULT_SQLITE_URL = "sqlite:///celeriac.db"
#: the ``PRAGMA synchronous`` levels a URL's ``?synchronous=`` may name, weakest first
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def synchronous_mode(value: object, where: str,
                     allowed: tuple[str, ...] = SYNCHRONOUS_MODES) -> str:
    """``value`` (any case) as one of ``allowed``, or one ``ImproperlyConfigured`` line naming
    ``where`` it came from (``"broker_url"``, ``"result_backend"``...)."""
    mode = value.upper() if isinstance(value, str) else None
    if mode not in allowed:
        raise ImproperlyConfigured(f"{where}: synchronous={value!r} is not one of "
                                   f"{', '.join(allowed)}")
    return mode


def synchronous_from_url(url: str, where: str,
                         allowed: tuple[str, ...] = SYNCHRONOUS_MODES) -> str | None:
    """The ``?synchronous=`` a SQLite URL asks for (checked, upper case), or None."""
    values = parse_qs(url.partition("?")[2]).get("synchronous")
    return synchronous_mode(values[-1], where, allowed) if values else None


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


#: how long a connection waits for a lock before giving up (SQLite's busy timeout), milliseconds
BUSY_TIMEOUT_MS = 30000
#: WAL pages a commit may leave before it checkpoints them into the file (SQLite's default is
#: 1,000): a checkpoint syncs the WAL and the file, two fsyncs, and a task's transactions touch
#: ~50 pages, so the default cost a worker a checkpoint every ~20 tasks; 10,000 (a WAL of up to
#: ~40 MB) makes it every ~200
WAL_CHECKPOINT_PAGES = 10000
#: the naps ``begin_immediate`` takes while another connection holds the write lock, seconds
_WRITE_NAPS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001)


class Connection(sqlite3.Connection):
    """The connections ``connect`` opens: each remembers whether ``begin_immediate`` left
    SQLite's busy handler off, so a run of write transactions on it switches the handler off
    once rather than off and on again around each (two statements, one of them under the write
    lock). ``busy_handler`` puts it back before any other use."""

    busy_handler_off = False


def busy_handler(conn: sqlite3.Connection) -> sqlite3.Connection:
    """``conn`` with SQLite's busy handler on, as ``begin_immediate(conn, keep_off=True)`` may
    have left it off: call it before any statement outside such a transaction."""
    if getattr(conn, "busy_handler_off", False):
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.busy_handler_off = False  # type: ignore[attr-defined]
    return conn


def begin_immediate(conn: sqlite3.Connection, *, keep_off: bool = False) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``: the write lock, waited for in short naps.

    SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ms...: long next to the tens of
    microseconds a transaction here holds the lock, so processes sharing the file (a worker's
    pool processes, producers) would spend much of their time asleep. The busy timeout is off
    for the attempt only (but see ``keep_off``); every other statement keeps SQLite's handler,
    which also waits out a recovery or another connection's closing checkpoint. Gives up with
    SQLite's own error after ``BUSY_TIMEOUT_MS``, as the handler would.

    ``keep_off`` (a ``Connection`` whose user calls ``busy_handler`` before its other
    statements): the handler stays off once the transaction has begun. The transaction's own
    statements never need it: holding the write lock of a WAL file, none waits on another
    connection.
    """
    lazy = keep_off and isinstance(conn, Connection)
    if not (lazy and conn.busy_handler_off):  # type: ignore[attr-defined]
        conn.execute("PRAGMA busy_timeout=0")
    began = False
    try:
        attempt, deadline = 0, 0.0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                began = True
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF \
                        != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + BUSY_TIMEOUT_MS / 1000
                elif now >= deadline:
                    raise
            time.sleep(_WRITE_NAPS[min(attempt, len(_WRITE_NAPS) - 1)])
            attempt += 1
    finally:
        if lazy and began:
            conn.busy_handler_off = True  # type: ignore[attr-defined]
        else:
            if lazy:
                conn.busy_handler_off = False  # type: ignore[attr-defined]
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def connect(path: str, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open ``path`` in WAL mode, autocommit, with a busy timeout so processes queue politely.

    New database files are created with mode 0600: the queue may hold private task arguments.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False, factory=Connection)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    except BaseException:
        conn.close()
        raise
    return conn


class _WalWatch:
    """Linux inotify on the directory of a SQLite file, reporting writes to its ``-wal`` file: a
    commit from any process wakes a waiter without its polling. ``open`` returns None where
    inotify is missing or refused (another system, the per-user instance limit): the waiter
    polls then."""

    _libc: Any = None

    def __init__(self, fd: int, name: bytes) -> None:
        self.fd = fd
        self._name = name
        # closed once nothing holds the watch: a thread still sleeping on it when its waiter is
        # closed never selects on a closed (or reused) descriptor
        weakref.finalize(self, _close_fds, fd)

    @classmethod
    def open(cls, path: str) -> "_WalWatch | None":
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = cls._libc
            if libc is None:
                libc = cls._libc = ctypes.CDLL(None, use_errno=True)
            real = os.path.realpath(path)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            directory = os.path.dirname(real).encode()
            if libc.inotify_add_watch(fd, directory, _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO) < 0:
                error = ctypes.get_errno()
                os.close(fd)
                raise OSError(error, "inotify_add_watch")
        except (OSError, AttributeError) as exc:
            logger.debug("no inotify for %s (%s): waiting by polling", path, exc)
            return None
        return cls(fd, os.path.basename(real).encode() + b"-wal")

    def drain(self) -> bool:
        """Read every pending event; whether one was about the ``-wal`` file (or events were
        lost: the queue overflowed)."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset + 16 <= len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0")
                seen = seen or name == self._name or bool(mask & _IN_Q_OVERFLOW)
                offset += 16 + length


_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE, _IN_Q_OVERFLOW = 0x2, 0x80, 0x100, 0x4000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, getattr(os, "O_CLOEXEC", 0)


class _ThreadPipe:
    """A waiting thread's own wake-up pipe (closed when the thread ends)."""

    __slots__ = ("r", "w", "__weakref__")

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        weakref.finalize(self, _close_fds, self.r, self.w)

    def drain(self) -> None:
        try:
            while os.read(self.r, 512):
                pass
        except BlockingIOError:
            pass


def _readable(fds: tuple[int, ...], timeout: float) -> list[int]:
    """Which of ``fds`` are readable within ``timeout`` seconds: ``select`` (microseconds) for
    descriptors it can take, else ``poll`` (whole milliseconds)."""
    if max(fds) < 1024:  # FD_SETSIZE
        return select.select(fds, (), (), timeout)[0]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(timeout, 0.0) * 1000.0)]


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


#: the shortest pause between two looks of a polling wait (a zero interval would spin)
MIN_INTERVAL = 0.0001


class ChangeWaiter:
    """Waits until the database file changes, from any process.

    ``PRAGMA data_version`` changes whenever *another* connection commits; reading it touches only
    the WAL index in shared memory (a few microseconds). Writers in the same process also
    ``notify()`` to wake waiters at once.

    On Linux a wait sleeps on inotify (``_WalWatch``): every commit appends to the ``-wal`` file,
    and the write wakes the waiting threads at once, in every process, with no polling. As a
    commit's write comes just before SQLite publishes it in the WAL index, a write that shows no
    change yet is followed by polling every ``interval`` seconds for ``hot`` seconds, then at a
    pause growing 1.5x a look up to ``max_interval`` (a writer descheduled mid-commit publishes
    with no further event). Between writes the wait still checks every ``max_interval``
    seconds, so a write inotify did not report is seen as late as it would be by polling alone.

    Elsewhere (or if inotify is refused), a wait polls every ``interval`` seconds for its first
    ``hot`` seconds, then backs off to ``max_interval``: what one waits for (the next task, a
    result) usually comes within a few milliseconds, and the time it waits unseen adds to every
    round trip, while a long quiet spell polls at the slow rate.
    """

    def __init__(self, path: str, *, interval: float = 0.00025, max_interval: float = 0.02,
                 hot: float = 0.005, inotify: bool = True) -> None:
        self._conn = connect(path, synchronous="NORMAL")
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._generation = 0
        #: floors: a zero interval (``polling_interval=0``) made every wait spin on the file
        self.max_interval = max(max_interval, MIN_INTERVAL)
        self.interval = min(max(interval, MIN_INTERVAL), self.max_interval)
        self.hot = hot
        #: the inotify watch every waiting thread of this process sleeps on, or None (polling,
        #: or no hot wait yet): opened at the first hot wait, so a process that only reads
        #: (a worker's revoke checks take tokens) never pays for the file's write events
        self._watch: _WalWatch | None = None
        self._path = path
        self._inotify = inotify
        #: the wake-up pipes of the threads sleeping on it (their write ends): ``notify()`` and
        #: the thread that reads a watch's events wake them all
        self._sleepers: set[int] = set()
        self._local = threading.local()
        self._closed = False

    @property
    def watching(self) -> bool:
        """Whether waits sleep on inotify rather than polling."""
        return self._open_watch() is not None

    def _open_watch(self) -> _WalWatch | None:
        """The watch, opened on first use (None: polling)."""
        watch = self._watch
        if watch is None and self._inotify:
            with self._cond:
                if self._watch is None and self._inotify and not self._closed:
                    self._watch = _WalWatch.open(self._path)
                    self._inotify = self._watch is not None
                watch = self._watch
        return watch

    def _read(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def token(self) -> tuple[int, int]:
        """Take this *before* reading the data you may wait on; pass it to ``wait``."""
        watch = self._watch
        if watch is not None:  # writes seen so far are older than the token: no wake-up due
            self._drain(watch)
        with self._cond:
            generation = self._generation
        return self._read(), generation

    def _drain(self, watch: _WalWatch, own: int = -1) -> bool:
        """Read the watch's events; if a write to the WAL was among them, wake the sleeping
        threads (but the caller, whose pipe is ``own``): they may have slept through the events
        this thread took."""
        seen = watch.drain()
        if seen:
            with self._cond:
                self._wake_sleepers(own)
        return seen

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            self._wake_sleepers()

    def _wake_sleepers(self, but: int = -1) -> None:
        """Hold ``_cond``. ``but``: a pipe not to write to (the caller's own)."""
        for fd in self._sleepers:
            if fd == but:
                continue
            try:
                os.write(fd, b"!")
            except OSError:  # full: it has a wake-up pending already
                pass

    def wait(self, timeout: float, token: tuple[int, int] | None = None, *,
             hot: bool = True, every: float | None = None, spin_until: float = 0.0) -> bool:
        """Return True once the database changed since ``token`` was taken, False after ``timeout``.

        ``hot=False`` pauses, then polls, every ``every`` seconds (at least ``max_interval``),
        never woken by other processes' commits: for waiters that need no haste and would
        otherwise wake at every commit of a busy file (a broadcast subscriber, which reads just
        before it waits). A commit in this process still wakes it at once. ``spin_until`` (a
        ``time.perf_counter`` time): until then a wait on inotify polls its descriptors,
        yielding the CPU between looks, instead of sleeping on them.
        """
        version, generation = token if token is not None else self.token()
        if hot and self._open_watch() is not None:
            return self._sleep(timeout, version, generation, spin_until)
        start = time.monotonic()
        deadline, hot_until = start + timeout, start + (self.hot if hot else 0.0)
        interval = (self.interval if hot
                    else max(self.max_interval, every if every is not None else 0.0))
        look = hot  # a cold wait first pauses: on a busy file a look would find a change at once
        while True:
            if look and self._read() != version:
                return True
            look = True
            now = time.monotonic()
            if now >= deadline:
                return False
            with self._cond:
                if self._generation != generation:
                    return True
                self._cond.wait(min(interval, deadline - now))
                if self._generation != generation:
                    return True
            if hot and now >= hot_until:
                interval = min(interval * 1.5, self.max_interval)

    def _sleep(self, timeout: float, version: int, generation: int,
               spin_until: float = 0.0) -> bool:
        """``wait`` on inotify: select on the watch and this thread's wake-up pipe."""
        pipe: _ThreadPipe | None = getattr(self._local, "pipe", None)
        if pipe is None:
            pipe = self._local.pipe = _ThreadPipe()
        with self._cond:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            watch = self._watch
            assert watch is not None
            self._sleepers.add(pipe.w)
        try:
            deadline = time.monotonic() + timeout
            hot_until = 0.0
            pause = self.max_interval
            fds = (watch.fd, pipe.r)

            def look() -> list[int]:
                return _readable(fds, 0.0)

            while True:
                # registered first: a notify() or a drained write from here on reaches the pipe
                if self._read() != version:
                    return True
                now = time.monotonic()
                if now >= deadline:
                    return False
                with self._cond:
                    if self._generation != generation:
                        return True
                if now >= hot_until:
                    # a write still unpublished after ``hot`` (its writer descheduled on a busy
                    # machine): back off gradually, as it publishes with no further event
                    pause = min(pause * 1.5, self.max_interval)
                ready: list[int] = []
                if spin_until:  # (never past the wait's own end)
                    until = min(spin_until, time.perf_counter() + deadline - now)
                    ready = look_until(look, until) or []
                if not ready:
                    ready = _readable(fds, min(pause, deadline - now))
                woken = pipe.r in ready
                if woken:
                    pipe.drain()
                if watch.fd in ready and self._drain(watch, pipe.w):
                    woken = True
                if woken:
                    hot_until = time.monotonic() + self.hot
                    pause = self.interval
        finally:
            with self._cond:
                self._sleepers.discard(pipe.w)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._wake_sleepers()
            self._watch = None  # its descriptor closes once no sleeping thread holds it
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
        reply: call it once ``conn`` is released (a reply may use the store or the broker).
        The transaction may leave ``conn``'s busy handler off: ``busy_handler`` before other
        statements on it."""
        staged = self._staged()
        ops, staged[:] = list(staged), []
        try:
            begin_immediate(conn, keep_off=True)
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
