"""Settlement: which policy a worker picks, how the consumer settles each Ending with the broker
and the result store, and inline settling end to end on the memory broker."""

from __future__ import annotations

import pytest

from celeriac import Task, states
from celeriac.exceptions import (
    DecodeError,
    InvalidTaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.transport.memory import MemoryTransport
from celeriac.worker.batched_settlement import BatchedSoloSettlement
from celeriac.worker.outcome import Ending, Outcome
from celeriac.worker.settlement import (
    InlineSettlement,
    InlineSoloSettlement,
    Settlement,
    choose,
)
from tests.waiting import wait_for

from .support import (
    QUEUE,
    HoldingPool,
    dead_letters,
    fetch_one,
    publish,
    running_consumer,
    task_message,
)


# ---- choose -------------------------------------------------------------------------------------
@pytest.fixture
def app():
    app = make_test_app("settlement")
    yield app
    dispose_test_app(app)


def _choose(app, pool):
    return choose(app.transport, app.backend, in_process=pool in ("solo", "threads"),
                  in_dispatcher=pool == "solo")


def test_solo_on_a_memory_broker_and_store_of_one_name_settles_inline_in_the_dispatcher(app):
    assert _choose(app, "solo") is InlineSoloSettlement


def test_threads_on_a_shared_memory_name_settle_inline_from_the_pool_threads(app):
    assert _choose(app, "threads") is InlineSettlement


def test_prefork_always_uses_the_general_policy(app):
    assert _choose(app, "prefork") is Settlement


@pytest.mark.parametrize("pool, policy", [
    ("solo", BatchedSoloSettlement), ("threads", Settlement), ("prefork", Settlement)])
def test_a_store_on_another_memory_name_shares_no_connection(pool, policy):
    app = make_test_app("settlement-split", backend="memory://settlement-split-other-store")
    try:
        assert not app.transport.shares_connection_with(app.backend)
        assert _choose(app, pool) is policy
    finally:
        dispose_test_app(app)
        from celeriac.backends import memory as memory_backend

        memory_backend.reset("settlement-split-other-store")


def test_a_private_memory_broker_shares_no_connection(app):
    private = MemoryTransport()
    assert choose(private, app.backend, in_process=True, in_dispatcher=False) is Settlement
    assert choose(private, app.backend, in_process=True,
                  in_dispatcher=True) is BatchedSoloSettlement


# ---- the consumer's _settle, one Ending at a time -----------------------------------------------
def _make_app(**settings):
    app = make_test_app("settle", **settings)

    @app.task(name="settle.late", acks_late=True)
    def late():
        return "late"

    @app.task(name="settle.early", acks_late=False)
    def early():
        return "early"

    return app


@pytest.fixture
def settle_app():
    app = _make_app()
    yield app
    dispose_test_app(app)


@pytest.fixture
def rig(settle_app):
    """(app, consumer, pool): a started consumer with the general policy and a pool that holds
    every job until the test reports its outcome."""
    pool = HoldingPool()
    with running_consumer(settle_app, pool) as consumer:
        yield settle_app, consumer, pool


def _held_job(app, consumer, pool, name):
    """Publish a task, hand its delivery to ``receive``, and wait until the dispatch loop has
    given the job to the pool (after its early ack, if it has one)."""
    task_id = publish(app, task_message(name))
    consumer.receive([fetch_one(app)])
    job_id = pool.wait_for_job(task_id)
    [job] = [job for job in consumer.jobs() if job.id == job_id]
    return task_id, job


def _finish(consumer, pool, task_id, job, ending, state, **fields):
    pool.release(task_id)
    consumer.on_done(job.id, Outcome(task_id, state, ending, **fields))
    assert consumer.jobs() == []  # settled: the consumer holds nothing any more


def _acked(app):
    wait_for(lambda: app.transport.qsize(QUEUE) == 0, 5, message="the message was never acked")
    assert dead_letters(app) == []


def _requeued(app, task_id):
    assert app.transport.qsize(QUEUE) == 1
    again = fetch_one(app, timeout=0.0)  # fetchable again at once
    assert again.message.headers["id"] == task_id
    assert again.redelivered and again.delivery_count == 2
    assert dead_letters(app) == []


def _raises(app, task_id, exc_type):
    with pytest.raises(exc_type) as info:
        app.AsyncResult(task_id).get(timeout=1)
    return info.value


@pytest.mark.parametrize("ending, state", [
    (Ending.SUCCEEDED, states.SUCCESS), (Ending.FAILED, states.FAILURE),
    (Ending.RETRIED, states.RETRY), (Ending.IGNORED, states.IGNORED),
])
def test_an_ending_recorded_by_the_task_is_acked(rig, ending, state):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    assert job.late and job.holds_lease
    assert app.transport.qsize(QUEUE) == 1
    _finish(consumer, pool, task_id, job, ending, state)
    _acked(app)
    assert app.AsyncResult(task_id).state == states.PENDING  # on_done stores nothing itself
    assert consumer.processed == 1


def test_an_early_acked_success_was_acked_before_it_ran(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.early")
    assert job.acked and not job.holds_lease
    assert app.transport.qsize(QUEUE) == 0  # the early ack was confirmed before the pool got it
    _finish(consumer, pool, task_id, job, Ending.SUCCEEDED, states.SUCCESS)
    _acked(app)


def test_rejected_requeue_gives_the_message_back(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, Ending.REJECTED_REQUEUE, states.REJECTED)
    _requeued(app, task_id)


def test_rejected_drop_dead_letters_the_message(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, Ending.REJECTED_DROP, states.REJECTED)
    [dead] = dead_letters(app)
    assert dead.reason == "rejected by the task (Reject, requeue=False)"
    assert dead.message.headers["id"] == task_id
    assert app.transport.qsize(QUEUE) == 0


@pytest.mark.parametrize("ending", [Ending.REJECTED_REQUEUE, Ending.REJECTED_DROP,
                                    Ending.INTERNAL_ERROR])
def test_after_an_early_ack_there_is_nothing_to_give_back(rig, ending):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.early")
    _finish(consumer, pool, task_id, job, ending, states.FAILURE)
    assert app.transport.qsize(QUEUE) == 0
    assert dead_letters(app) == []


def test_worker_lost_stores_worker_lost_error_and_acks(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, Ending.WORKER_LOST, states.FAILURE,
            reason="child killed by signal 9")
    exc = _raises(app, task_id, WorkerLostError)
    assert "child killed by signal 9" in str(exc)
    _acked(app)


def test_worker_lost_after_an_early_ack_stores_the_failure(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.early")
    _finish(consumer, pool, task_id, job, Ending.WORKER_LOST, states.FAILURE)
    _raises(app, task_id, WorkerLostError)
    _acked(app)


class TestRejectOnWorkerLost:
    @pytest.fixture
    def rig(self):
        app = _make_app(task_reject_on_worker_lost=True)
        pool = HoldingPool()
        try:
            with running_consumer(app, pool) as consumer:
                yield app, consumer, pool
        finally:
            dispose_test_app(app)

    def test_a_late_job_is_requeued_and_nothing_is_stored(self, rig):
        app, consumer, pool = rig
        task_id, job = _held_job(app, consumer, pool, "settle.late")
        _finish(consumer, pool, task_id, job, Ending.WORKER_LOST, states.FAILURE)
        _requeued(app, task_id)
        assert app.AsyncResult(task_id).state == states.PENDING

    def test_an_early_acked_job_cannot_be_requeued_so_its_failure_is_stored(self, rig):
        app, consumer, pool = rig
        task_id, job = _held_job(app, consumer, pool, "settle.early")
        _finish(consumer, pool, task_id, job, Ending.WORKER_LOST, states.FAILURE)
        _raises(app, task_id, WorkerLostError)
        _acked(app)


def test_time_limit_stores_time_limit_exceeded_and_acks(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, Ending.TIME_LIMIT, states.FAILURE, limit=2.5)
    exc = _raises(app, task_id, TimeLimitExceeded)
    assert "2.5" in str(exc)
    _acked(app)


def test_terminated_stores_revoked_and_acks(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, Ending.TERMINATED, states.REVOKED, signum=15)
    assert app.AsyncResult(task_id).state == states.REVOKED
    _raises(app, task_id, TaskRevokedError)
    _acked(app)


@pytest.mark.parametrize("ending", [Ending.INTERNAL_ERROR, Ending.ABANDONED])
def test_an_unrecorded_ending_requeues_a_job_that_holds_its_lease(rig, ending):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, ending, states.FAILURE)
    _requeued(app, task_id)
    assert app.AsyncResult(task_id).state == states.PENDING


@pytest.mark.parametrize("name", ["settle.late", "settle.early"])
def test_undecodable_is_dead_lettered_even_after_an_early_ack(rig, name):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, name)
    _finish(consumer, pool, task_id, job, Ending.UNDECODABLE, states.REJECTED,
            reason="DecodeError: bad body")
    [dead] = dead_letters(app)
    assert dead.reason == "DecodeError: bad body" and dead.message.headers["id"] == task_id
    assert app.transport.qsize(QUEUE) == 0
    # an outcome without a failure of its own: its caller reads a DecodeError with the reason
    exc = _raises(app, task_id, DecodeError)
    assert str(exc).startswith(f"task {name}[{task_id}]: the message cannot be decoded "
                               f"(DecodeError: bad body)")
    # the same bytes would not decode on replay: the sender must send it again
    assert str(exc).endswith(f"the original is kept in the dead-letter store ({dead.id}) for "
                             f"inspection: `celeriac -A {app.main} dlq show {dead.id}`.")
    assert "dlq replay" not in str(exc)


def test_undecodable_stores_the_failure_the_pool_made(rig):
    app, consumer, pool = rig
    task_id, job = _held_job(app, consumer, pool, "settle.late")
    _finish(consumer, pool, task_id, job, Ending.UNDECODABLE, states.REJECTED,
            reason="InvalidTaskError: wrong shape",
            failure=InvalidTaskError("task settle.late: wrong shape; fix the client."))
    [dead] = dead_letters(app)
    exc = _raises(app, task_id, InvalidTaskError)
    assert str(exc) == ("task settle.late: wrong shape; fix the client. The sender must send "
                        "it again; the original is kept in the dead-letter store "
                        f"({dead.id}) for inspection: `celeriac -A {app.main} dlq show "
                        f"{dead.id}`.")


def test_undecodable_with_ignore_result_stores_nothing(rig):
    app, consumer, pool = rig
    task_id = publish(app, task_message("settle.late", ignore_result=True))
    consumer.receive([fetch_one(app)])
    job_id = pool.wait_for_job(task_id)
    [job] = [job for job in consumer.jobs() if job.id == job_id]
    _finish(consumer, pool, task_id, job, Ending.UNDECODABLE, states.REJECTED,
            reason="DecodeError: bad body")
    assert [d.message.headers["id"] for d in dead_letters(app)] == [task_id]
    assert app.AsyncResult(task_id).state == states.PENDING


def test_an_outcome_for_an_unknown_job_is_ignored(rig):
    app, consumer, pool = rig
    consumer.on_done(987654, Outcome("nobody", states.SUCCESS))
    assert consumer.jobs() == [] and app.transport.qsize(QUEUE) == 0


# ---- inline settling, end to end ----------------------------------------------------------------
@pytest.mark.parametrize("pool, acks_late, policy", [
    ("solo", False, InlineSoloSettlement),
    ("solo", True, InlineSoloSettlement),
    ("threads", False, InlineSettlement),
])
def test_an_inline_worker_stores_every_result_and_leaves_the_queue_empty(pool, acks_late, policy):
    """Staged writes ride with the next task's round trip; the last one has none, so only the
    idle flush can store it (and, with acks_late, send its ack). Everything is checked while the
    worker still runs: its shutdown flush proves nothing."""
    app = make_test_app("inline", task_acks_late=acks_late)

    @app.task(name="inline.square")
    def square(x):
        return x * x

    try:
        with start_worker(app, pool=pool, concurrency=4, perform_ping_check=False) as worker:
            assert type(worker.consumer.settlement) is policy
            results = [square.delay(i) for i in range(20)]
            assert [r.get(timeout=10) for r in results] == [i * i for i in range(20)]
            assert all(r.state == states.SUCCESS for r in results)
            wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10,
                     message="messages left in the queue after every result was stored")
            # One task at a time: each result waits for the idle flush alone.
            for i in range(3):
                assert square.delay(100 + i).get(timeout=10) == (100 + i) ** 2
                wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10,
                         message="the last message was never acked")
            assert worker.consumer.jobs() == []
            assert dead_letters(app) == []
    finally:
        dispose_test_app(app)


