"""Batches, the pure parts: what a batch task sees of each request (``SimpleRequest``), the
``Batches`` base class and its marks, and the worker's buffers (``BatchBuffers``) with their
flush rules and bookkeeping, plus the consumer's bound on fetching. End to end on real brokers:
tests/integration/test_batches.py.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from celeriac import Celery
from celeriac.batches import Batches, SimpleRequest, current_marks
from celeriac.protocol import v2
from celeriac.task import Task
from celeriac.worker import batching
from celeriac.worker.batching import BatchBuffers, BatchJob, BatchMessages, batch_message
from celeriac.worker.executor import context_from_body
from celeriac.worker.job import Job
from tests.unit.worker.support import delivery, make_consumer, task_message


@pytest.fixture
def app() -> Iterator[Celery]:
    url = f"memory://{uuid.uuid4().hex}"
    app = Celery("batches", broker=url, backend=url, set_as_current=False)
    yield app
    app.close()


# ---- SimpleRequest ------------------------------------------------------------------------------
def _context(**options: Any) -> Any:
    """A running request's context, decoded from a real protocol 2 message."""
    message = v2.encode_task(name="tasks.count_click", task_id=options.pop("task_id", "id-1"),
                             **options)
    body = v2.decode_task(message, frozenset({"application/json"}))
    return context_from_body(body, hostname="w1@host",
                             delivery_info={"exchange": "", "routing_key": "celery"},
                             properties=message.properties)


def test_simple_request_has_celery_batches_fields() -> None:
    chord = {"task": "tasks.total", "args": [], "kwargs": {}, "options": {}}
    ctx = _context(task_id="id-1", args=[1, 2], kwargs={"url": "https://a.example"},
                   reply_to="reply-queue", ignore_result=True, chord=chord, retries=2,
                   group_id="g-1", parent_id="p-1", root_id="r-1")
    request = SimpleRequest(ctx)
    assert request.id == "id-1"
    assert request.name == request.task == "tasks.count_click"
    assert request.args == (1, 2)  # a tuple, as celery-batches gives
    assert request.kwargs == {"url": "https://a.example"}
    assert request.delivery_info == {"exchange": "", "routing_key": "celery"}
    assert request.hostname == "w1@host"
    assert request.ignore_result is True
    assert request.reply_to == "reply-queue"
    assert request.correlation_id == "id-1"
    assert request.chord == chord
    # the rest of the request, for the result store, chains, chords and retries
    assert request.context is ctx
    assert (request.retries, request.group, request.parent_id, request.root_id) == (
        2, "g-1", "p-1", "r-1")
    assert repr(request) == "<SimpleRequest: tasks.count_click[id-1]>"


def test_simple_request_copies_what_the_task_may_change() -> None:
    """A task that edits a request's kwargs must not change what its chain or retry sends."""
    ctx = _context(kwargs={"url": "u"})
    request = SimpleRequest(ctx)
    request.kwargs["url"] = "changed"
    request.delivery_info["routing_key"] = "changed"
    assert ctx.kwargs == {"url": "u"}
    assert ctx.delivery_info["routing_key"] == "celery"


def test_simple_request_of_a_bare_context() -> None:
    """Missing fields read as empty, and the correlation id falls back to the request's id."""
    from celeriac.task import Context

    request = SimpleRequest(Context(id="x", task="t", args=None, kwargs=None,
                                    delivery_info=None, correlation_id=None))
    assert (request.args, request.kwargs, request.delivery_info) == ((), {}, {})
    assert request.correlation_id == "x" and request.ignore_result is False
    assert request.retries == 0


# ---- the Batches base class ---------------------------------------------------------------------
def test_batches_defaults() -> None:
    assert issubclass(Batches, Task)
    assert (Batches.flush_every, Batches.flush_interval) == (10, 30.0)
    assert Batches.collects_requests is True and Task.collects_requests is False
    # calls carry the requests' own arguments, not the batch function's ``(requests)``
    assert Batches.typing is False


def test_a_batch_task_takes_its_options_and_any_call(app: Celery) -> None:
    @app.task(base=Batches, flush_every=100, flush_interval=10)
    def count_click(requests: list[SimpleRequest]) -> None:
        pass

    assert isinstance(count_click, Batches)
    assert (count_click.flush_every, count_click.flush_interval) == (100, 10)
    assert count_click.collects_requests
    result = count_click.delay(url="https://a.example")  # not count_click(requests)'s signature
    (fetched,) = app.transport.fetch(["celery"], 10, 1.0)
    body = v2.decode_task(fetched.message, frozenset({"application/json"}))
    assert (body.id, list(body.args), body.kwargs) == (result.id, [], {"url": "https://a.example"})


