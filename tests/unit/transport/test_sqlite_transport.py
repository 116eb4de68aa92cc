"""SQLite-broker specifics: on-disk layout, query plans, processes sharing one file, fork safety."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.message import Message
from celeriac.transport import transport_from_url
from celeriac.transport.base import Outgoing
from celeriac.transport.sqlite import SQLiteTransport, _lease_sql
from celeriac.utils.sqlite import WAL_CHECKPOINT_PAGES


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "broker.db")


def _put(transport: SQLiteTransport, queue: str, *tags: str) -> None:
    transport.publish([Outgoing(queue, Message(t.encode(), headers={"id": t})) for t in tags])


def test_urls_and_options(db: str) -> None:
    for scheme in ("sqlite", "sqla+sqlite"):
        transport = transport_from_url(f"{scheme}:///{db}", visibility_timeout=7,
                                       polling_interval=0.005, unknown_option="ignored")
        assert isinstance(transport, SQLiteTransport)
        assert (transport.path, transport.visibility_timeout) == (db, 7.0)
        _put(transport, "q", "m")
        assert transport.fetch(["q"], 1, 1.0)[0].message.body == b"m"
        assert transport._change_waiter().max_interval == 0.005
        transport.close()


def test_layout_prefixed_tables_json_text_and_blob_body(db: str) -> None:
    transport = SQLiteTransport(db)
    transport.publish([Outgoing("q", Message(b"\x00\x01", headers={"id": "a", "n": [1, 2]},
                                             properties={"priority": 4}))])
    transport.dead_letter("q", Message(b"x"), "why")
    transport.close()
    raw = sqlite3.connect(db)
    try:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"celeriac_queue", "celeriac_dead_letter"} <= names
        assert not any(n.startswith("celeriac_result") for n in names)
        assert all(n.startswith(("celeriac_queue", "celeriac_dead_letter", "sqlite_"))
                   for n in names)
        row = raw.execute("SELECT headers, properties, typeof(body), body, priority"
                          " FROM celeriac_queue").fetchone()
        assert row == ('{"id":"a","n":[1,2]}', '{"priority":4}', "blob", b"\x00\x01", 4)
    finally:
        raw.close()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_connections_are_in_wal_mode_and_close_releases_the_file(db: str) -> None:
    transport = SQLiteTransport(db)
    _put(transport, "q", "m")
    transport.fetch(["q"], 1, 0)  # opens the change waiter too
    with transport._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, the default
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES
    assert os.path.exists(db + "-wal")
    transport.close()
    assert not os.path.exists(db + "-wal")  # the last connection closed checkpoints the WAL


@pytest.mark.parametrize(("url_query", "options", "mode"), [
    ("", {}, 1), ("?synchronous=FULL", {}, 2), ("?synchronous=extra", {}, 3),
    ("", {"synchronous": "full"}, 2), ("?synchronous=normal", {"synchronous": "NORMAL"}, 1)])
def test_synchronous_option_sets_the_publishing_connections_mode(
        db: str, url_query: str, options: dict, mode: int) -> None:
    transport = transport_from_url(f"sqlite:///{db}{url_query}", **options)
    assert isinstance(transport, SQLiteTransport)
    assert transport.path == db
    publishes: list[int] = []
    _put(transport, "q", "warm-up")
    for conn in transport._all:
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.set_trace_callback(
            lambda sql, level=level: publishes.append(level) if sql.startswith("INSERT") else None)
    _put(transport, "q", "m")
    with transport._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == mode
    with transport._connection(durable=False) as conn:  # leases, acks: never fsynced
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    transport.close()
    assert publishes == [mode]


@pytest.mark.parametrize(("url", "options", "says"), [
    ("sqlite:///{db}?synchronous=fast", {}, "broker_url: synchronous='fast' is not one of"),
    ("sqlite:///{db}?synchronous=OFF", {}, "broker_url: synchronous='OFF' is not one of"),
    ("sqlite:///{db}", {"synchronous": 2}, "broker_transport_options: synchronous=2"),
    ("sqlite:///{db}?synchronous=FULL", {"synchronous": "NORMAL"}, "give it in one place")])
def test_a_bad_synchronous_option_fails_with_one_line(db: str, url: str, options: dict,
                                                     says: str) -> None:
    with pytest.raises(ImproperlyConfigured) as failure:
        transport_from_url(url.format(db=db), **options)
    assert says in str(failure.value)
    assert "\n" not in str(failure.value)
    assert not os.path.exists(db)  # refused before the file was touched


def test_an_app_passes_the_synchronous_option_to_its_broker(db: str) -> None:
    app = Celery("sync", broker=f"sqlite:///{db}",
                 broker_transport_options={"synchronous": "FULL"})
    try:
        assert app.transport.synchronous == "FULL"  # type: ignore[attr-defined]
    finally:
        app.close()
    app = Celery("sync", broker=f"sqlite:///{db}?synchronous=FULL")
    try:
        assert app.transport.synchronous == "FULL"  # type: ignore[attr-defined]
        assert app.backend.synchronous == "FULL"  # type: ignore[attr-defined] # the same URL
    finally:
        app.close()


_KILLED_PRODUCER = """
import os, signal, sys
from celeriac import Celery
app = Celery("killed", broker=sys.argv[1])
@app.task
def job(n):
    return n
