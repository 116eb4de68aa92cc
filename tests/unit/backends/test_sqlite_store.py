"""SQLite result-store specifics: how writes are grouped into transactions."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from celeriac.backends.base import ResultWrite
from celeriac.backends.sqlite import SQLiteBackend


def test_a_batch_of_results_is_one_transaction(tmp_path: Path) -> None:
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}")
    backend._set("warm-up", b"x", None)
    conn = backend._handle().conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    backend.write_results([ResultWrite(f"k{i}", f"v{i}".encode(), 60 if i else None, {})
                           for i in range(3)])
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    assert backend._mget(["k0", "k1", "k2"]) == [b"v0", b"v1", b"v2"]
    backend.close()


def test_a_header_result_and_its_chord_count_are_one_transaction(tmp_path: Path) -> None:
    """``write_and_part_return``: the result ``write_results`` would store (value and expiry)
    and the count and claim ``chord_part_return`` would make, in one commit."""
    from celeriac import states

    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}", expires=3600)
    backend.set_chord_size("g", 2)
    conn = backend._handle().conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    write = backend.result_write("a", 7, states.SUCCESS)
    part = backend.write_and_part_return(write, "g", "a", 0, b"[1, 'a']", claim_token="t1",
                                         claim_ttl=30)
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    assert backend._get(write.key) == write.value
    expires_at = conn.execute("SELECT expires_at FROM celeriac_result WHERE key = ?",
                              (write.key,)).fetchone()[0]
    last = backend.write_and_part_return(backend.result_write("b", 8, states.SUCCESS), "g", "b",
                                         1, b"[1, 'b']", claim_token="t2", claim_ttl=30)
    results = backend.chord_results("g")
    assert backend.chord_cleanup("g", "t2", 60)
    # a late copy after the chord fired: its result is stored all the same, nothing counted
    again = backend.write_and_part_return(backend.result_write("a", 9, states.SUCCESS), "g", "a",
                                          0, b"[1, 'a']", claim_token="t3", claim_ttl=30)
    stored_again = backend.get_task_meta("a")["result"]
    backend.close()
    assert time.time() + 3500 < expires_at <= time.time() + 3600  # result_expires
    assert (part.ready, part.expected, part.claimed) == (1, 2, False)
    assert (last.ready, last.expected, last.claimed) == (2, 2, True)
    assert results == [b"[1, 'a']", b"[1, 'b']"]
    assert (again.ready, again.claimed) == (-1, False) and stored_again == 9


def _expiries(conn: Any, *keys: str) -> list[float | None]:
    return [conn.execute("SELECT expires_at FROM celeriac_result WHERE key = ?",
                         (key,)).fetchone()[0] for key in keys]


def test_an_arrival_leaves_a_fresh_chords_keys_be(tmp_path: Path) -> None:
    """A chord's size and marker rows are pushed back by an arrival only when their expiry has
    fallen short of a full ``result_expires`` by more than the slack: the arrivals in between
    rewrite only the join (fewer pages per commit)."""
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}", expires=3600)
    backend.set_chord_size("g", 3)
    keys = [backend.chord_key("g", suffix) for suffix in (".s", ".j")]
    first = backend.chord_part_return("g", "a", 0, b"a", claim_token="t1", claim_ttl=30)
    conn = backend._handle().conn
    assert conn is not None
    after_first = _expiries(conn, *keys)
    time.sleep(0.05)
    second = backend.chord_part_return("g", "b", 1, b"b", claim_token="t2", claim_ttl=30)
    after_second = _expiries(conn, *keys)
    # now make them stale, as if the chord had waited ten minutes since
    conn.execute("UPDATE celeriac_result SET expires_at = expires_at - 600"
                 " WHERE key IN (?, ?)", keys)
    third = backend.chord_part_return("g", "c", 2, b"c", claim_token="t3", claim_ttl=30)
    after_third = _expiries(conn, *keys)
    backend.close()
    assert (first.ready, second.ready, third.ready) == (1, 2, 3)
    assert third.claimed and third.expected == 3
    assert after_second == after_first
    assert all(e is not None and time.time() + 3590 < e <= time.time() + 3600
               for e in after_third), after_third


def test_a_fresh_arrival_writes_to_the_join_alone(tmp_path: Path) -> None:
    """The count lives in the join beside the members (usually on the page the new member
    goes to): an arrival that finds the chord's keys fresh changes no row of the results
    table, so its commit writes no page of that table's b-tree."""
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}", expires=3600)
    backend.set_chord_size("g", 3)
    first = backend.chord_part_return("g", "a", 0, b"a", claim_token="t1", claim_ttl=30)
    conn = backend._handle().conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    second = backend.chord_part_return("g", "b", 1, b"b", claim_token="t2", claim_ttl=30)
    conn.set_trace_callback(None)
    third = backend.chord_part_return("g", "c", 2, b"c", claim_token="t3", claim_ttl=30)
    backend.close()
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE",
                                                                       "DELETE", "REPLACE"))]
    assert writes and all(" celeriac_result_chord " in f"{s} " for s in writes), writes
    assert [(p.ready, p.claimed) for p in (first, second, third)] == [
        (1, False), (2, False), (3, True)]


