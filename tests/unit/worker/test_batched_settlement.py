"""BatchedSoloSettlement: the solo pool on a broker that shares no connection with the result
store (RabbitMQ's case, here a memory broker and a memory store of another name): results kept
and sent in batches, one revoke check for the jobs waiting in the buffer."""

from __future__ import annotations

import time

import pytest

from celeriac import states
from celeriac.backends.memory import MemoryBackend
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker.batched_settlement import BatchedSoloSettlement
from celeriac.worker.outcome import Ending, Outcome
from celeriac.worker.pending import PendingWrites
from celeriac.worker.revokes import REVOKED_KEY
from tests.waiting import wait_for

from .support import (
    QUEUE,
    HoldingPool,
    dead_letters,
    fetch_one,
    make_consumer,
    publish,
    running_consumer,
    task_message,
)


@pytest.fixture
def split_app():
    """An app whose broker and result store share no connection."""
    app = make_test_app("batched", backend="memory://batched-settlement-store")
    yield app
    dispose_test_app(app)
    from celeriac.backends import memory as memory_backend

    memory_backend.reset("batched-settlement-store")


@pytest.mark.parametrize("acks_late", [False, True])
def test_a_solo_worker_stores_every_result_and_leaves_the_queue_empty(split_app, acks_late):
    """Kept results go out in batches while tasks run and at the idle flush; the last one of a
    burst, and a lone task's, only at the idle flush. Checked while the worker still runs."""
    app = split_app
    app.conf.task_acks_late = acks_late

    @app.task(name="batched.square")
    def square(x):
        return x * x

    with start_worker(app, pool="solo", perform_ping_check=False) as worker:
        assert type(worker.consumer.settlement) is BatchedSoloSettlement
        results = [square.delay(i) for i in range(20)]
        assert [r.get(timeout=10) for r in results] == [i * i for i in range(20)]
        wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10,
                 message="messages left in the queue after every result was stored")
        for i in range(3):
            assert square.delay(100 + i).get(timeout=10) == (100 + i) ** 2
        wait_for(lambda: app.transport.qsize(QUEUE) == 0, 10,
                 message="the last message was never acked")
        assert worker.consumer.jobs() == []
        assert dead_letters(app) == []


def test_a_long_task_does_not_hold_back_the_result_of_the_task_before_it(split_app):
    """``second`` starts right after ``first`` ends (both waited in the buffer), so the dispatch
    thread, busy running it, never goes idle: only the flusher thread can store ``first``'s
    result while ``second`` waits for it."""
    app = split_app

    @app.task(name="batched.first")
    def first():
        return "first"

    @app.task(name="batched.second")
    def second(first_id):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if app.AsyncResult(first_id).state == states.SUCCESS:
                return True
            time.sleep(0.01)
        return False

    earlier = first.delay()
    later = second.delay(earlier.id)
    with start_worker(app, pool="solo", perform_ping_check=False):
        assert later.get(timeout=20) is True
        assert earlier.get(timeout=1) == "first"


def test_kept_results_go_out_in_one_call_to_the_store(split_app, monkeypatch):
    consumer = make_consumer(split_app, settlement=BatchedSoloSettlement)  # not started
    settlement = consumer.settlement
    backend = split_app.backend
    calls = []
    real = MemoryBackend.write_results

    def recording(self, writes):
        calls.append([w.key for w in writes])
        return real(self, writes)

    monkeypatch.setattr(MemoryBackend, "write_results", recording)
    writes = [backend.result_write(f"kept-{i}", i, states.SUCCESS) for i in range(3)]
    for write in writes:
        settlement.put(PendingWrites(results=[write]))
    assert settlement.wants_flush()
    settlement.flush()
    assert calls == [[w.key for w in writes]]
    assert [split_app.AsyncResult(f"kept-{i}").get(timeout=1) for i in range(3)] == [0, 1, 2]
    assert not settlement.wants_flush()