@pytest.mark.parametrize("mark", [
    lambda task: task.mark_as_done("some-id", 1),
    lambda task: task.mark_as_failure("some-id", ValueError("x")),
    lambda task: task.mark_as_retry("some-id", countdown=1)],
    ids=["done", "failure", "retry"])
def test_marks_outside_a_batch_say_where_they_belong(app: Celery, mark: Any) -> None:
    @app.task(base=Batches, name="tasks.marked")
    def marked(requests: list[SimpleRequest]) -> None:
        pass

    with pytest.raises(RuntimeError, match=r"tasks\.marked: mark_as_\* is for the requests of "
                                           r"the batch being run \(call it inside the batch "
                                           r"task\)"):
        mark(marked)


def test_marks_inside_a_batch_are_recorded_per_request(app: Celery) -> None:
    @app.task(base=Batches)
    def marked(requests: list[SimpleRequest]) -> None:
        pass

    request = SimpleRequest(_context(task_id="by-request"))
    error = ValueError("x")
    marks: dict[str, Any] = {}
    token = current_marks.set(marks)
    try:
        marked.mark_as_done(request, {"n": 1})
        marked.mark_as_failure("by-id", error)
        marked.mark_as_retry("retried", countdown=2.5)
        marked.mark_as_retry("retried-default")
        marked.mark_as_done("twice", 1)
        marked.mark_as_done("twice", 2)  # the last mark wins
    finally:
        current_marks.reset(token)
    assert marks == {"by-request": ("SUCCESS", {"n": 1}, None),
                     "by-id": ("FAILURE", error, None),
                     "retried": ("RETRY", None, 2.5),
                     "retried-default": ("RETRY", None, None),
                     "twice": ("SUCCESS", 2, None)}
    with pytest.raises(RuntimeError):  # the batch is over: marks are refused again
        marked.mark_as_done(request, 1)


