"""Rate limits: Celery's rate strings (celeriac/rates.py), the start-up checks and the decisions
of the worker's extension (worker/rate_limits.py), ``app.control.rate_limit``, and an in-process
worker holding a rate. On the memory broker and store; the stores' buckets themselves are
checked by the contract suite (tests/contract), and several workers by
tests/integration/test_rate_limits.py."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from celeriac import Celery
from celeriac.backends.base import RATE_BUCKET_PREFIX
from celeriac.batches import Batches
from celeriac.exceptions import ImproperlyConfigured
from celeriac.rates import interval_of, parse_rate, read_overrides
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker import rate_limits
from celeriac.worker.admission import Verdict
from celeriac.worker.rate_limits import (
    RateLimiting,
    block_size,
    check_rate_limits,
    effective_intervals,
)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = make_test_app("rates")
    yield app
    dispose_test_app(app)


def job(task: Any, task_id: str) -> Any:
    """What ``before_run`` reads of a held job: its task and its id."""
    return SimpleNamespace(task=task, task_id=task_id)


def started(app: Celery) -> RateLimiting:
    extension = RateLimiting(app)
    extension.on_worker_start(None)  # type: ignore[arg-type]  # (it reads no consumer)
    return extension


# ---- Celery's rate strings ----------------------------------------------------------------------
@pytest.mark.parametrize("rate, per_second", [
    ("100/s", 100.0), ("10/m", 10 / 60), ("1000/h", 1000 / 3600), ("5", 5.0), ("0.5/s", 0.5),
    (" 20/s ", 20.0), (7, 7.0), (2.5, 2.5), ("0", 0.0), (0, 0.0), (None, 0.0), ("", 0.0),
    ("0/m", 0.0), ("10/", 10.0),
])
def test_rates_are_read_as_celery_reads_them(rate: Any, per_second: float) -> None:
    assert parse_rate(rate) == pytest.approx(per_second)


@pytest.mark.parametrize("rate", ["10/d", "ten/s", "/s", "-1/s", -3, "inf", "nan/s",
                                  True, [10], "10/s/m"])
def test_a_bad_rate_is_one_line_naming_it_and_the_forms(rate: Any) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(rate, "task t: rate_limit")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"task t: rate_limit={rate!r} is not a rate")
    assert "'10/m'" in message


def test_intervals() -> None:
    assert interval_of("20/s") == pytest.approx(0.05)
    assert interval_of("10/m") == pytest.approx(6.0)
    assert interval_of("0") is None and interval_of(None) is None


# ---- at start-up --------------------------------------------------------------------------------
def test_a_bad_rate_stops_the_worker_with_one_line(app: Celery) -> None:
    @app.task(rate_limit="10/minute")
    def fetch() -> None: ...

    with pytest.raises(ImproperlyConfigured, match=r"rate_limit='10/minute' is not a rate"):
        check_rate_limits(app)
    app.conf.worker_disable_rate_limits = True
    check_rate_limits(app)  # off: nothing is read


def test_a_bad_default_rate_is_named_as_the_setting(app: Celery) -> None:
    app.conf.task_default_rate_limit = "fast"
    with pytest.raises(ImproperlyConfigured, match="task_default_rate_limit='fast'"):
        check_rate_limits(app)


def test_a_store_without_state_cannot_hold_a_rate() -> None:
    app = Celery("rates-rpc", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://",
                 set_as_current=False)
    try:
        @app.task
        def free() -> None: ...

        check_rate_limits(app)  # no rate: any store will do

        @app.task(rate_limit="1/s")
        def paced() -> None: ...

        with pytest.raises(ImproperlyConfigured) as caught:
            check_rate_limits(app)
        assert f"task {paced.name} (rate_limit='1/s')" in str(caught.value)
        assert "'rpc://' does not" in str(caught.value) and "redis://" in str(caught.value)
    finally:
        app.close()


# ---- which tasks are limited, and how -----------------------------------------------------------
def test_a_tasks_rate_else_the_default_else_none(app: Celery) -> None:
    @app.task(rate_limit="2/s")
    def own() -> None: ...

    @app.task
    def plain() -> None: ...

    @app.task(rate_limit="0")
    def opted_out() -> None: ...

    assert effective_intervals(app, {}) == {own.name: 0.5}
    app.conf.task_default_rate_limit = "10/s"
    intervals = effective_intervals(app, {})
    assert intervals[own.name] == 0.5 and intervals[plain.name] == pytest.approx(0.1)
    assert opted_out.name not in intervals
    overridden = effective_intervals(app, {own.name: "0", opted_out.name: "1/s"})
    assert own.name not in overridden and overridden[opted_out.name] == 1.0


def test_batch_tasks_are_left_out_with_a_warning(app: Celery,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    @app.task(base=Batches, flush_every=10, rate_limit="1/s")
    def collect(requests: list) -> None: ...

    check_rate_limits(app)
    caplog.set_level(logging.WARNING, logger="celeriac.worker")
    extension = started(app)
    assert extension._intervals == {}
    assert extension.before_run(job(collect, "a")) is None
    assert any("rate_limit is not applied to batch tasks" in r.getMessage()
               and collect.name in r.getMessage() for r in caplog.records)
    extension.on_worker_stop(None)  # type: ignore[arg-type]


def test_the_first_call_runs_and_the_next_wait_for_their_reserved_slots(app: Celery) -> None:
    @app.task(rate_limit="1/s")
    def paced() -> None: ...

    @app.task
    def free() -> None: ...

    extension = started(app)
    try:
        assert extension.before_run(job(free, "f1")) is None
        assert extension.before_run(job(paced, "p1")) is None, "a fresh bucket: it runs"
        before = time.time()
        second = extension.before_run(job(paced, "p2"))
        assert second is not None and second.verdict is Verdict.DEFER
        assert second.not_before is not None and 0.5 < second.not_before - before <= 1.05
        third = extension.before_run(job(paced, "p3"))
        assert third is not None and third.not_before is not None
        assert third.not_before - second.not_before == pytest.approx(1.0, abs=0.05)
        again = extension.before_run(job(paced, "p2"))  # back early: the same slot
        assert again is not None and again.not_before is not None
        assert again.not_before == pytest.approx(second.not_before, abs=0.05)
        assert app.backend.get_value(RATE_BUCKET_PREFIX + free.name) is None, \
            "a task without a rate never touches the store"
    finally:
        extension.on_worker_stop(None)  # type: ignore[arg-type]


class CountingStore:
    """The extension's store, counting the round trips ``rate_take`` makes."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.takes: list[int] = []

    def rate_take(self, bucket: str, interval: float, ticket: str, count: int = 1) -> Any:
        self.takes.append(count)
        return self.store.rate_take(bucket, interval, ticket, count)


