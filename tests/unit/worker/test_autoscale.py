"""--autoscale: reading the option, the scaler's decisions (pure logic, on a stand-in pool and
consumer with a hand-driven clock), and the thread pool growing and shrinking for real."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.message import Message
from celeriac.worker.autoscale import (
    DEFAULT_KEEPALIVE,
    Autoscaler,
    autoscaler_class,
    keepalive_from_env,
    parse_autoscale,
    plan,
)
from celeriac.worker.outcome import Outcome
from celeriac.worker.pools.threads import ThreadPool
from tests.waiting import wait_for


# ---- the option ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("10,3", (10, 3)),
    ("3,10", (10, 3)),  # Celery sorts the pair: the larger is the maximum
    ("10", (10, 0)),  # a single number is the maximum, with a minimum of 0
    (" 4 , 1 ", (4, 1)),
    ((4, 1), (4, 1)),
    ([2, 2], (2, 2)),
    (None, None),
    ("", None),
])
def test_the_option_reads_as_celery_reads_it(value: Any, expected: Any) -> None:
    assert parse_autoscale(value) == expected


@pytest.mark.parametrize("value, complaint", [
    ("ten,3", "expected MAX,MIN"),
    ("10,3,1", "expected MAX,MIN"),
    ("2.5", "expected MAX,MIN"),
    ("0", "the maximum must be at least 1"),
    ("4,-1", "the minimum at least 0"),
])
def test_a_bad_option_is_one_line_naming_the_fix(value: str, complaint: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        parse_autoscale(value)
    text = str(caught.value)
    assert complaint in text and f"--autoscale={value}" in text and "\n" not in text


def test_the_keepalive_comes_from_celerys_environment_variable() -> None:
    assert keepalive_from_env({}) == DEFAULT_KEEPALIVE == 30.0
    assert keepalive_from_env({"AUTOSCALE_KEEPALIVE": "1.5"}) == 1.5
    for bad in ("0", "-3", "soon"):
        with pytest.raises(ImproperlyConfigured, match="AUTOSCALE_KEEPALIVE"):
            keepalive_from_env({"AUTOSCALE_KEEPALIVE": bad})


# ---- the decision --------------------------------------------------------------------------------
@pytest.mark.parametrize("size, demand, surplus_for, change", [
    (1, 1, None, 0),  # busy and nothing waiting: stay
    (1, 3, None, +2),  # two wait: grow at once, no keepalive for growing
    (1, 50, None, +3),  # never past the maximum (4)
    (4, 9, None, 0),  # at the maximum
    (4, 2, 5.0, 0),  # demand fell, but not for the keepalive (10) yet
    (4, 2, 10.0, -2),  # fell for the keepalive: down to the demand
    (4, 0, 30.0, -3),  # never below the minimum (1)
    (1, 0, 99.0, 0),  # at the minimum already
    (0, 0, None, +1),  # below the minimum (it was raised): up to it
    (6, 6, None, -2),  # above the maximum (it was lowered): down at once, keepalive or not
])
def test_the_plan(size: int, demand: int, surplus_for: float | None, change: int) -> None:
    assert plan(size, demand, low=1, high=4, surplus_for=surplus_for, keepalive=10.0) == change


class _Pool:
    """A stand-in pool: ``busy`` of its slots run a task and cannot be retired."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0

    def grow(self, n: int) -> int:
        self.limit += n
        return n

    def shrink(self, n: int) -> int:
        n = min(n, self.limit - self.busy)
        self.limit -= n
        return n


class _Consumer:
    """A stand-in consumer: the demand the test sets, and the windows it was given."""

    def __init__(self) -> None:
        self.demand = 0
        self.windows: list[tuple[int, bool]] = []

    def pool_demand(self) -> int:
        return self.demand

    def resize_window(self, slots: int, *, room_to_grow: bool = False) -> None:
        self.windows.append((slots, room_to_grow))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _scaler(limit: int = 1, high: int = 4, low: int = 1, keepalive: float = 10.0
            ) -> tuple[Autoscaler, _Pool, _Consumer, _Clock]:
    pool, consumer, clock = _Pool(limit), _Consumer(), _Clock()
    return Autoscaler(pool, consumer, high, low, keepalive=keepalive, clock=clock), pool, \
        consumer, clock


def test_it_grows_at_once_and_shrinks_only_after_the_keepalive_of_low_demand() -> None:
    scaler, pool, consumer, clock = _scaler()
    consumer.demand = 6
    assert scaler.maybe_scale() and pool.limit == 4
    assert consumer.windows[-1] == (4, False)  # at the maximum: no room to grow
    consumer.demand = 1
    clock.now += 5
    assert not scaler.maybe_scale() and pool.limit == 4  # low demand noticed, not long enough
    clock.now += 9.9
    assert not scaler.maybe_scale() and pool.limit == 4
    clock.now += 0.1  # ten seconds of low demand
    assert scaler.maybe_scale() and pool.limit == 1
    assert consumer.windows[-1] == (1, True)  # below the maximum: room for one more message


