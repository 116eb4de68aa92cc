"""Batches end to end (issue 14): a batch task gets its buffered requests as one list, with a
result per request, on every broker (the ``broker`` fixture: SQLite, Redis, RabbitMQ with
results in SQLite) and default worker settings (no prefetch tuning).

Most tests run the worker in this process (``celeriac.testing.start_worker``, solo pool), so
they can read the consumer's own bookkeeping; the prefork pool, a SIGKILL mid-batch and a time
limit need real worker subprocesses. The tasks are tests/integration/batch_tasks.py; batch sizes
and runs are read from ledger files the tasks append to, outside the system under test.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ContextManager, Iterator

import pytest

from celeriac import chord, group, signals, states
from celeriac.exceptions import TaskRevokedError, TimeLimitExceeded
from celeriac.testing import start_worker as start_embedded
from celeriac.testing.worker import EmbeddedWorker
from celeriac.worker.batching import BatchJob
from celeriac.worker.consumer import Consumer
from tests.integration.conftest import Broker, open_broker, settled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.batch_tasks"
#: the longest any one wait here may take (each takes a second or two when all is well)
TIMEOUT = 20.0


@pytest.fixture
def tasks(broker: Broker, task_module: Callable[..., ModuleType]) -> ModuleType:
    """batch_tasks on the test's broker; workers start after this is set up."""
    return task_module("batch_tasks", broker.url, results=broker.results)


def worker(tasks: ModuleType, **kwargs: Any) -> ContextManager[EmbeddedWorker]:
    """An in-process worker with the default settings (solo pool, default prefetch)."""
    return start_embedded(tasks.app, shutdown_timeout=20, **kwargs)


def consumer_of(w: EmbeddedWorker) -> Consumer:
    """The running worker's consumer (its buffers, window and held jobs)."""
    assert w.consumer is not None
    return w.consumer


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def outcome(result: Any) -> tuple[str, Any]:
    """(state, value or exception) of a finished result."""
    try:
        value = result.get(timeout=TIMEOUT)
    except Exception as exc:
        return result.state, exc
    return result.state, value  # read once it has ended


