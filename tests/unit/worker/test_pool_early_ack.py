"""Early acks sent by the pool's processes (prefork on a leasing broker): the consumer hands the
ack over with the job, and decides what happens when the ack is not confirmed.

The pool here is a thread pool that does what a prefork child does with ``ack_first``
(``processes._ack_before_start``, the real function), so the consumer's side runs in-process on
the in-memory broker; the prefork pool itself runs in the integration suites.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from celeriac import Celery
from celeriac.transport.memory import MemoryTransport
from celeriac.worker import worker as worker_module
from celeriac.worker.outcome import LEASE_LOST, Ending
from celeriac.worker.pools.processes import _ack_before_start
from celeriac.worker.pools.threads import ThreadPool


class AckingPool(ThreadPool):
    """A thread pool that, like a prefork child, sends the early ack itself before the task."""

    acks_before_start = True
    handed_acks: list[str] = []

    def submit(self, job_id, message, delivery_info, *, ack_first=None):
        if ack_first is not None:
            type(self).handed_acks.append(message.headers["id"])
            refused = _ack_before_start(self.runner, message, ack_first)
            if refused is not None:
                threading.Thread(target=self.on_done, args=(job_id, refused)).start()
                return True
        return super().submit(job_id, message, delivery_info)


def use_pool(monkeypatch, pool_class):
    """The worker's main pool (a thread pool, as asked) is ``pool_class``; the others as ever."""
    real_create = worker_module.create_pool

    def create(kind, runner, concurrency, on_done, **options):
        if kind == "threads" and not options:
            return pool_class(runner, concurrency, on_done)
        return real_create(kind, runner, concurrency, on_done, **options)

    monkeypatch.setattr(worker_module, "create_pool", create)


@pytest.fixture
def app(monkeypatch):
    AckingPool.handed_acks = []
    use_pool(monkeypatch, AckingPool)
    # separate names: no shared connection, so the plain (batched) settle policy is chosen
    app = Celery("poolacks", broker=f"memory://{uuid.uuid4().hex}",
                 backend=f"memory://{uuid.uuid4().hex}", set_as_current=False)
    ran: list[int] = []

    @app.task(name="poolacks.add")
    def add(x, y):
        ran.append(x + y)
        return x + y

    app.ran = ran  # type: ignore[attr-defined]
    yield app
    app.close()


def run_worker(app):
    worker = app.Worker(pool="threads", concurrency=1, hostname="poolacks@test")
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    return worker, thread


def test_the_pool_sends_the_early_ack_and_the_consumer_sends_none(app, monkeypatch):
    consumer_acks = []
    real_ack = MemoryTransport.ack

    def counting_ack(self, deliveries):
        consumer_acks.append(threading.current_thread().name)
        return real_ack(self, deliveries)

    monkeypatch.setattr(MemoryTransport, "ack", counting_ack)
    worker, thread = run_worker(app)
    try:
        result = app.tasks["poolacks.add"].delay(2, 3)
        assert result.get(timeout=10) == 5
        assert AckingPool.handed_acks == [result.id]
        assert len(consumer_acks) == 1  # the pool's, and no second one from the consumer
        assert app.transport.qsize("celery") == 0
    finally:
        worker.stop(warm=True)
        thread.join(10)


def test_an_ack_the_broker_refuses_means_the_task_does_not_run_here(app, monkeypatch):
    """The lease went to another holder: that holder runs it; this worker drops the job."""
    monkeypatch.setattr(MemoryTransport, "ack", lambda self, deliveries: [False] * len(deliveries))
    worker, thread = run_worker(app)
    try:
        app.tasks["poolacks.add"].delay(2, 3)
        deadline = threading.Event()
        for _ in range(100):
            if AckingPool.handed_acks and worker.consumer is not None \
                    and not worker.consumer.jobs():
                break
            deadline.wait(0.05)
        assert AckingPool.handed_acks
        assert worker.consumer.jobs() == []
        assert app.ran == []
    finally:
        worker.stop(warm=True)
        thread.join(10)


def test_an_unanswered_ack_is_settled_by_giving_the_message_back(app, monkeypatch):
    """No answer: the consumer gives the message back (which tells it the ack had not gone
    through) and it runs once, later, with an ack that is answered."""
    real_ack = MemoryTransport.ack
    failures = []

    def ack_failing_once(self, deliveries):
        if not failures:
            failures.append(1)
            raise ConnectionError("broker went away")
        return real_ack(self, deliveries)

    monkeypatch.setattr(MemoryTransport, "ack", ack_failing_once)
    worker, thread = run_worker(app)
    try:
        result = app.tasks["poolacks.add"].delay(2, 3)
        assert result.get(timeout=10) == 5
        assert failures and app.ran == [5]
        assert AckingPool.handed_acks == [result.id, result.id]  # handed over twice
    finally:
        worker.stop(warm=True)
        thread.join(10)


def test_the_child_side_reports_what_became_of_its_ack():
    class Runner:
        class app:  # noqa: N801 - stands in for the app a child has
            transport = None

    class Message:
        headers = {"id": "t-1"}

    class Refusing:
        def ack(self, deliveries):
            return [False]

    class Confirming:
        def ack(self, deliveries):
            return [True]

    class Failing:
        def ack(self, deliveries):
            raise ConnectionError("gone")

    Runner.app.transport = Confirming()
    assert _ack_before_start(Runner, Message, object()) is None
    Runner.app.transport = Refusing()
    refused = _ack_before_start(Runner, Message, object())
    assert refused.ending is Ending.NOT_STARTED and refused.reason == LEASE_LOST
    Runner.app.transport = Failing()
    failed = _ack_before_start(Runner, Message, object())
    assert failed.ending is Ending.NOT_STARTED and failed.reason != LEASE_LOST


