"""Batches (issue 14, item 4): a request revoked a moment before its batch starts never reaches
the task, on every broker (the ``broker`` fixture: SQLite, Redis, RabbitMQ with results in
SQLite) and default worker settings.

The revoke is written the way the store keeps it, without the log entry workers poll: only a
read of the store itself finds it, as for a revoke made after the worker's last poll. Brokers
without a shared connection check each fetched request there; the solo worker on Redis checks a
batch's requests in the round trip that starts the batch (worker/settlement.py), which once
checked the batch's own id instead and let such a request through.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from celeriac import states
from celeriac.exceptions import TaskRevokedError
from celeriac.testing import start_worker
from celeriac.worker.revokes import REVOKED_KEY
from tests.integration.conftest import Broker, settled

pytestmark = pytest.mark.integration

#: the longest any one wait here may take (a second or two when all is well)
TIMEOUT = 20.0


@pytest.fixture
def tasks(broker: Broker, task_module: Callable[..., ModuleType]) -> ModuleType:
    """tests/integration/batch_tasks.py on the test's broker."""
    return task_module("batch_tasks", broker.url, results=broker.results)


def test_request_revoked_in_the_store_before_its_batch_starts_never_reaches_the_task(
        tasks: ModuleType, broker: Broker, tmp_path: Path) -> None:
    ledger = tmp_path / "seen"

    def send(tag: str) -> Any:
        # ``seen``: flush_every=10, flush_interval=0.5, so these three make one batch
        return tasks.seen.apply_async(kwargs={"ledger": str(ledger), "tag": tag})

    kept = [send("kept-1"), send("kept-2")]
    victim = send("victim")
    tasks.app.backend.set_value(REVOKED_KEY + victim.id, {"terminate": False, "signal": 15})
    with start_worker(tasks.app, shutdown_timeout=20):  # solo pool, default prefetch
        assert [r.get(timeout=TIMEOUT) for r in kept] == [None, None]
        with pytest.raises(TaskRevokedError):
            victim.get(timeout=TIMEOUT)
    assert victim.state == states.REVOKED
    assert sorted(ledger.read_text().splitlines()) == ["kept-1", "kept-2"]
    settled(broker, tasks.app)
