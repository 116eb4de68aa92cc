"""The cross-process change waiter: how often a quiet wait polls."""

from __future__ import annotations

from pathlib import Path

from celeriac.utils.sqlite import ChangeWaiter


def test_a_wait_that_is_not_hot_polls_at_the_slow_rate_from_the_start(tmp_path: Path) -> None:
    waiter = ChangeWaiter(str(tmp_path / "x.db"), max_interval=0.2)
    token = waiter.token()
    reads = 0
    read = waiter._read

    def counted() -> int:
        nonlocal reads
        reads += 1
        return read()

    waiter._read = counted  # type: ignore[method-assign]
    assert waiter.wait(0.05, token, hot=False) is False
    assert reads == 2  # once before the one pause (capped by the timeout), once after it
    waiter.close()


def test_a_commit_from_another_connection_ends_a_hot_wait(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "x.db")
    waiter = ChangeWaiter(path)
    token = waiter.token()
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    assert waiter.wait(5.0, token) is True
    waiter.close()