def test_the_child_looks_up_revokes_after_its_ack_unless_the_store_shares_the_connection():
    """A result store of its own (not the broker's connection): the ack goes first and a store
    that cannot be read leaves the task to run on the parent's synced revokes, as the parent's
    own look did; sharing the connection, the look-up carries the ack, and its failure leaves
    the ack unconfirmed (NOT_STARTED: the parent finds out what became of it)."""
    from celeriac.worker.revokes import REVOKED_KEY

    class Message:
        headers = {"id": "t-1"}

    class Store:
        revoked = False
        down = False

        def _mget(self, keys):
            if self.down:
                raise ConnectionError("store gone")
            return [b"{}" if self.revoked and key == REVOKED_KEY + "t-1" else None
                    for key in keys]

    class Broker:
        def __init__(self):
            self.queued = []

        def ack(self, deliveries):
            return [True]

        def ack_later(self, deliveries, on_reply):
            self.queued.append(on_reply)

        def flush(self):
            for reply in self.queued:
                reply([True])
            self.queued = []

    class Runner:
        class app:  # noqa: N801 - stands in for the app a child has
            transport = Broker()
            backend = Store()

    store = Runner.app.backend
    assert _ack_before_start(Runner, Message, object(), True) is None
    store.revoked = True
    assert _ack_before_start(Runner, Message, object(), True).ending is Ending.REVOKED
    assert _ack_before_start(Runner, Message, object(), True,
                             shared=True).ending is Ending.REVOKED
    store.down = True
    assert _ack_before_start(Runner, Message, object(), True) is None  # runs: store unreadable
    failed = _ack_before_start(Runner, Message, object(), True, shared=True)
    assert failed.ending is Ending.NOT_STARTED and "store gone" in failed.reason


class DyingPool(AckingPool):
    """The first job's process "dies" (reports WORKER_LOST), before or after sending its ack."""

    ack_before_dying = False
    died: list[str] = []

    def submit(self, job_id, message, delivery_info, *, ack_first=None):
        from celeriac.worker.outcome import Outcome

        if ack_first is not None and not type(self).died:
            type(self).died.append(message.headers["id"])
            if type(self).ack_before_dying:
                assert _ack_before_start(self.runner, message, ack_first) is None
            lost = Outcome(message.headers["id"], "FAILURE", Ending.WORKER_LOST,
                           reason="killed in the test")
            threading.Thread(target=self.on_done, args=(job_id, lost)).start()
            return True
        return super().submit(job_id, message, delivery_info, ack_first=ack_first)


@pytest.mark.parametrize("acked", [False, True])
def test_a_process_that_died_before_its_ack_gives_the_task_back(app, monkeypatch, acked):
    """Before the ack: the task never started, so it goes back to the queue and runs (no
    failure stored). After it: it counts as lost while running (WorkerLostError)."""
    from celeriac.exceptions import WorkerLostError

    DyingPool.died, DyingPool.ack_before_dying = [], acked
    use_pool(monkeypatch, DyingPool)
    worker, thread = run_worker(app)
    try:
        result = app.tasks["poolacks.add"].delay(2, 3)
        if acked:
            with pytest.raises(WorkerLostError):
                result.get(timeout=10)
            assert app.ran == []
        else:
            assert result.get(timeout=10) == 5
            assert app.ran == [5]
        assert DyingPool.died == [result.id]
    finally:
        worker.stop(warm=True)
        thread.join(10)


class RevokeCheckingPool(AckingPool):
    """Like a prefork pool, it looks up each task's revoke with the early ack it sends."""

    check_revokes = False  # set by the consumer

    def submit(self, job_id, message, delivery_info, *, ack_first=None):
        if ack_first is not None:
            type(self).handed_acks.append(message.headers["id"])
            refused = _ack_before_start(self.runner, message, ack_first, self.check_revokes)
            if refused is not None:
                threading.Thread(target=self.on_done, args=(job_id, refused)).start()
                return True
        return super().submit(job_id, message, delivery_info)


def test_a_task_the_pool_finds_revoked_with_its_ack_never_runs(app, monkeypatch):
    """Revoked in the store a moment before it arrived (not yet synced): the consumer does not
    look it up as it arrives; the pool process does, with the early ack, and it never runs."""
    from celeriac.exceptions import TaskRevokedError
    from celeriac.worker.revokes import REVOKED_KEY, RevokedSet

    use_pool(monkeypatch, RevokeCheckingPool)
    looked_up: list[list[str]] = []
    real_check = RevokedSet.check_stored

    def counting_check(self, task_ids):
        looked_up.append(list(task_ids))
        return real_check(self, task_ids)

    monkeypatch.setattr(RevokedSet, "check_stored", counting_check)
    worker, thread = run_worker(app)
    try:
        kept = app.tasks["poolacks.add"].delay(1, 1)
        assert kept.get(timeout=10) == 2
        task_id = str(uuid.uuid4())
        app.backend.set_value(REVOKED_KEY + task_id, {"terminate": False, "signal": 15})
        revoked = app.tasks["poolacks.add"].apply_async((2, 3), task_id=task_id)
        with pytest.raises(TaskRevokedError):
            revoked.get(timeout=10)
        assert app.ran == [2]
        assert revoked.id in AckingPool.handed_acks
        assert looked_up == []  # every look-up rode with a pool process's ack
        assert revoked.id in worker.consumer.revokes
        assert app.transport.qsize("celery") == 0  # acked
        assert worker.consumer.jobs() == []
    finally:
        worker.stop(warm=True)
        thread.join(10)