def test_a_failed_flush_is_tried_again(split_app, monkeypatch):
    real = MemoryBackend.write_results
    failures = []

    def unreachable_once(self, writes):
        if not failures:
            failures.append(list(writes))
            raise ConnectionError("result store unreachable")
        return real(self, writes)

    monkeypatch.setattr(MemoryBackend, "write_results", unreachable_once)

    @split_app.task(name="batched.double")
    def double(x):
        return x * 2

    with start_worker(split_app, pool="solo", perform_ping_check=False):
        assert double.delay(21).get(timeout=10) == 42
        assert failures


def test_one_revoke_check_covers_the_waiting_jobs_and_stops_one_revoked_after_its_fetch(
        split_app):
    """The first start after a fetch reads the revokes of every waiting job in one round trip
    (the others start with none); a revoke stored after the fetch, before that start, stops its
    task (stored without the log entry the worker's sync reads, so only the check can find it)."""
    app = split_app

    @app.task(name="unit.noop")
    def noop():
        return None

    pool = HoldingPool(limit=1)
    with running_consumer(app, pool, settlement=BatchedSoloSettlement) as consumer:
        first = publish(app, task_message("unit.noop"))
        consumer.receive([fetch_one(app)])
        first_job = pool.wait_for_job(first)
        ids = [publish(app, task_message("unit.noop")) for _ in range(3)]
        consumer.receive([fetch_one(app) for _ in ids])  # they wait: the pool is full
        app.backend.set_value(REVOKED_KEY + ids[2], {"terminate": False, "signal": 15})
        checks = record_checks(consumer)
        for task_id, job_id in [(first, first_job), (ids[0], None), (ids[1], None)]:
            job_id = job_id or pool.wait_for_job(task_id)
            pool.release(task_id)
            consumer.on_done(job_id, Outcome(task_id, states.SUCCESS, Ending.SUCCEEDED))
        wait_for(lambda: app.AsyncResult(ids[2]).state == states.REVOKED, 5,
                 message="the task revoked after its fetch was not dropped")
        assert [sorted(checked) for checked, _ in checks] == [sorted(ids)]
        assert ids[2] not in pool.submitted
        wait_for(lambda: consumer.jobs() == [], 5, message="a job was left held")


def record_checks(consumer) -> list[tuple[list[str], list[str]]]:
    """Each stored-revoke check the consumer makes from now on: (task ids, keys written with
    it), the check itself still made."""
    calls: list[tuple[list[str], list[str]]] = []
    real = consumer.revokes.check_stored

    def recording(task_ids, writes=()):
        calls.append((list(task_ids), [w.key for w in writes]))
        return real(task_ids, writes)

    consumer.revokes.check_stored = recording
    return calls


def _waiting_job(app, **consumer_options):
    """A solo consumer that is not started (no fetch thread), and a ``unit.noop`` job admitted
    to it: it waits in the buffer."""

    @app.task(name="unit.noop")
    def noop():
        return None

    consumer = make_consumer(app, settlement=BatchedSoloSettlement, **consumer_options)
    task_id = publish(app, task_message("unit.noop"))
    consumer.receive([fetch_one(app)])
    [job] = [job for job in consumer.waiting_jobs() if job.task_id == task_id]
    return consumer, job


def test_kept_results_ride_with_the_revoke_check_of_the_next_start(split_app, monkeypatch):
    """The start that reads the revokes sends the results kept so far in that same call to the
    store (one round trip where it can, as Redis: the memory store says so here): nothing is
    left for the flusher or the idle flush."""
    app = split_app
    monkeypatch.setattr(MemoryBackend, "writes_ride_with_reads", True)
    consumer, job = _waiting_job(app)
    settlement = consumer.settlement
    kept = [app.backend.result_write(f"kept-{i}", i, states.SUCCESS) for i in range(2)]
    settlement.put(PendingWrites(results=kept[:1]))
    settlement.put(PendingWrites(results=kept[1:]))
    calls = record_checks(consumer)
    assert settlement.before_run(job)
    assert calls == [([job.task_id, job.task_id], [w.key for w in kept])]
    assert not settlement.wants_flush()
    assert [app.AsyncResult(f"kept-{i}").get(timeout=1) for i in range(2)] == [0, 1]