result = job.delay(7)
sys.stdout.write(result.id)
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no interpreter exit
"""


@pytest.mark.parametrize("query", ["", "?synchronous=FULL"])
def test_a_publish_survives_a_sigkill_of_the_producer_right_after_delay(
        db: str, query: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_PRODUCER, f"sqlite:///{db}{query}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert os.path.exists(db + "-wal")  # the commit was left in the WAL, not checkpointed
    transport = SQLiteTransport(db)
    try:
        [delivery] = transport.fetch(["celery"], 10, 0)
        assert delivery.message.headers["id"] == proc.stdout
        assert delivery.message.headers["task"] == "killed.job"
    finally:
        transport.close()


def test_each_write_runs_on_a_connection_already_at_its_durability(db: str) -> None:
    # asked to, publishes fsync (FULL); leases and acks need not (NORMAL). Each pooled
    # connection keeps one mode, so no write switches it with extra pragma statements.
    transport = SQLiteTransport(db, synchronous="FULL")
    _put(transport, "q", "warm-up")
    transport.ack(transport.fetch(["q"], 1, 0))
    statements: list[tuple[int, str]] = []
    for conn in transport._all:
        mode = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.set_trace_callback(lambda sql, mode=mode: statements.append((mode, sql)))
    _put(transport, "q", "a", "b")
    transport.ack(transport.fetch(["q"], 2, 0))
    _put(transport, "q", "c")
    transport.ack(transport.fetch(["q"], 1, 0))
    transport.close()
    assert not [sql for _, sql in statements if "synchronous" in sql.lower()]
    assert {mode for mode, sql in statements if sql.startswith("INSERT")} == {2}  # FULL
    assert {mode for mode, sql in statements if sql.startswith(("UPDATE", "DELETE"))} == {1}


def test_a_fetch_takes_the_write_lock_only_when_something_is_due(db: str) -> None:
    """An idle consumer wakes at every commit to the file; its look must not hold up the
    writers (their transactions would wait for it in SQLite's busy handler)."""
    transport = SQLiteTransport(db)
    transport.publish([Outgoing("q", Message(b"later"), time.time() + 3600)])
    _put(transport, "other", "elsewhere")
    statements: list[str] = []
    for conn in transport._all:
        conn.set_trace_callback(statements.append)
    assert transport.fetch(["q"], 5, 0) == []  # only a message due in an hour
    assert not [s for s in statements if s.startswith(("BEGIN", "UPDATE", "DELETE"))]
    _put(transport, "q", "now")
    for conn in transport._all:
        conn.set_trace_callback(statements.append)
    [delivery] = transport.fetch(["q"], 5, 0)
    assert delivery.message.body == b"now"
    assert "BEGIN IMMEDIATE" in statements
    transport.extend_lease([delivery], 0)  # its lease runs out: due again, at once
    [again] = transport.fetch(["q"], 5, 0)
    assert (again.message.body, again.redelivered) == (b"now", True)
    transport.close()


def test_polling_never_slower_than_the_polling_interval(db: str) -> None:
    transport = SQLiteTransport(db, polling_interval=0.0001)
    waiter = transport._change_waiter()
    assert waiter.interval <= waiter.max_interval == 0.0001
    transport.close()


def test_fetch_reads_only_through_indexes(db: str) -> None:
    transport = SQLiteTransport(db)
    transport.declare("a")  # creates the schema
    transport.close()
    raw = sqlite3.connect(db)
    try:
        plan = " | ".join(r[3] for r in raw.execute(
            "EXPLAIN QUERY PLAN " + _lease_sql(2), [0, 0, "a", 5, "b", 5, 5]))
        waiting = " | ".join(r[3] for r in raw.execute(
            "EXPLAIN QUERY PLAN SELECT min(visible_at) FROM celeriac_queue"
            " WHERE queue = ? AND state != 0", ["a"]))
    finally:
        raw.close()
    assert plan.count("USING COVERING INDEX celeriac_queue_ready") == 2
    assert "SCAN celeriac_queue" not in plan
    assert "USING INDEX celeriac_queue_waiting" in waiting


def _fetch_work(db: str, delayed: int) -> int:
    """SQLite virtual-machine steps (in hundreds) that 20 fetch-and-requeue rounds take with
    ``delayed`` not-yet-due messages in the queue: a count of work, not a clock reading."""
    transport = SQLiteTransport(db)
    later = time.time() + 3600
    if delayed:
        transport.publish([Outgoing("q", Message(b"d"), later) for _ in range(delayed)])
    _put(transport, "q", "now")
    [d] = transport.fetch(["q"], 1, 0)  # opens the connection the rounds below use
    assert transport.reject(d, requeue=True)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    for conn in transport._all:
        conn.set_progress_handler(count, 100)
    for _ in range(20):
        [d] = transport.fetch(["q"], 1, 0)
        assert transport.reject(d, requeue=True)
    transport.close()
    return steps[0]


def test_many_delayed_messages_stay_out_of_the_fetch_path(tmp_path: Path) -> None:
    # A scan of the 20,000 delayed rows would cost hundreds of steps per fetch; the indexes
    # keep a fetch's work about what it is on an empty queue.
    without = _fetch_work(str(tmp_path / "few.db"), 0)
    with_many = _fetch_work(str(tmp_path / "many.db"), 20000)
    assert with_many <= 2 * without + 20, (without, with_many)


def test_a_commit_from_another_connection_wakes_a_waiting_fetch(db: str) -> None:
    consumer, producer = SQLiteTransport(db), SQLiteTransport(db)
    consumer.declare("q")
    timer = threading.Timer(0.1, _put, (producer, "q", "m"))
    started = time.monotonic()
    timer.start()
    try:
        got = consumer.fetch(["q"], 1, 5.0)
    finally:
        timer.join()
        producer.close()
    consumer.close()
    assert [d.message.body for d in got] == [b"m"]
    assert time.monotonic() - started < 0.1 + 0.15  # polled, not slept


def test_simultaneous_first_opens_of_a_new_file(tmp_path: Path) -> None:
    for round_ in range(40):  # without the retry, roughly one round in seven fails
        path = str(tmp_path / f"new-{round_}.db")
        transports = [SQLiteTransport(path) for _ in range(6)]
        barrier = threading.Barrier(len(transports))
        errors: list[BaseException] = []

        def open_it(transport: SQLiteTransport, barrier: threading.Barrier,
                    errors: list[BaseException]) -> None:
            barrier.wait()
            try:
                transport.fetch(["q"], 1, 0)
            except BaseException as exc:  # collected: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=open_it, args=(t, barrier, errors))
                   for t in transports]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for transport in transports:
            transport.close()
        assert errors == []


