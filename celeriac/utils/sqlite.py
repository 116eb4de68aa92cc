"""SQLite plumbing shared by the embedded transport and result store.

Layer: utils. One place for URL parsing, connection pragmas, and the cheap cross-process change
wait (``PRAGMA data_version``) that lets consumers and result readers react within a millisecond or
two without long polling sleeps.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
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
    the WAL index in shared memory, so polling it every millisecond or two costs little. Writers in
    the same process also ``notify()`` to wake waiters at once (the pragma does not see commits made
    on the same connection).
    """

    def __init__(self, path: str, *, interval: float = 0.001, max_interval: float = 0.02) -> None:
        self._conn = connect(path, synchronous="NORMAL")
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._generation = 0
        self.interval = interval
        self.max_interval = max_interval

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

    def wait(self, timeout: float, token: tuple[int, int] | None = None) -> bool:
        """Return True once the database changed since ``token`` was taken, False after ``timeout``.

        The poll interval starts short and grows while the database stays quiet, so an idle
        consumer costs little CPU while a busy one reacts in about a millisecond.
        """
        version, generation = token if token is not None else self.token()
        deadline = time.monotonic() + timeout
        interval = self.interval
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
            interval = min(interval * 1.5, self.max_interval)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