def test_an_expired_join_counts_from_nothing(tmp_path: Path) -> None:
    """A join whose keys expired (no arrival for ``result_expires``) starts over, as an
    expired Redis key does: its lingering rows count for nothing, not even the member that
    arrives again."""
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}", expires=3600)
    backend.set_chord_size("g", 2)
    first = backend.chord_part_return("g", "a", 0, b"a", claim_token="t1", claim_ttl=30)
    conn = backend._handle().conn
    assert conn is not None
    conn.execute("UPDATE celeriac_result SET expires_at = ? WHERE key IN (?, ?)",
                 (time.time() - 1, backend.chord_key("g", ".j"), backend.chord_key("g", ".n")))
    again = backend.chord_part_return("g", "a", 0, b"a2", claim_token="t2", claim_ttl=30)
    last = backend.chord_part_return("g", "b", 1, b"b", claim_token="t3", claim_ttl=30)
    results = backend.chord_results("g")
    backend.close()
    assert first.ready == 1
    assert (again.ready, again.claimed) == (1, False)
    assert (last.ready, last.claimed) == (2, True)
    assert results == [b"a2", b"b"]


def test_a_chord_counted_by_an_older_version_counts_on(tmp_path: Path) -> None:
    """A chord begun by a version that kept its count apart (a ".n" row in the results
    table): the next arrival counts its members once, and the chord completes."""
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}", expires=3600)
    backend.set_chord_size("g", 3)
    conn = backend._handle().conn
    assert conn is not None
    expires_at = time.time() + 3600
    for suffix, value in ((".j", b"1"), (".n", 2)):
        conn.execute("INSERT INTO celeriac_result (key, value, expires_at) VALUES (?, ?, ?)",
                     (backend.chord_key("g", suffix), value, expires_at))
    conn.executemany("INSERT INTO celeriac_result_chord (join_key, member, idx, value)"
                     " VALUES (?, ?, ?, ?)",
                     [(backend.chord_key("g", ".j"), f"{t}:{i}", float(i), t.encode())
                      for i, t in enumerate(("a", "b"))])
    copy = backend.chord_part_return("g", "b", 1, b"b", claim_token="t1", claim_ttl=30)
    last = backend.chord_part_return("g", "c", 2, b"c", claim_token="t2", claim_ttl=30)
    results = backend.chord_results("g")
    assert backend.chord_cleanup("g", "t2", 60)
    left = conn.execute("SELECT key FROM celeriac_result WHERE key LIKE '%.n'").fetchall()
    backend.close()
    assert (copy.ready, copy.claimed) == (2, False)
    assert (last.ready, last.expected, last.claimed) == (3, 3, True)
    assert results == [b"a", b"b", b"c"] and left == []


