"""The cross-process change waiter (how often a quiet wait polls, inotify wake-ups) and
``begin_immediate``."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from celeriac.utils.sqlite import (
    BUSY_TIMEOUT_MS,
    ChangeWaiter,
    begin_immediate,
    busy_handler,
    connect,
)
from tests.waiting import wait_for


def _count_reads(waiter: ChangeWaiter) -> list[int]:
    """A one-item list counting the waiter's looks at the file from now on."""
    reads = [0]
    read = waiter._read

    def counted() -> int:
        reads[0] += 1
        return read()

    waiter._read = counted  # type: ignore[method-assign]
    return reads


def test_a_wait_that_is_not_hot_polls_at_the_slow_rate_from_the_start(tmp_path: Path) -> None:
    waiter = ChangeWaiter(str(tmp_path / "x.db"), max_interval=0.2)
    token = waiter.token()
    reads = _count_reads(waiter)
    assert waiter.wait(0.05, token, hot=False) is False
    assert reads == [1]  # after the one pause (capped by the timeout), not before it
    waiter.close()


def test_a_zero_interval_polls_at_a_floor_instead_of_spinning(tmp_path: Path) -> None:
    # polling_interval=0 on the SQLite transport reaches here as max_interval=0
    waiter = ChangeWaiter(str(tmp_path / "x.db"), interval=0, max_interval=0, inotify=False)
    token = waiter.token()
    reads = _count_reads(waiter)
    assert waiter.wait(0.2, token) is False
    waiter.close()
    assert waiter.interval > 0 and waiter.max_interval > 0
    # a look every 0.1 ms at most: about 2,000; it spun through about 20,000 before
    assert reads[0] <= 2500, reads


def test_a_cold_wait_pauses_every_given_seconds_and_a_change_in_this_process_ends_it(
        tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    waiter = ChangeWaiter(path, max_interval=0.001)
    other = connect(path)
    other.execute("CREATE TABLE t (x)")
    token = waiter.token()
    other.execute("INSERT INTO t VALUES (1)")  # a change before the wait: seen after one pause
    start = time.monotonic()
    assert waiter.wait(5.0, token, hot=False, every=0.1) is True
    assert 0.09 <= time.monotonic() - start < 2.0
    token = waiter.token()
    threading.Timer(0.05, waiter.notify).start()
    start = time.monotonic()
    assert waiter.wait(5.0, token, hot=False, every=30.0) is True
    assert time.monotonic() - start < 2.0
    other.close()
    waiter.close()


def test_a_commit_from_another_connection_ends_a_hot_wait(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    waiter = ChangeWaiter(path)
    token = waiter.token()
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    assert waiter.wait(5.0, token) is True
    waiter.close()


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def _commit_from_another_connection(path: str, table: str) -> None:
    other = sqlite3.connect(path)
    other.execute(f"CREATE TABLE {table} (x)")
    other.commit()
    other.close()


@pytest.mark.parametrize("inotify", [True, False])
def test_a_commit_ends_a_wait_with_or_without_inotify(tmp_path: Path, inotify: bool) -> None:
    path = str(tmp_path / "x.db")
    waiter = ChangeWaiter(path, inotify=inotify)
    assert waiter.watching is (inotify and sys.platform.startswith("linux"))
    token = waiter.token()
    _commit_from_another_connection(path, "t")
    assert waiter.wait(5.0, token) is True
    assert waiter.wait(0.01, waiter.token()) is False  # nothing new since
    waiter.close()


@linux_only
def test_a_commit_wakes_every_thread_asleep_on_inotify(tmp_path: Path) -> None:
    """With polling this slow, only the watch can end these waits before their timeout; one
    thread reads the events, and it wakes the others."""
    path = str(tmp_path / "x.db")
    waiter = ChangeWaiter(path, max_interval=120.0)
    assert waiter.watching
    token = waiter.token()
    results: list[bool] = []
    asleep = threading.Barrier(4)

    def wait() -> None:
        asleep.wait()
        results.append(waiter.wait(60.0, token))

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    asleep.wait()
    _commit_from_another_connection(path, "t")
    for thread in threads:
        thread.join(60)
    waiter.close()
    assert results == [True, True, True]


@linux_only
def test_a_write_published_after_the_hot_spell_is_still_seen_soon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A WAL write wakes the wait but shows no change yet, and the commit publishes later with
    no further event (its writer was descheduled in between): the wait backs off gradually
    instead of sleeping ``max_interval`` at once."""
    from celeriac.utils import sqlite as sqlite_module

    path = str(tmp_path / "x.db")
    waiter = ChangeWaiter(path, max_interval=120.0, hot=0.005)
    assert waiter.watching
    _commit_from_another_connection(path, "t0")  # the -wal file exists
    token = waiter.token()
    watch = waiter._watch
    assert watch is not None
    real_readable, woken = sqlite_module._readable, []

    def deaf_after_the_first_event(fds: tuple[int, ...], timeout: float) -> list[int]:
        """The watch's events after the first are read and dropped, as if never sent."""
        deadline = time.monotonic() + timeout
        while True:
            ready = real_readable(fds, max(deadline - time.monotonic(), 0.0))
            if watch.fd in ready and not woken:
                woken.append(True)
                return ready
            if watch.fd not in ready:
                return ready
            watch.drain()
            ready = [fd for fd in ready if fd != watch.fd]
            if ready or time.monotonic() >= deadline:
                return ready

    monkeypatch.setattr(sqlite_module, "_readable", deaf_after_the_first_event)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.wait(30.0, token)))
    thread.start()
    while not waiter._sleepers:
        time.sleep(0.001)
    wal = path + "-wal"
    os.truncate(wal, os.path.getsize(wal))  # a write event that changes nothing
    wait_for(lambda: woken, 5)
    time.sleep(0.05)  # well past the hot spell
    _commit_from_another_connection(path, "t1")  # the waiter hears nothing of it
    thread.join(3)
    alive = thread.is_alive()
    waiter.close()  # wakes it either way
    thread.join(10)
    assert not alive, "the wait slept max_interval after its hot spell"
    assert result == [True]


