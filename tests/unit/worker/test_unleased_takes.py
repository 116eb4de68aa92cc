"""A prefork worker on Redis takes the messages its idle pool processes will start at once
without a lease (acked as they are taken, their revokes looked up in the same step): the
process starts the task without an early ack's round trip of its own.

The pool here is a thread pool that does what a prefork child does with ``ack_first`` (as in
test_pool_early_ack.py), under the policy prefork gets (``Settlement``), on a real Redis server
where the broker and the result store share a database.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from celeriac import Celery
from celeriac.exceptions import TaskRevokedError
from celeriac.worker import worker as worker_module
from celeriac.worker.revokes import REVOKED_KEY
from celeriac.worker.settlement import Settlement
from tests.unit.worker.test_pool_early_ack import RevokeCheckingPool, use_pool
from tests.waiting import wait_for

DB = 10


class IdleAwarePool(RevokeCheckingPool):
    """Prefork's surface: early acks sent by the pool, jobs sent ahead (never, here)."""

    def ahead_slots(self) -> int:
        return 0


@pytest.fixture
def app(monkeypatch, redis_server, redis_prefix):
    IdleAwarePool.handed_acks = []
    use_pool(monkeypatch, IdleAwarePool)
    monkeypatch.setattr(worker_module, "choose_settlement", lambda *a, **k: Settlement)
    url = f"{redis_server}/{DB}"
    app = Celery("unleased", broker=url, backend=f"{url}?global_keyprefix={redis_prefix}",
                 set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": redis_prefix}
    ran: list[int] = []

    @app.task(name="unleased.add")
    def add(x, y):
        ran.append(x + y)
        return x + y

    @app.task(name="unleased.late", acks_late=True)
    def late():
        ran.append(0)

    app.ran = ran  # type: ignore[attr-defined]
    yield app
    app.close()
    raw = redis.Redis.from_url(url)
    keys = list(raw.scan_iter(match=f"{redis_prefix}*", count=1000))
    if keys:
        raw.delete(*keys)
    raw.close()


def run_worker(app):
    """Two processes, for tasks sent one at a time: whichever ran the last task, the other is
    idle when the next one comes (the last one's may not have reported its end yet)."""
    worker = app.Worker(pool="threads", concurrency=2, hostname="unleased@test")
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    return worker, thread


def test_a_task_for_an_idle_process_starts_without_an_ack_of_its_own(app):
    worker, thread = run_worker(app)
    try:
        results = [app.tasks["unleased.add"].delay(n, 1).get(timeout=10) for n in range(3)]
        assert results == [1, 2, 3]
        assert IdleAwarePool.handed_acks == []  # each one acked as it was taken
        late = app.tasks["unleased.late"].delay()
        late.get(timeout=10)
        assert IdleAwarePool.handed_acks == []  # acks_late: leased, acked after it ran
        assert app.ran == [1, 2, 3, 0]
        # the late one's ack goes out after its result
        wait_for(lambda: app.transport.qsize("celery") == 0, 10, message="acks_late ack")
        assert worker.consumer.jobs() == []
    finally:
        worker.stop(warm=True)
        thread.join(10)


def test_a_task_revoked_a_moment_before_it_is_taken_never_runs(app):
    """Revoked in the store but not yet synced: the take that would have skipped the pool
    process's look-up leases it instead, and the process finds the revoke with its ack."""
    worker, thread = run_worker(app)
    try:
        assert app.tasks["unleased.add"].delay(1, 1).get(timeout=10) == 2
        task_id = str(uuid.uuid4())
        app.backend.set_value(REVOKED_KEY + task_id, {"terminate": False, "signal": 15})
        revoked = app.tasks["unleased.add"].apply_async((2, 3), task_id=task_id)
        with pytest.raises(TaskRevokedError):
            revoked.get(timeout=10)
        assert app.ran == [2]
        assert IdleAwarePool.handed_acks == [task_id]
        assert app.transport.qsize("celery") == 0
    finally:
        worker.stop(warm=True)
        thread.join(10)