def test_demand_coming_back_restarts_the_keepalive() -> None:
    scaler, pool, consumer, clock = _scaler(limit=4)
    consumer.demand = 1
    scaler.maybe_scale()
    clock.now += 8
    consumer.demand = 4  # busy again for a moment
    scaler.maybe_scale()
    consumer.demand = 1
    clock.now += 1
    assert not scaler.maybe_scale()  # 9 s after the first low look, but the surplus starts now
    clock.now += 9.9
    assert not scaler.maybe_scale() and pool.limit == 4
    clock.now += 0.1
    assert scaler.maybe_scale() and pool.limit == 1


def test_busy_slots_are_never_retired() -> None:
    scaler, pool, consumer, clock = _scaler(limit=4)
    pool.busy = 3
    consumer.demand = 0  # say the demand was misread: the pool still keeps its busy slots
    scaler.maybe_scale()
    clock.now += 11
    scaler.maybe_scale()
    assert pool.limit == 3


def test_update_moves_the_bounds_and_the_pool_follows() -> None:
    scaler, pool, consumer, clock = _scaler(limit=4)
    consumer.demand = 4
    assert scaler.update(max=2) == (2, 1)
    assert scaler.maybe_scale() and pool.limit == 2  # above the new maximum: no keepalive
    assert scaler.update(min=3, max=5) == (5, 3)
    assert scaler.maybe_scale() and pool.limit == 4
    assert scaler.info() == {"max": 5, "min": 3, "current": 4, "qty": 4, "keepalive": 10.0}


class CustomScaler(Autoscaler):
    """A subclass ``worker_autoscaler`` may name."""


def test_worker_autoscaler_names_the_class() -> None:
    assert autoscaler_class({}) is Autoscaler
    assert autoscaler_class({"worker_autoscaler": "celery.worker.autoscale:Autoscaler"}) \
        is Autoscaler
    assert autoscaler_class(
        {"worker_autoscaler": "tests.unit.worker.test_autoscale:CustomScaler"}) is CustomScaler
    with pytest.raises(ImproperlyConfigured, match="cannot import it"):
        autoscaler_class({"worker_autoscaler": "no_such_module_here:Scaler"})
    with pytest.raises(ImproperlyConfigured, match="is not a subclass"):
        autoscaler_class({"worker_autoscaler": "collections:OrderedDict"})


@pytest.mark.parametrize("pool", ["solo", "asyncio"])
def test_autoscale_is_refused_where_the_pool_cannot_change_size(pool: str) -> None:
    app = Celery("autoscale-refused", broker="memory://autoscale-refused",
                 backend="memory://autoscale-refused", set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match=f"not -P {pool}: use -P threads"):
            app.Worker(pool=pool, autoscale="4,1")
        worker = app.Worker(pool="threads", concurrency=8, autoscale="4,1")
        assert worker.concurrency == 1  # it starts at the minimum, as Celery's does
        assert "pool:     threads (concurrency {min=1, max=4})" in worker.banner()
    finally:
        app.close()


# ---- the thread pool, for real -------------------------------------------------------------------
class _BlockingRunner:
    """Each job waits for ``release``; its outcome names the thread it ran in."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def limits(self, message: Any) -> tuple[None, None]:
        return None, None

    def __call__(self, message: Message, delivery_info: dict) -> Outcome:
        self.release.wait(10)
        return Outcome(message.headers["id"], "SUCCESS",
                       retval_repr=threading.current_thread().name)


def _message(task_id: str) -> Message:
    return Message(b"[[], {}, {}]", "application/json", "utf-8", {"id": task_id, "task": "t"}, {})


def test_the_thread_pool_grows_and_shrinks_without_touching_busy_threads() -> None:
    runner = _BlockingRunner()
    done: list[Outcome] = []
    pool = ThreadPool(runner, 1, lambda job_id, outcome: done.append(outcome))
    pool.start()
    try:
        assert pool.grow(2) == 2 and pool.limit == 3 and pool.free_slots() == 3
        for n in range(2):
            pool.submit(n, _message(f"t{n}"), {})
        assert pool.shrink(3) == 1, "only the idle thread may go"
        assert pool.limit == 2 and pool.free_slots() == 0
        wait_for(lambda: len(pool._threads) == 2, 5, message="the idle thread never left")
        runner.release.set()
        wait_for(lambda: len(done) == 2, 5, message="the busy threads' tasks never ended")
        assert pool.free_slots() == 2
        assert pool.shrink(5) == 2 and pool.limit == 0 and pool.free_slots() == 0
        wait_for(lambda: not pool._threads, 5, message="the idle threads never left")
    finally:
        runner.release.set()
        pool.stop()
