"""SQLite result-store specifics: how writes are grouped into transactions."""

from __future__ import annotations

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