def test_block_sizes_follow_the_rate() -> None:
    assert block_size(interval_of("1000000/s")) == 50_000
    assert block_size(interval_of("1000/s")) == 50
    assert block_size(interval_of("40/s")) == 2
    assert [block_size(interval_of(r)) for r in ("20/s", "10/s", "1/m")] == [1, 1, 1], \
        "at 20/s or less each call takes its own slot, as before"


def test_a_high_rate_takes_a_block_of_slots_per_store_round_trip(app: Celery) -> None:
    @app.task(rate_limit="1000/s")
    def busy() -> None: ...

    extension = started(app)
    try:
        store = extension.store = CountingStore(extension.store)  # type: ignore[assignment]
        assert [extension.before_run(job(busy, f"b{n}")) for n in range(50)] == [None] * 50
        assert store.takes == [50], "one round trip for fifty calls (50 ms at 1000/s)"
    finally:
        extension.on_worker_stop(None)  # type: ignore[arg-type]


def test_blocks_keep_the_rate_across_workers(app: Celery,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limits, "RATE_HORIZON", 5.0)  # ten slots of 0.5 s a block

    @app.task(rate_limit="2/s")
    def paced() -> None: ...

    one, two = started(app), started(app)  # two workers, one store
    try:
        assert [one.before_run(job(paced, f"a{n}")) for n in range(10)] == [None] * 10
        before = time.time()
        late = one.before_run(job(paced, "a10"))
        assert late is not None and late.verdict is Verdict.DEFER
        assert late.not_before is not None and 4.0 < late.not_before - before <= 5.05, \
            "ten slots (5 s) went to the first worker's block: the next is reserved after them"
        other = two.before_run(job(paced, "b0"))
        assert other is not None and other.not_before is not None
        assert other.not_before - late.not_before == pytest.approx(0.5, abs=0.05)
    finally:
        one.on_worker_stop(None)  # type: ignore[arg-type]
        two.on_worker_stop(None)  # type: ignore[arg-type]