class _BrokenOnSuccess(Task):
    def on_success(self, retval, task_id, args, kwargs):
        raise RuntimeError("on_success broke")


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_result_recorded_before_an_internal_error_still_goes_out(pool):
    """The result write was collected before the bookkeeping failed (INTERNAL_ERROR after an
    early ack): the consumer must still send it, although no ack follows to carry it."""
    app = make_test_app("inline-internal")

    @app.task(name="inline.broken", base=_BrokenOnSuccess)
    def broken(x):
        return x * 2

    try:
        with start_worker(app, pool=pool, perform_ping_check=False):
            result = broken.delay(21)
            assert result.get(timeout=10) == 42
            wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10,
                     message="the early-acked message came back")
    finally:
        dispose_test_app(app)


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_staged_result_whose_flush_failed_is_sent_again(pool, monkeypatch):
    """The store is unreachable once when the result goes out: it is sent again (solo: by the
    idle dispatch loop; threads: by the pool thread that staged it, on its own connection)."""
    from celeriac.backends.memory import MemoryBackend

    real = MemoryBackend.write_results
    failures = []

    def unreachable_once(self, writes):
        if not failures:
            failures.append(list(writes))
            raise ConnectionError("result store unreachable")
        return real(self, writes)

    monkeypatch.setattr(MemoryBackend, "write_results", unreachable_once)
    retry_app = make_test_app("inline-retry")

    @retry_app.task(name="inline.double")
    def double(x):
        return x * 2

    try:
        with start_worker(retry_app, pool=pool, concurrency=1, perform_ping_check=False):
            assert double.delay(21).get(timeout=10) == 42
            assert failures
    finally:
        dispose_test_app(retry_app)


