"""SQLite result-store specifics: how writes are grouped into transactions."""

from __future__ import annotations

import time
from pathlib import Path

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