# ---- 1: the README's examples, and canvas --------------------------------------------------------
def test_readme_examples_and_canvas(tasks: ModuleType, broker: Broker,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # 100 of each: flush_every=100 hands each over as one batch without waiting out the 10 s
    urls = ["https://a.example"] * 60 + ["https://b.example"] * 40
    clicks = [tasks.count_click.delay(url=url) for url in urls]
    api = [tasks.wot_api.delay(n) for n in range(100)]
    with worker(tasks):
        assert [r.get(timeout=TIMEOUT) for r in api] == [f"response for {n}" for n in range(100)]
        assert [r.get(timeout=TIMEOUT) for r in clicks] == [None] * 100  # unmarked: None

        # a batch task as a chain's first and last step, a group's members, a chord's header
        first = (tasks.double.s(5) | tasks.add_one.s()).delay()
        last = (tasks.add_one.s(1) | tasks.double.s()).delay()
        members = group(tasks.double.s(n) for n in range(5)).delay()
        body = chord([tasks.double.s(n) for n in range(10, 15)], tasks.total.s()).delay()
        assert first.get(timeout=TIMEOUT) == 11
        assert first.parent.get(timeout=TIMEOUT) == 10
        assert last.get(timeout=TIMEOUT) == 4
        assert members.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
        assert body.get(timeout=TIMEOUT) == [20, 22, 24, 26, 28]  # every request's result
    assert {r.state for r in clicks + api} == {states.SUCCESS}
    printed = re.findall(r">>> Clicks: (\S+) -> (\d+)", capsys.readouterr().out)
    counted: collections.Counter[str] = collections.Counter()
    for url, n in printed:
        counted[url] += int(n)
    assert counted == {"https://a.example": 60, "https://b.example": 40}
    settled(broker, tasks.app)


# ---- 2: full batches without tuning -------------------------------------------------------------
def test_full_batches_then_a_lone_request_at_flush_interval(tasks: ModuleType, broker: Broker,
                                                            tmp_path: Path) -> None:
    ledger = tmp_path / "sizes"
    results = [tasks.sizes.delay(ledger=str(ledger), n=n) for n in range(250)]
    with worker(tasks) as w:
        # the default window is far smaller than a batch: the buffer lives outside it
        assert consumer_of(w).prefetch_limit < tasks.sizes.flush_every
        values = [r.get(timeout=TIMEOUT) for r in results]
        assert [int(line.split()[0]) for line in lines(ledger)] == [100, 100, 50]
        assert collections.Counter(values) == {100: 200, 50: 50}  # each its own batch's size

        sent = time.monotonic()
        lone = tasks.sizes.delay(ledger=str(ledger), n=250)
        assert lone.get(timeout=TIMEOUT) == 1
        # handed over by the interval, not before it (a lower bound: safe on a slow machine)
        assert time.monotonic() - sent >= tasks.sizes.flush_interval
    assert [int(line.split()[0]) for line in lines(ledger)] == [100, 100, 50, 1]
    settled(broker, tasks.app)


# ---- 3: a result, and signals, per request -------------------------------------------------------
class Heard:
    """What the task signals said about the requests of ``names``: (what, task id) pairs."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.events: list[tuple[str, str]] = []
        self._receivers = [(signals.task_received, self.received),
                           (signals.task_prerun, self.prerun),
                           (signals.task_postrun, self.postrun),
                           (signals.task_success, self.success),
                           (signals.task_failure, self.failure)]

    def __enter__(self) -> Heard:
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)

    def received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request.name in self.names:
            self.events.append(("received", request.id))

    def prerun(self, sender: Any = None, task_id: str = "", **_: Any) -> None:
        if sender.name in self.names:
            self.events.append(("prerun", task_id))

    def postrun(self, sender: Any = None, task_id: str = "", state: str = "", **_: Any) -> None:
        if sender.name in self.names:
            self.events.append((f"postrun {state}", task_id))

    def success(self, sender: Any = None, **_: Any) -> None:
        if sender.name in self.names:
            self.events.append(("success", sender.request.id))

    def failure(self, sender: Any = None, task_id: str = "", **_: Any) -> None:
        if sender.name in self.names:
            self.events.append(("failure", task_id))


def test_a_result_and_signals_per_request(tasks: ModuleType, broker: Broker, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    ledger = tmp_path / "runs"
    # (tag, action on the first run, action on a retried run); six: one batch by size
    plan = [("done", "done", None), ("fail", "fail", None), ("retry", "retry", "done"),
            ("retry-unmarked", "retry", "none"), ("unmarked", "none", None),
            ("backend", "backend", None)]
    results = {tag: tasks.outcomes.delay(ledger=str(ledger), tag=tag, action=action,
                                         **({"then": then} if then else {}))
               for tag, action, then in plan}
    # a batch that raises after marking two of its four requests (one batch by size)
    exploded = [tasks.explode.delay(action=action) for action in ["done", "fail", "none", "none"]]
    caplog.set_level(logging.INFO, logger="celeriac")
    with Heard({tasks.explode.name}) as heard, worker(tasks):
        assert results["done"].get(timeout=TIMEOUT) == "done done"
        with pytest.raises(KeyError, match="fail"):  # the caller gets the marked exception
            results["fail"].get(timeout=TIMEOUT)
        assert results["retry"].get(timeout=TIMEOUT) == "done retry"
        # a retried request left unmarked on its next run ends like any unmarked one
        assert results["retry-unmarked"].get(timeout=TIMEOUT) is None
        assert results["unmarked"].get(timeout=TIMEOUT) is None
        assert results["backend"].get(timeout=TIMEOUT) == "stored backend"
        ended = [outcome(r) for r in exploded]
    assert {tag: r.state for tag, r in results.items()} == {
        "done": states.SUCCESS, "fail": states.FAILURE, "retry": states.SUCCESS,
        "retry-unmarked": states.SUCCESS, "unmarked": states.SUCCESS, "backend": states.SUCCESS}
    runs = [line.split()[1:] for line in lines(ledger)]
    assert collections.Counter(tag for tag, _ in runs) == {
        "done": 1, "fail": 1, "retry": 2, "retry-unmarked": 2, "unmarked": 1, "backend": 1}
    # the retried ones ran again in a later batch, as retries (after the whole first batch)
    assert sorted(runs[:6]) == sorted([tag, "0"] for tag, _, _ in plan)
    assert sorted(runs[6:]) == [["retry", "1"], ["retry-unmarked", "1"]]

    # the batch that raised: marked requests keep their marks, the others fail with it
    assert ended[0] == (states.SUCCESS, "kept")
    assert ended[1][0] == states.FAILURE and isinstance(ended[1][1], KeyError)
    assert ended[1][1].args == ("own failure",)
    for state, exc in ended[2:]:
        assert state == states.FAILURE and isinstance(exc, ValueError)
        assert str(exc) == "the whole batch blew up"

    # each request is seen by the signals once, as a task of its own
    done, *failed = (r.id for r in exploded)
    expected = {(what, task_id) for what in ("received", "prerun") for task_id in [done, *failed]}
    expected |= {("postrun SUCCESS", done), ("success", done)}
    expected |= {(what, task_id) for what in ("postrun FAILURE", "failure") for task_id in failed}
    counts = collections.Counter(heard.events)
    assert set(counts) == expected and set(counts.values()) == {1}, counts
    # and the log has a line for each batch
    assert f"Batch of 4 {tasks.explode.name} request(s) raised ValueError" in caplog.text
    assert f"Batch of 6 {tasks.outcomes.name} request(s) ran" in caplog.text
    settled(broker, tasks.app)


# ---- 4: revoked and expired requests ------------------------------------------------------------
def test_revoked_and_expired_requests_never_reach_the_task(tasks: ModuleType, broker: Broker,
                                                           tmp_path: Path) -> None:
    ledger = tmp_path / "seen"

    def send(task: Any, tag: str, **options: Any) -> Any:
        return task.apply_async(kwargs={"ledger": str(ledger), "tag": tag}, **options)

    before = send(tasks.seen, "before")
    revoked = send(tasks.seen, "revoked")
    tasks.app.control.revoke(revoked.id)
    expired = send(tasks.seen, "expired", expires=0.05)
    time.sleep(0.2)  # it expires while no worker runs (time must pass: not a look)
    after = send(tasks.seen, "after")
    with worker(tasks) as w:
        assert before.get(timeout=TIMEOUT) is None and after.get(timeout=TIMEOUT) is None
        with pytest.raises(TaskRevokedError):
            revoked.get(timeout=TIMEOUT)
        # revoked while it waits in its buffer: dropped at the last look, when a third request
        # fills the batch (flush_every=3; its interval is too long to matter here)
        kept = send(tasks.seen_late, "kept")
        victim = send(tasks.seen_late, "victim")
        consumer = consumer_of(w)
        wait_for(lambda: consumer.batches.held == 2, TIMEOUT,
                 message=lambda: f"{consumer.batches.held} request(s) buffered, not 2")
        tasks.app.control.revoke(victim.id)
        revokes = consumer.revokes
        assert revokes is not None
        wait_for(lambda: victim.id in revokes, TIMEOUT, message="revoke never seen")
        assert consumer.batches.held == 2
        closer = send(tasks.seen_late, "closer")
        assert kept.get(timeout=TIMEOUT) is None and closer.get(timeout=TIMEOUT) is None
        with pytest.raises(TaskRevokedError):
            victim.get(timeout=TIMEOUT)
    assert revoked.state == victim.state == states.REVOKED
    if broker.name == "amqp":
        # RabbitMQ drops the expired message itself (its per-message TTL, as with Celery): no
        # worker ever sees it, so nothing is stored for it
        assert expired.state == states.PENDING
    else:
        with pytest.raises(TaskRevokedError):
            expired.get(timeout=TIMEOUT)
        assert expired.state == states.REVOKED
    assert sorted(lines(ledger)) == ["after", "before", "closer", "kept"]
    settled(broker, tasks.app)

# ---- 5: the buffer is bounded -------------------------------------------------------------------
def test_a_deep_queue_is_held_within_the_bound(tasks: ModuleType, broker: Broker,
                                               tmp_path: Path) -> None:
    ledger = tmp_path / "bounded"
    total = 2000
    calls: list[tuple[str, Any, Any, dict[str, Any]]] = [
        (tasks.bounded.name, (), {"ledger": str(ledger)}, {}) for _ in range(total)]
    ids = [task_id for start in range(0, total, 500)
           for task_id in tasks.app.producer.send_many(calls[start:start + 500])]
    name, flush_every = tasks.bounded.name, tasks.bounded.flush_every
    samples: list[int] = []
    stop = threading.Event()

    def sample(consumer: Any) -> None:
        while not stop.is_set():  # requests held: buffered, in a batch waiting, or running
            samples.append(sum(1 for job in consumer.jobs()
                               if not isinstance(job, BatchJob) and job.task.name == name))
            time.sleep(0.002)

    # no ping first: it would queue behind the 2,000 and return once they are all done
    with worker(tasks, perform_ping_check=False) as w:
        consumer = consumer_of(w)
        sampler = threading.Thread(target=sample, args=(consumer,), daemon=True)
        sampler.start()
        try:
            wait_for(lambda: sum(int(n) for n in lines(ledger)) >= total, 60, interval=0.1,
                     message=lambda: f"{sum(int(n) for n in lines(ledger))} of {total} run")
        finally:
            stop.set()
            sampler.join(5)
        bound = (consumer.prefetch_limit + 1) * flush_every + consumer.batches.limit
    sizes = [int(n) for n in lines(ledger)]
    assert sum(sizes) == total and max(sizes) == flush_every
    assert max(samples) >= flush_every, "sampling never saw a full batch: nothing was measured"
    assert max(samples) <= bound, (max(samples), bound)
    assert bound < total // 2  # the bound means something for this queue

    def all_succeeded() -> bool:
        metas = tasks.app.backend.get_many_meta(ids)
        return all(meta["status"] == states.SUCCESS for meta in metas.values())

    wait_for(all_succeeded, TIMEOUT, interval=0.1, message="not every request succeeded")
    settled(broker, tasks.app)


# ---- 6: real worker processes -------------------------------------------------------------------
def _process_broker(name: str, tmp_path: Path) -> Iterator[Broker]:
    with open_broker(name, tmp_path) as opened:
        yield opened


@pytest.fixture
def sqlite_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from _process_broker("sqlite", tmp_path)


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from _process_broker("redis", tmp_path)


def _starts(ledger: Path) -> collections.Counter[int]:
    return collections.Counter(int(line.split()[1]) for line in lines(ledger)
                               if line.startswith("start"))


def test_prefork_worker_runs_batches_under_their_time_limit(
        sqlite_broker: Broker, task_module: Callable[..., ModuleType],
        start_worker: Callable[..., Any], tmp_path: Path) -> None:
    broker = sqlite_broker
    tasks = task_module("batch_tasks", broker.url, results=broker.results)
    ledger, limited = tmp_path / "ledger", tmp_path / "limited"
    results = [tasks.slow_batch.delay(ledger=str(ledger), n=n) for n in range(10)]
    # three: one batch by size, which sleeps past the task's time_limit=1
    cut = [tasks.limited.delay(ledger=str(limited), seconds=10) for _ in range(3)]
    proc = start_worker(app=APP, url=broker.url, env=broker.worker_env())  # default: prefork
    assert [r.get(timeout=TIMEOUT) for r in results] == list(range(10))
    assert _starts(ledger) == {n: 1 for n in range(10)}
    pids = {int(line.split()[2]) for line in lines(ledger)}
    assert proc.proc.pid not in pids, "the batches ran in the main process, not the pool"
    assert f"Batch of 4 {tasks.slow_batch.name} request(s) ran" in proc.log()

    ended = [outcome(r) for r in cut]
    for state, exc in ended:
        assert state == states.FAILURE and isinstance(exc, TimeLimitExceeded), ended
    assert [line.split()[::2] for line in lines(limited)] == [["start", "3"]]  # cut short
    settled(broker, tasks.app)
    assert proc.stop() == 0


@pytest.mark.redis
def test_a_batch_killed_mid_run_is_delivered_again(
        redis_broker: Broker, task_module: Callable[..., ModuleType],
        start_worker: Callable[..., Any], tmp_path: Path) -> None:
    broker = redis_broker
    tasks = task_module("batch_tasks", broker.url, results=broker.results)
    ledger = tmp_path / "ledger"
    vt = 2.0
    env = broker.worker_env({"BATCH_VT": str(vt)})
    # four: one batch by size; its first run sleeps long enough to be killed in the middle
    results = [tasks.slow_batch.delay(ledger=str(ledger), n=n, seconds=30) for n in range(4)]
    first = start_worker(app=APP, url=broker.url, env=env)
    wait_for(lambda: len(_starts(ledger)) == 4, TIMEOUT, message=lambda: ledger.read_text()
             if ledger.exists() else "the batch never started")
    first.kill()  # SIGKILL to the whole process group, mid-batch
    assert not any(line.startswith("end") for line in lines(ledger))
    start_worker(app=APP, url=broker.url, env=env)
    assert [r.get(timeout=vt + TIMEOUT) for r in results] == [0, 1, 2, 3]
    assert {r.state for r in results} == {states.SUCCESS}
    assert _starts(ledger) == {n: 2 for n in range(4)}  # the whole batch, delivered again
    ends = [line.split() for line in lines(ledger) if line.startswith("end")]
    assert sorted((int(n), attempt) for _, n, _, attempt in ends) == [(n, "2") for n in range(4)]
    settled(broker, tasks.app)
