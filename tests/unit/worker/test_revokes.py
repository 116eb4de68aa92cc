"""The revoke log a worker follows (``RevokedSet.sync``), on the in-memory result store."""

from __future__ import annotations

import pytest

from celeriac.testing import dispose_test_app, make_test_app
from celeriac.worker.revokes import SEQ_KEY, RevokedSet, record_revoke


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


def test_sync_follows_a_counter_that_expired_and_started_again(app) -> None:
    terminated: list[str] = []
    revoked = RevokedSet(app.backend, on_terminate=lambda t, s: terminated.append(t))
    for n in range(3):
        record_revoke(app.backend, [f"old-{n}"])
    revoked.sync()
    app.backend.delete_keys([SEQ_KEY])  # what result_expires does after a day without revokes
    record_revoke(app.backend, ["new"], terminate=True)
    revoked.sync()
    assert "new" in revoked and terminated == ["new"]