def test_results_whose_ride_fails_are_kept_again_and_the_check_is_made_alone(split_app,
                                                                            monkeypatch):
    app = split_app
    monkeypatch.setattr(MemoryBackend, "writes_ride_with_reads", True)
    consumer, job = _waiting_job(app)
    settlement = consumer.settlement
    app.backend.set_value(REVOKED_KEY + job.task_id, {"terminate": False, "signal": 15})
    settlement.put(PendingWrites(results=[app.backend.result_write("kept", 7, states.SUCCESS)]))

    def unreachable(self, writes, keys):
        raise ConnectionError("result store unreachable")

    monkeypatch.setattr(MemoryBackend, "write_results_then_mget", unreachable)
    assert not settlement.before_run(job)  # found revoked by the check made on its own
    assert app.AsyncResult(job.task_id).state == states.REVOKED
    assert settlement.wants_flush()
    settlement.flush()
    assert app.AsyncResult("kept").get(timeout=1) == 7


def test_on_a_pushing_broker_a_start_takes_what_arrived_before_its_revoke_check(split_app):
    """``refills_at_start`` (a broker that pushes deliveries ahead, RabbitMQ; forced here on the
    memory broker, whose fetch that may not wait takes what is queued): a start with half the
    window free fetches without waiting, from the dispatch thread, before its revoke check,
    which covers the jobs it took; the fetch thread is not needed."""
    app = split_app
    consumer, job = _waiting_job(app, pool=HoldingPool(limit=1), prefetch_multiplier=4)
    settlement = consumer.settlement
    assert not settlement.refills_at_start  # the memory broker holds nothing ahead
    settlement.refills_at_start = True
    with consumer._cond:  # as the dispatch thread takes it to start it
        consumer._buffer.remove(job)
        consumer._running += 1
    ids = [publish(app, task_message("unit.noop")) for _ in range(4)]
    checks = record_checks(consumer)
    app.backend.set_value(REVOKED_KEY + ids[1], {"terminate": False, "signal": 15})
    assert settlement.before_run(job)
    # the window holds 4: the running job and the 3 it took, the fourth stays in the queue
    assert [j.task_id for j in consumer.waiting_jobs()] == ids[:3]
    assert [sorted(checked) for checked, _ in checks] == [sorted([job.task_id, *ids[:3]])]
    assert consumer.revokes is not None and ids[1] in consumer.revokes
    assert not consumer._fetching
    assert fetch_one(app).message.headers["id"] == ids[3]


@pytest.mark.parametrize("rides", [False, True])
def test_kept_results_stay_for_the_flusher_with_chord_counts_or_a_store_of_two_calls(
        split_app, monkeypatch, rides):
    """A count may fire its chord's body, which reads every header result: counts go out after
    their results, from the flusher or the idle flush, not with a check. A store that would
    take two calls for writes and read (``writes_ride_with_reads`` False: SQLite, memory)
    carries nothing either: the flusher sends them without holding up the task."""
    app = split_app
    monkeypatch.setattr(MemoryBackend, "writes_ride_with_reads", rides)
    consumer, job = _waiting_job(app)
    settlement = consumer.settlement
    counts = [object()] if rides else []  # never sent here: only whether there are any matters
    settlement.put(PendingWrites(results=[app.backend.result_write("kept", 7, states.SUCCESS)],
                                 chord_counts=counts))  # type: ignore[arg-type]
    assert settlement.before_run(job)
    assert settlement.wants_flush()
    assert app.AsyncResult("kept").state == states.PENDING


def test_a_chord_whose_counts_are_kept_with_its_header_results_runs_its_body(split_app):
    """Each header task's chord count is kept with its result and sent after it: the body runs
    with every header result."""
    from celeriac import chord

    app = split_app

    @app.task(name="batched.part")
    def part(x):
        return x + 1

    @app.task(name="batched.total")
    def total(values):
        return sorted(values)

    with start_worker(app, pool="solo", perform_ping_check=False) as worker:
        assert type(worker.consumer.settlement) is BatchedSoloSettlement
        result = chord(part.s(i) for i in range(5))(total.s())
        assert result.get(timeout=10) == [1, 2, 3, 4, 5]