# ---- BatchBuffers -------------------------------------------------------------------------------
class Clock:
    """Stands in for ``time.monotonic`` in worker/batching.py (the buffers' only clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(batching.time, "monotonic", clock)
    return clock


def _task(name: str, flush_every: Any = 3, flush_interval: float = 5.0) -> Any:
    return SimpleNamespace(name=name, flush_every=flush_every, flush_interval=flush_interval)


_job_ids = iter(range(1, 1_000_000))


def _job(task: Any) -> Job:
    return Job(next(_job_ids), delivery(task_message(task.name)), task, True, False, "lane")


def _ids() -> Any:
    numbers = iter(range(9001, 10_000))
    return lambda: next(numbers)


def test_a_buffer_becomes_a_batch_at_flush_every(clock: Clock) -> None:
    buffers, task, next_id = BatchBuffers(limit=10), _task("a", flush_every=3), _ids()
    jobs = [_job(task) for _ in range(3)]
    assert buffers.add(jobs[0], next_id) is None
    assert buffers.add(jobs[1], next_id) is None
    assert buffers.held == 2
    batch = buffers.add(jobs[2], next_id)
    assert isinstance(batch, BatchJob)
    assert batch.members == jobs  # in arrival order
    assert batch.id == 9001 and batch.task is task and batch.lane == "lane"
    assert batch.delivery is jobs[0].delivery  # its first member's (each holds its own lease)
    assert batch.late and not batch.outside_window and not batch.holds_lease
    assert batch.task_id == "batch of 3"
    assert buffers.held == 0 and buffers.next_due_in() is None
    assert buffers.due(next_id) == []  # nothing left behind


def test_a_buffer_is_handed_over_flush_interval_after_its_first_request(clock: Clock) -> None:
    buffers, task, next_id = BatchBuffers(limit=10), _task("a", 10, 5.0), _ids()
    first, second = _job(task), _job(task)
    buffers.add(first, next_id)
    clock.now += 3.0
    buffers.add(second, next_id)  # a later request does not restart the wait
    assert buffers.next_due_in() == pytest.approx(2.0)
    clock.now += 1.9
    assert buffers.due(next_id) == []
    clock.now += 0.1
    assert buffers.next_due_in() == 0.0
    (batch,) = buffers.due(next_id)
    assert batch.members == [first, second]
    assert buffers.held == 0 and buffers.next_due_in() is None
    # the next request starts a new wait
    buffers.add(_job(task), next_id)
    assert buffers.next_due_in() == pytest.approx(5.0)


def test_each_batch_task_has_its_own_buffer_and_interval(clock: Clock) -> None:
    buffers, next_id = BatchBuffers(limit=10), _ids()
    quick, slow = _task("quick", 10, 1.0), _task("slow", 2, 30.0)
    q1 = _job(quick)
    buffers.add(q1, next_id)
    s1 = _job(slow)
    buffers.add(s1, next_id)
    assert buffers.held == 2
    assert buffers.next_due_in() == pytest.approx(1.0)  # the earliest of the two
    clock.now += 1.0
    (batch,) = buffers.due(next_id)
    assert batch.task is quick and batch.members == [q1]
    assert buffers.held == 1
    s2 = _job(slow)
    full = buffers.add(s2, next_id)  # the slow one fills by size, long before its interval
    assert full is not None and full.members == [s1, s2] and full.task is slow
    assert buffers.held == 0


def test_flush_every_below_one_hands_each_request_over_alone(clock: Clock) -> None:
    buffers, next_id = BatchBuffers(limit=1), _ids()
    task = _task("a", flush_every=0)
    job = _job(task)
    batch = buffers.add(job, next_id)
    assert batch is not None and batch.members == [job]


def test_drain_gives_back_every_buffered_request(clock: Clock) -> None:
    buffers, next_id = BatchBuffers(limit=10), _ids()
    a, b = _task("a", 5), _task("b", 5)
    jobs = [_job(a), _job(b), _job(a)]
    for job in jobs:
        assert buffers.add(job, next_id) is None
    assert buffers.held == 3
    drained = buffers.drain()
    assert sorted(job.id for job in drained) == sorted(job.id for job in jobs)
    assert buffers.held == 0 and buffers.drain() == []
    assert buffers.next_due_in() is None
    clock.now += 60
    assert buffers.due(next_id) == []


def test_held_counts_only_requests_still_buffered(clock: Clock) -> None:
    buffers, task, next_id = BatchBuffers(limit=4), _task("a", flush_every=4), _ids()
    for expected in (1, 2, 3):
        buffers.add(_job(task), next_id)
        assert buffers.held == expected
    assert buffers.add(_job(task), next_id) is not None
    assert buffers.held == 0
    assert buffers.limit == 4  # fixed: the consumer's bound, not a running count


def test_the_pools_get_a_batch_as_its_members_messages(clock: Clock) -> None:
    buffers, task = BatchBuffers(limit=2), _task("tasks.b", flush_every=2)
    jobs = [_job(task), _job(task)]
    buffers.add(jobs[0], _ids())
    batch = buffers.add(jobs[1], _ids())
    assert batch is not None
    messages = batch_message(batch)
    assert isinstance(messages, BatchMessages)
    assert messages.task_name == "tasks.b"
    assert messages.members == [(job.id, job.delivery.message, job.delivery.delivery_info)
                                for job in jobs]
    # the pools read an id and a task name from what they run
    assert messages.headers["task"] == "tasks.b"
    assert messages.headers["id"].startswith("batch-")
    assert messages.headers["id"] != batch_message(batch).headers["id"]


# ---- the consumer's bound -----------------------------------------------------------------------
def test_the_consumer_stops_fetching_while_buffered_requests_reach_the_limit(app: Celery
                                                                            ) -> None:
    @app.task(base=Batches, name="tasks.big", flush_every=5, flush_interval=60)
    def big(requests: list[SimpleRequest]) -> None:
        pass

    @app.task(base=Batches, name="tasks.small", flush_every=2, flush_interval=60)
    def small(requests: list[SimpleRequest]) -> None:
        pass

    @app.task(name="tasks.plain")
    def plain() -> None:
        pass

    consumer = make_consumer(app, prefetch_multiplier=4)
    assert consumer.batches.limit == 5 + 2  # the batch tasks' flush sizes
    assert consumer._may_fetch()
    consumer.receive([delivery(task_message("tasks.big")) for _ in range(4)])
    consumer.receive([delivery(task_message("tasks.small"))])
    # held outside the window: the window is still empty
    assert consumer.batches.held == 5 and not consumer._buffer
    assert consumer._room() == consumer.prefetch_limit
    assert consumer._may_fetch()
    consumer.batches.held = consumer.batches.limit  # as many as the bound allows
    assert not consumer._may_fetch() and consumer.claim_refill() == 0
    consumer.batches.held = 5

    # a full buffer becomes one job in the window; its members stay held by the consumer
    consumer.receive([delivery(task_message("tasks.big"))])
    (batch,) = consumer._buffer
    assert isinstance(batch, BatchJob) and len(batch.members) == 5
    assert consumer.batches.held == 1
    assert consumer._room() == consumer.prefetch_limit - 1
    held = consumer.jobs()
    assert batch in held and all(member in held for member in batch.members)
    # a plain task's message takes a window slot of its own, not a buffer's
    consumer.receive([delivery(task_message("tasks.plain"))])
    assert len(consumer._buffer) == 2 and consumer.batches.held == 1


def test_an_app_without_batch_tasks_has_a_limit_of_one(app: Celery) -> None:
    @app.task(name="tasks.plain")
    def plain() -> None:
        pass

    consumer = make_consumer(app)
    assert consumer.batches.limit == 1 and consumer.batches.held == 0
    assert consumer._may_fetch()


# ---- run_batch: where a batch's results go ------------------------------------------------------
def _batch_of(app: Celery, name: str, *args: Any) -> BatchMessages:
    """What a pool gets for one batch of ``name``: a request per argument."""
    return BatchMessages(name, [(n, task_message(name, args=[arg]), {})
                                for n, arg in enumerate(args)])


def _result(app: Celery, outcome: Any, n: int) -> Any:
    task_id = dict(outcome.members)[n].task_id
    return app.backend.get_task_meta(task_id)


@pytest.mark.parametrize("acks_late", [False, True])
def test_under_inline_settling_a_batchs_results_come_back_unsent(app: Celery,
                                                                 acks_late: bool) -> None:
    @app.task(base=Batches, name="tasks.doubles", flush_every=2, acks_late=acks_late)
    def doubles(requests: list[SimpleRequest]) -> None:
        for request in requests:
            doubles.mark_as_done(request, request.args[0] * 2)

    accept = frozenset({"application/json"})
    kept = batching.run_batch(app, _batch_of(app, "tasks.doubles", 1, 2), "w@h", accept,
                              collect_writes=True)
    # one batch of writes for the consumer to send with the acks; none left on the members
    assert kept.pending is not None and len(kept.pending.results) == 2
    assert all(outcome.pending is None for _, outcome in kept.members)
    assert [_result(app, kept, n)["status"] for n in (0, 1)] == ["PENDING", "PENDING"]
    kept.pending.send(app)
    assert [_result(app, kept, n)["result"] for n in (0, 1)] == [2, 4]

    sent = batching.run_batch(app, _batch_of(app, "tasks.doubles", 3), "w@h", accept)
    assert sent.pending is None  # a prefork child stores them itself, before the acks
    assert _result(app, sent, 0)["result"] == 6


def test_results_a_batch_task_stored_itself_are_read_back_only_then(
        app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[list[str]] = []
    real = app.backend.stored_metas

    def counted(task_ids: list[str]) -> dict[str, Any]:
        reads.append(list(task_ids))
        return real(task_ids)

    monkeypatch.setattr(app.backend, "stored_metas", counted)

    @app.task(base=Batches, name="tasks.quiet", flush_every=2)
    def quiet(requests: list[SimpleRequest]) -> None:
        pass

    @app.task(base=Batches, name="tasks.stores", flush_every=2)
    def stores(requests: list[SimpleRequest]) -> None:
        # celery-batches' way: the first request's result written by the task itself
        app.backend.mark_as_done(requests[0].id, "stored", request=requests[0])

    accept = frozenset({"application/json"})
    batching.run_batch(app, _batch_of(app, "tasks.quiet", 1, 2), "w@h", accept)
    assert reads == []  # nothing was stored during the call: nothing to read back
    outcome = batching.run_batch(app, _batch_of(app, "tasks.stores", 1, 2), "w@h", accept)
    assert len(reads) == 1
    # the stored result stands; the unmarked request succeeds with None
    assert [_result(app, outcome, n)["result"] for n in (0, 1)] == ["stored", None]