def test_new_files_read_a_join_back_in_header_order_unsorted(tmp_path: Path) -> None:
    """New files key a join's rows by header index: the body's read of a 10,000-member join
    walks them in order instead of sorting them first."""
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}")
    backend.set_chord_size("g", 3)
    for index, task in ((2, "c"), (0, "a"), (1, "b")):
        backend.chord_part_return("g", task, index, task.encode(), claim_token=task,
                                  claim_ttl=30)
    conn = backend._handle().conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    results = backend.chord_results("g")
    conn.set_trace_callback(None)
    query = next(s for s in statements if "celeriac_result_chord" in s)
    plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    backend.close()
    assert results == [b"a", b"b", b"c"]
    assert "TEMP B-TREE" not in plan.upper(), plan


def test_a_chord_without_result_expires_keeps_its_keys_forever(tmp_path: Path) -> None:
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}", expires=0)
    backend.set_chord_size("g", 2)
    parts = [backend.chord_part_return("g", t, i, t.encode(), claim_token=t, claim_ttl=30)
             for i, t in enumerate(("a", "b"))]
    conn = backend._handle().conn
    assert conn is not None
    expiries = _expiries(conn, *(backend.chord_key("g", s) for s in (".s", ".j")))
    backend.close()
    assert [(p.ready, p.claimed) for p in parts] == [(1, False), (2, True)]
    assert expiries == [None, None]


def test_new_files_keep_results_and_joins_in_their_key_b_tree(tmp_path: Path) -> None:
    """WITHOUT ROWID: a result or a chord member is written to one b-tree, not to a table and
    its key's index."""
    backend = SQLiteBackend(url=f"sqlite:///{tmp_path / 'results.db'}")
    backend.mark_as_done("t1", 1)
    conn = backend._handle().conn
    assert conn is not None
    schemas = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    backend.close()
    for table in ("celeriac_result", "celeriac_result_chord"):
        assert schemas[table].rstrip().upper().endswith("WITHOUT ROWID"), schemas[table]


def test_a_file_made_with_rowid_tables_is_served_the_same(tmp_path: Path) -> None:
    """Files made before keep their tables (with rowids): results, counters and chords work
    on them as on new ones."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE celeriac_result (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
                  " expires_at REAL)")
    conn.execute("CREATE TABLE celeriac_result_chord (join_key TEXT NOT NULL, member TEXT NOT"
                  " NULL, idx REAL NOT NULL, value BLOB NOT NULL,"
                  " PRIMARY KEY (join_key, member))")
    conn.commit()
    conn.close()
    backend = SQLiteBackend(url=f"sqlite:///{path}", expires=3600)
    backend.mark_as_done("t1", 1)
    backend.set_chord_size("g", 2)
    parts = [backend.chord_part_return("g", t, i, t.encode(), claim_token=t, claim_ttl=30)
             for i, t in enumerate(("b", "a"))]
    results = backend.chord_results("g")
    count = backend.incr("n", 5)
    schema = backend._handle().conn.execute(  # type: ignore[union-attr]
        "SELECT sql FROM sqlite_master WHERE name = 'celeriac_result'").fetchone()[0]
    backend.close()
    assert "WITHOUT ROWID" not in schema.upper()
    assert backend.get_task_meta("t1")["result"] == 1
    assert [(p.ready, p.claimed) for p in parts] == [(1, False), (2, True)]
    assert results == [b"b", b"a"] and count == 5


def test_reads_take_no_change_token_until_the_thread_waits(tmp_path: Path) -> None:
    """A read that is never followed by a wait (a pool process's revoke look-up) reads no
    change token; a thread's first wait makes it read again, with one, so a write between
    read and wait is still not missed."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    backend, writer = SQLiteBackend(url=url), SQLiteBackend(url=url)
    assert backend._mget(["a", "b"]) == [None, None]
    tokenless = backend._waiter is None
    result: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: result.append(backend.wait_for("t1", timeout=10)))
    waiting.start()
    time.sleep(0.2)
    writer.mark_as_done("t1", 5)
    started = time.monotonic()
    waiting.join(10)
    elapsed = time.monotonic() - started
    backend.close()
    writer.close()
    assert tokenless
    assert result and result[0]["result"] == 5
    assert elapsed < 1.0