def test_forked_child_opens_its_own_connections(db: str) -> None:
    transport = SQLiteTransport(db)
    _put(transport, "q", "parent")
    inherited = list(transport._all)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            _put(transport, "q", "child")
            code = 0 if transport._all and not set(transport._all) & set(inherited) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(d.message.body for d in transport.fetch(["q"], 5, 1.0)) == [b"child", b"parent"]
    transport.close()


_CHILD = """
import json, os, sys, time
from celeriac.transport.sqlite import SQLiteTransport
transport = SQLiteTransport(sys.argv[1], visibility_timeout=60)
print("ready", flush=True)
got, acked, counts = [], [], []
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    batch = transport.fetch(["q"], 5, 0.2)
    got += [d.message.body.decode() for d in batch]
    counts += [d.delivery_count for d in batch]
    acked += transport.ack(batch)
    time.sleep(0.002)  # a little "work", so the others get their turn
    if not batch and os.path.exists(sys.argv[2]) and transport.qsize("q") == 0:
        break
transport.close()
print(json.dumps({"got": got, "acked": acked, "counts": counts}), flush=True)
"""


def test_three_processes_share_one_file(db: str, tmp_path: Path) -> None:
    transport = SQLiteTransport(db)
    transport.declare("q")
    published = tmp_path / "published"
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, db, str(published)], cwd=tmp_path,
                                 stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        tags = [f"m{i}" for i in range(600)]
        for start in range(0, 600, 100):
            _put(transport, "q", *tags[start:start + 100])
        published.touch()
        reports = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    got = [t for r in reports for t in r["got"]]
    assert sorted(got) == sorted(tags)  # each message delivered once, none lost
    assert all(ok for r in reports for ok in r["acked"]) and len(got) == 600
    assert {c for r in reports for c in r["counts"]} == {1}
    assert sum(1 for r in reports if r["got"]) >= 2  # they really competed
    assert transport.qsize("q") == 0
    transport.close()


