"""The revoke log a worker follows (``RevokedSet.sync``), on the in-memory result store."""

from __future__ import annotations

import pytest

from celeriac.testing import dispose_test_app, make_test_app
from celeriac.worker import revokes
from celeriac.worker.revokes import LOG_KEY, SEQ_KEY, RevokedSet, record_revoke
from tests.waiting import wait_for


@pytest.fixture
def app():
    app = make_test_app("revokes")
    yield app
    dispose_test_app(app)


def test_sync_learns_revokes_and_terminate_requests_written_since_the_last(app) -> None:
    terminated: list[tuple[str, int]] = []
    revoked = RevokedSet(app.backend, on_terminate=lambda t, s: terminated.append((t, s)))
    record_revoke(app.backend, ["a"])
    record_revoke(app.backend, ["b"], terminate=True, signal="KILL")
    revoked.sync()
    assert "a" in revoked and "b" in revoked and terminated == [("b", 9)]
    revoked.sync()  # nothing new: nothing applied twice
    assert terminated == [("b", 9)]


def test_the_counter_outlives_result_expires_so_a_quiet_day_loses_no_terminate(app) -> None:
    """Had the counter expired with its entries, the next revoke would be entry 1 again: the
    number this worker last saw, so its sync would find nothing new and miss the terminate."""
    terminated: list[str] = []
    revoked = RevokedSet(app.backend, on_terminate=lambda t, s: terminated.append(t))
    app.backend.expires = 0.05  # result_expires, scaled from a day down
    record_revoke(app.backend, ["yesterday"])
    revoked.sync()
    wait_for(lambda: app.backend.get_value(f"{LOG_KEY}1") is None, 5)  # the entry expired
    record_revoke(app.backend, ["today"], terminate=True)
    revoked.sync()
    assert "today" in revoked and terminated == ["today"]


def test_a_first_sync_reads_only_the_newest_entries_of_a_long_log(app, monkeypatch) -> None:
    reads: list[str] = []
    real_get = app.backend.get_value
    app.backend.incr(SEQ_KEY, 1_000_000)  # years of revokes, their entries long expired
    record_revoke(app.backend, ["recent"])
    monkeypatch.setattr(app.backend, "get_value", lambda key: reads.append(key) or real_get(key))
    revoked = RevokedSet(app.backend)
    revoked.sync()
    assert "recent" in revoked
    assert len(reads) == 1 + revokes.FIRST_SYNC_ENTRIES  # the counter, then the entries


def test_sync_follows_a_counter_that_started_again(app) -> None:
    terminated: list[str] = []
    revoked = RevokedSet(app.backend, on_terminate=lambda t, s: terminated.append(t))
    for n in range(3):
        record_revoke(app.backend, [f"old-{n}"])
    revoked.sync()
    app.backend.delete_keys([SEQ_KEY])  # the store was wiped
    record_revoke(app.backend, ["new"], terminate=True)
    revoked.sync()
    assert "new" in revoked and terminated == ["new"]


def _sync_between_count_and_entry(monkeypatch, backend, revoked: RevokedSet) -> None:
    """``revoked`` syncs just after ``record_revoke`` counts its log entry and before it writes
    it (the two are separate writes to the store: a worker's sync can land in between)."""
    write = backend.set_value

    def sync_first(key: str, value, ttl=None) -> None:
        if key.startswith(LOG_KEY):
            revoked.sync()
        write(key, value, ttl)

    monkeypatch.setattr(backend, "set_value", sync_first)


def test_a_terminate_counted_before_its_entry_was_written_still_lands(app, monkeypatch) -> None:
    terminated: list[tuple[str, int]] = []
    revoked = RevokedSet(app.backend, on_terminate=lambda t, s: terminated.append((t, s)))
    revoked.sync()  # the worker's first sync, at its start
    _sync_between_count_and_entry(monkeypatch, app.backend, revoked)
    record_revoke(app.backend, ["running"], terminate=True)
    assert terminated == []  # that sync saw the counter, not the entry
    revoked.sync()
    assert terminated == [("running", 15)] and "running" in revoked
    revoked.sync()  # applied once
    assert terminated == [("running", 15)]


def test_an_entry_never_written_is_given_up_after_the_grace(app, monkeypatch) -> None:
    monkeypatch.setattr(revokes, "LATE_ENTRY_GRACE", 0.0)
    revoked = RevokedSet(app.backend)
    revoked.sync()
    app.backend.incr(SEQ_KEY)  # a writer that died between its two writes
    revoked.sync()
    assert list(revoked._late) == [1]  # looked for again at the next sync...
    revoked.sync()
    assert revoked._late == {}  # ...and not after its grace
