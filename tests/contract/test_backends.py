"""Runs the result-store conformance suite on the memory and SQLite stores, plus their specifics."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac import states
from celeriac.backends import backend_from_url, memory
from celeriac.backends import sqlite as sqlite_backend
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.exceptions import ImproperlyConfigured
from celeriac.testing.backend_suite import BackendContract, MakeBackend, SharedBackendContract
from tests.waiting import wait_for


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def make_backend(self) -> Iterator[MakeBackend]:
        name = f"contract-{uuid.uuid4().hex}"
        made: list[MemoryBackend] = []

        def make(**options: Any) -> MemoryBackend:
            made.append(MemoryBackend(url=f"memory://{name}", **options))
            return made[-1]

        yield make
        for backend in made:
            backend.close()
        memory.reset(name)


class TestSQLiteBackend(SharedBackendContract):
    @pytest.fixture
    def process_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/results.db"

    @pytest.fixture
    def make_backend(self, process_url: str) -> Iterator[MakeBackend]:
        made: list[SQLiteBackend] = []

        def make(**options: Any) -> SQLiteBackend:
            made.append(SQLiteBackend(url=process_url, **options))
            return made[-1]

        yield make
        for backend in made:
            backend.close()


# ---- memory:// naming -------------------------------------------------------------------------
def test_memory_urls_name_shared_stores() -> None:
    name = f"naming-{uuid.uuid4().hex}"
    try:
        first = backend_from_url(f"memory://{name}")
        second = backend_from_url(f"cache+memory://{name}/")
        other = MemoryBackend(url=f"memory://{name}-other")
        assert isinstance(first, MemoryBackend) and isinstance(second, MemoryBackend)
        first.set_value("k", 1)
        assert second.get_value("k") == 1
        assert other.get_value("k") is None
    finally:
        memory.reset(name)
        memory.reset(f"{name}-other")


def test_bare_memory_url_is_one_shared_default() -> None:
    key = f"k-{uuid.uuid4().hex}"
    try:
        MemoryBackend(url="memory://").set_value(key, "v")
        assert MemoryBackend().get_value(key) == "v"
    finally:
        memory.reset("")


def test_memory_reset_detaches_open_backends() -> None:
    name = f"reset-{uuid.uuid4().hex}"
    old = MemoryBackend(url=f"memory://{name}")
    old.set_value("k", 1)
    memory.reset(name)
    assert MemoryBackend(url=f"memory://{name}").get_value("k") is None
    assert old.get_value("k") == 1
    memory.reset(name)


# ---- SQLite specifics ---------------------------------------------------------------------------
def _rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT key, expires_at FROM celeriac_result ORDER BY key").fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


@pytest.fixture
def opened() -> Iterator[list[SQLiteBackend]]:
    backends: list[SQLiteBackend] = []
    yield backends
    for backend in backends:
        backend.close()


def _open(opened: list[SQLiteBackend], url: str, **options: Any) -> SQLiteBackend:
    opened.append(SQLiteBackend(url=url, **options))
    return opened[-1]


def test_sqlite_tables_share_the_file_with_the_broker(db: Path, opened: list) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE celeriac_queue (id INTEGER PRIMARY KEY, body BLOB)")
    conn.execute("INSERT INTO celeriac_queue (body) VALUES (x'00')")
    conn.commit()
    conn.close()
    backend = _open(opened, f"sqlite:///{db}")
    backend.mark_as_done("t1", 1)
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE "
                                            "'sqlite_%' AND name NOT LIKE 'celeriac_queue%'")]
        assert conn.execute("SELECT count(*) FROM celeriac_queue").fetchone()[0] == 1
    finally:
        conn.close()
    assert names and all(name.startswith("celeriac_result") for name in names)
    assert isinstance(backend_from_url(f"db+sqlite:///{db}"), SQLiteBackend)


@pytest.mark.parametrize(("query", "pragma"), [("", 1), ("?synchronous=FULL", 2),
                                               ("?synchronous=extra", 3)])
def test_sqlite_synchronous_mode(db: Path, opened: list, query: str, pragma: int) -> None:
    backend = _open(opened, f"sqlite:///{db}{query}")
    backend.set_value("k", 1)
    with backend._connection() as conn:  # noqa: SLF001 - its pragma is the thing under test
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == pragma


def test_sqlite_refuses_unknown_synchronous_mode(db: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="synchronous"):
        SQLiteBackend(url=f"sqlite:///{db}?synchronous=FULL;DROP")


def test_sqlite_expired_rows_are_hidden_then_swept(db: Path, opened: list) -> None:
    lazy = _open(opened, f"sqlite:///{db}", expires=0.05, cleanup_interval=3600)
    keeper = _open(opened, f"sqlite:///{db}", expires=0)
    lazy.mark_as_done("short", 1)
    keeper.mark_as_done("kept", 2)
    time.sleep(0.1)
    assert lazy.get_task_meta("short")["status"] == states.PENDING
    assert [key for key, _ in _rows(db)] == ["celery-task-meta-kept", "celery-task-meta-short"]
    sweeper = _open(opened, f"sqlite:///{db}", cleanup_interval=0)
    assert sweeper.get_task_meta("kept")["result"] == 2
    assert _rows(db) == [("celery-task-meta-kept", None)]


def test_sqlite_closes_every_threads_connection(db: Path) -> None:
    backend = SQLiteBackend(url=f"sqlite:///{db}")
    release = threading.Event()

    def use() -> None:
        backend.set_value("k", 1)
        release.wait(10)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    backend.get_value("k")
    wait_for(lambda: len(backend._handles) >= 4, 10, interval=0.005,  # noqa: SLF001
             message=lambda: f"{len(backend._handles)} connection(s) open")  # noqa: SLF001
    conns = [handle.conn for handle in backend._handles]  # noqa: SLF001
    backend.close()
    release.set()
    for thread in threads:
        thread.join()
    assert len(conns) == 4
    for conn in conns:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")  # type: ignore[union-attr]
    try:
        backend.set_value("k", 2)  # usable again: reopens lazily
        assert backend.get_value("k") == 2
    finally:
        backend.close()


def test_sqlite_close_while_other_threads_are_busy(db: Path) -> None:
    backend = SQLiteBackend(url=f"sqlite:///{db}")
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0, 0, 0]

    def hammer(n: int) -> None:
        try:
            while not stop.is_set():
                backend.set_value(f"k{n}", n)
                assert backend.get_value(f"k{n}") == n
                done[n] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            time.sleep(0.003)
            backend.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        backend.close()
    assert errors == []
    assert all(done)


def test_sqlite_closes_connections_of_finished_threads(db: Path, opened: list) -> None:
    backend = _open(opened, f"sqlite:///{db}")
    thread = threading.Thread(target=backend.set_value, args=("k", 1))
    thread.start()
    thread.join()
    (finished,) = backend._handles  # noqa: SLF001
    finished_conn = finished.conn
    assert backend.get_value("k") == 1  # the main thread's first use prunes the finished one
    with pytest.raises(sqlite3.ProgrammingError):
        finished_conn.execute("SELECT 1")  # type: ignore[union-attr]
    assert len(backend._handles) == 1  # noqa: SLF001


def test_sqlite_forked_child_opens_its_own_connections(db: Path, opened: list) -> None:
    backend = _open(opened, f"sqlite:///{db}")
    backend.set_value("k", 1)
    (parent_handle,) = backend._handles  # noqa: SLF001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        ok = False
        try:
            backend.set_value("k", 2)
            ok = (backend.incr("n") == 1 and parent_handle not in backend._handles  # noqa: SLF001
                  and parent_handle in sqlite_backend._INHERITED)  # noqa: SLF001
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get_value("k") == 2
    assert backend._handles[0] is parent_handle  # noqa: SLF001