def test_a_blocks_slots_expire_after_the_horizon(app: Celery,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(rate_limits, "time",
                        SimpleNamespace(monotonic=lambda: clock[0], time=time.time))

    @app.task(rate_limit="1000/s")
    def busy() -> None: ...

    extension = started(app)
    try:
        store = extension.store = CountingStore(extension.store)  # type: ignore[assignment]
        assert extension.before_run(job(busy, "b0")) is None
        assert extension.before_run(job(busy, "b1")) is None
        clock[0] += rate_limits.RATE_HORIZON
        extension.before_run(job(busy, "b2"))
        assert store.takes == [50, 50], "the block's 48 slots left were dropped, not used late"
    finally:
        extension.on_worker_stop(None)  # type: ignore[arg-type]


def test_a_rate_changed_at_run_time_drops_the_block(app: Celery) -> None:
    @app.task(rate_limit="1000/s")
    def busy() -> None: ...

    extension = started(app)
    try:
        assert extension.before_run(job(busy, "b0")) is None  # a block of 50
        app.control.rate_limit(busy.name, "1/h")
        extension._refresh()
        before = time.time()
        first = extension.before_run(job(busy, "b1"))  # the slot after the old block's 50
        assert first is None or (first.not_before is not None
                                 and first.not_before - before <= 0.06), first
        deferred = extension.before_run(job(busy, "b2"))
        assert deferred is not None and deferred.not_before is not None
        assert deferred.not_before - before > 3000, \
            "the slots left of the old rate's block are not handed out"
    finally:
        extension.on_worker_stop(None)  # type: ignore[arg-type]


def test_disabled_rate_limits_let_every_call_run(app: Celery) -> None:
    app.conf.worker_disable_rate_limits = True

    @app.task(rate_limit="1/h")
    def paced() -> None: ...

    extension = started(app)
    assert [extension.before_run(job(paced, f"p{n}")) for n in range(3)] == [None] * 3


# ---- app.control.rate_limit ---------------------------------------------------------------------
def test_control_rate_limit_is_stored_and_read_by_the_extension(app: Celery) -> None:
    @app.task
    def free() -> None: ...

    @app.task(rate_limit="1/s")
    def paced() -> None: ...

    extension = started(app)
    try:
        app.control.rate_limit(free.name, "1/h")
        app.control.rate_limit(paced.name, None)
        assert read_overrides(app.backend) == {free.name: "1/h", paced.name: "0"}
        extension._refresh()
        assert extension._intervals == {free.name: 3600.0}
        assert extension.before_run(job(free, "f1")) is None
        deferred = extension.before_run(job(free, "f2"))
        assert deferred is not None and deferred.verdict is Verdict.DEFER
        assert [extension.before_run(job(paced, f"p{n}")) for n in range(3)] == [None] * 3
        app.control.reset_rate_limit(paced.name)
        extension._refresh()
        assert extension._intervals == {free.name: 3600.0, paced.name: 1.0}
    finally:
        extension.on_worker_stop(None)  # type: ignore[arg-type]


def test_concurrent_changes_each_keep_theirs(app: Celery) -> None:
    names = []
    for n in range(8):
        names.append(app.task(name=f"rates.t{n}")(lambda: None).name)
    threads = [threading.Thread(target=app.control.rate_limit, args=(name, f"{n + 1}/m"))
               for n, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert read_overrides(app.backend) == {name: f"{n + 1}/m" for n, name in enumerate(names)}


def test_control_rate_limit_refuses_what_it_cannot_do(app: Celery) -> None:
    @app.task
    def free() -> None: ...

    @app.task(base=Batches, flush_every=5)
    def collect(requests: list) -> None: ...

    with pytest.raises(ValueError, match="no task named 'tasks.nope' is registered"):
        app.control.rate_limit("tasks.nope", "1/s")
    with pytest.raises(ValueError, match="is not a rate"):
        app.control.rate_limit(free.name, "1/week")
    with pytest.raises(ValueError, match="leave destination out"):
        app.control.rate_limit(free.name, "1/s", destination=["w1@host"])
    with pytest.raises(ValueError, match="is a batch task"):
        app.control.rate_limit(collect.name, "1/s")
    assert read_overrides(app.backend) == {}


# ---- an in-process worker -----------------------------------------------------------------------
def test_a_worker_spaces_the_calls_and_runs_them_all(app: Celery) -> None:
    starts: list[float] = []

    @app.task(rate_limit="10/s")
    def paced(n: int) -> int:
        starts.append(time.time())
        return n

    calls = [paced.delay(n) for n in range(6)]
    with start_worker(app, pool="threads", concurrency=4):
        assert [c.get(timeout=10) for c in calls] == list(range(6))
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:])]
    # A start the loaded machine delays shortens the gap after it, so read the typical gap and
    # the whole span (5 gaps of 0.1 s) rather than the smallest gap.
    assert statistics.median(gaps) >= 0.09, f"starts closer than the rate allows: {gaps}"
    assert sum(gaps) >= 0.4, f"six calls at 10/s took less than 0.4 s: {gaps}"


def test_a_dispatch_main_task_takes_a_slot_per_start(app: Celery) -> None:
    from celeriac.dispatch import dispatch

    starts: list[float] = []

    @app.task
    def square(i: int) -> int:
        return i * i

    @dispatch
    @app.task(rate_limit="5/s")
    def fan_out(n: int) -> Any:
        starts.append(time.time())
        for i in range(n):
            yield square, (i,)

    calls = [fan_out.delay(2) for _ in range(3)]
    with start_worker(app, pool="threads", concurrency=4):
        for call in calls:
            call.get(timeout=10)
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:])]
    # one late start shortens the gap after it: read the span of the two gaps of 0.2 s
    assert len(starts) == 3 and sum(gaps) >= 0.3, f"main tasks started too close: {gaps}"