@linux_only
def test_notify_and_close_wake_a_thread_asleep_on_inotify(tmp_path: Path) -> None:
    waiter = ChangeWaiter(str(tmp_path / "x.db"), max_interval=120.0)
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(waiter.wait(60.0, token))
        except sqlite3.ProgrammingError as exc:  # closed meanwhile: the connection is gone
            outcome.append(type(exc))

    for wake in (waiter.notify, waiter.close):
        token = waiter.token()
        thread = threading.Thread(target=wait)
        thread.start()
        while not waiter._sleepers:  # asleep (registered) before we wake it
            time.sleep(0.001)
        wake()
        thread.join(60)
    assert outcome == [True, sqlite3.ProgrammingError]


@linux_only
def test_the_watch_reports_writes_to_the_wal_file_only(tmp_path: Path) -> None:
    from celeriac.utils.sqlite import _WalWatch

    path = str(tmp_path / "x.db")
    watch = _WalWatch.open(path)
    assert watch is not None
    (tmp_path / "x.db.log").write_text("unrelated")
    (tmp_path / "x.db-shm-not").write_text("unrelated")
    assert watch.drain() is False
    (tmp_path / "x.db-wal").write_bytes(b"frame")
    assert watch.drain() is True
    assert watch.drain() is False  # read once


def test_begin_immediate_waits_for_the_write_lock_then_restores_the_busy_timeout(
        tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    holder, conn = connect(path), connect(path)
    holder.execute("BEGIN IMMEDIATE")
    began = threading.Event()

    def begin() -> None:
        begin_immediate(conn)
        began.set()

    thread = threading.Thread(target=begin)
    thread.start()
    assert not began.wait(0.05)  # still waiting: the lock is held
    holder.execute("COMMIT")
    thread.join(60)
    assert began.is_set() and conn.in_transaction
    conn.execute("COMMIT")
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    holder.close()
    conn.close()


def test_begin_immediate_gives_up_after_the_busy_timeout_and_raises_other_errors_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import celeriac.utils.sqlite as sqlite_utils

    monkeypatch.setattr(sqlite_utils, "BUSY_TIMEOUT_MS", 30)
    path = str(tmp_path / "x.db")
    holder, conn = connect(path), connect(path)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(conn)
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30
    holder.execute("COMMIT")
    begin_immediate(conn)
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        begin_immediate(conn)  # not a busy file: raised on the first try
    conn.execute("ROLLBACK")
    holder.close()
    conn.close()


def test_a_kept_off_busy_handler_is_switched_once_for_a_run_of_transactions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import celeriac.utils.sqlite as sqlite_utils

    conn = connect(str(tmp_path / "x.db"))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for _ in range(3):
        begin_immediate(conn, keep_off=True)
        conn.execute("COMMIT")
    assert [s for s in statements if "busy_timeout=" in s] == ["PRAGMA busy_timeout=0"]
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert busy_handler(conn) is conn
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    busy_handler(conn)  # on already: no statement
    assert [s for s in statements if "busy_timeout=" in s] == [
        "PRAGMA busy_timeout=0", f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}"]
    # a transaction that could not begin leaves the handler on
    monkeypatch.setattr(sqlite_utils, "BUSY_TIMEOUT_MS", 30)
    holder = connect(str(tmp_path / "x.db"))
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(conn, keep_off=True)
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30
    holder.execute("COMMIT")
    # a plain sqlite3 connection knows nothing of it: the handler comes back on at once
    plain = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None)
    begin_immediate(plain, keep_off=True)
    plain.execute("COMMIT")
    assert plain.execute("PRAGMA busy_timeout").fetchone()[0] == 30
    for each in (conn, holder, plain):
        each.close()