@pytest.mark.parametrize("pool, policy", [
    ("solo", InlineSoloSettlement),
    ("threads", InlineSettlement),
])
def test_an_inline_worker_stages_a_batchs_results_ahead_of_its_acks(pool, policy, monkeypatch):
    """A batch's results come back from its pool side unsent; the policy stages them with the
    batch's acks after them, all or nothing (one transaction on Redis; here the memory wire,
    where an action that fails holds back those after it). The store is unreachable the first
    time: not one of the batch's messages is acked before its results are stored."""
    from celeriac.backends.memory import MemoryBackend
    from celeriac.batches import Batches

    app = make_test_app("inline-batch")
    real = MemoryBackend.write_results
    queued_at_failure: list[int] = []

    def unreachable_once(self, writes):
        if not queued_at_failure:
            queued_at_failure.append(app.transport.qsize(QUEUE))
            raise ConnectionError("result store unreachable")
        return real(self, writes)

    monkeypatch.setattr(MemoryBackend, "write_results", unreachable_once)

    @app.task(name="inline.doubles", base=Batches, flush_every=4, flush_interval=0.2)
    def doubles(requests):
        for request in requests:
            doubles.mark_as_done(request, request.args[0] * 2)

    try:
        with start_worker(app, pool=pool, concurrency=1, perform_ping_check=False) as worker:
            assert type(worker.consumer.settlement) is policy
            results = [doubles.delay(n) for n in range(4)]
            assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6]
            assert queued_at_failure == [4]  # held, none acked, while the results were not in
            wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10,
                     message="the batch's messages were never acked")
            assert worker.consumer.jobs() == []
    finally:
        dispose_test_app(app)