def test_a_failed_flush_keeps_what_is_retried_and_answers_the_rest(db: str) -> None:
    transport = SQLiteTransport(db)
    _put(transport, "q", "a", "b")
    first, second = transport.fetch(["q"], 2, 0)
    replies: list[list[bool] | None] = []
    transport.ack_later([first])  # no callback: tried again at the next flush
    transport.ack_later([second], replies.append)

    def boom(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    transport.sqlite_wire().stage(boom)
    with pytest.raises(sqlite3.OperationalError):
        transport.flush()
    assert replies == [None]
    assert transport.qsize("q") == 2  # rolled back: nothing of it landed
    transport.flush()
    assert transport.qsize("q") == 1  # the retained ack went out
    transport.close()


def test_a_result_store_read_carries_what_the_thread_staged(db: str) -> None:
    from celeriac.backends.sqlite import SQLiteBackend

    transport = SQLiteTransport(db)
    backend = SQLiteBackend(url=f"sqlite:///{db}")
    assert transport.shares_connection_with(backend)
    _put(transport, "q", "a", "b")
    [held] = transport.fetch(["q"], 1, 0)
    replies: list[list[bool] | None] = []
    fetched: list[list[str]] = []
    transport.ack_later([held], replies.append)
    transport.fetch_later(["q"], 5, lambda got: fetched.append(
        [d.message.headers["id"] for d in got]))
    assert backend._mget(["nothing"]) == [None]  # the revoke check a worker makes at a start
    assert (replies, fetched) == ([[True]], [["b"]])
    assert transport.sqlite_wire().pending == 0
    backend.close()
    transport.close()


def test_a_lease_is_decoded_after_its_commit_and_reads_get_the_busy_handler_back(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import celeriac.transport.sqlite as sqlite_transport
    from celeriac.utils.sqlite import BUSY_TIMEOUT_MS

    transport = SQLiteTransport(db)
    _put(transport, "q", "a", "b")
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    free_while_decoding: list[bool] = []
    message = sqlite_transport._message

    def decode(*row: object) -> Message:
        other.execute("BEGIN IMMEDIATE")  # the pool processes' writes need not wait for it
        other.execute("COMMIT")
        free_while_decoding.append(True)
        return message(*row)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_transport, "_message", decode)
    got = transport.fetch(["q"], 2, 0)
    assert [d.message.body for d in got] == [b"a", b"b"] and free_while_decoding == [True, True]
    with transport._connection(durable=False) as conn:  # a read: SQLite's handler is back on
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    other.close()
    transport.close()
