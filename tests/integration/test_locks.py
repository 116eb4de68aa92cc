"""Task locks end to end (issue 15, item 4), on every broker (the ``broker`` fixture: SQLite,
Redis, RabbitMQ with results, and so locks, in SQLite): ``lock=`` lets at most one call run per
key across workers and defers the others, which run later; a SIGKILLed holder's lock expires and
the next call runs; ``unique=`` never queues a second call while one waits.

The tasks are tests/integration/lock_tasks.py; which call ran when is read from a ledger file the
tasks append to, outside the system under test.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from celeriac.testing import start_worker as start_embedded
from tests.integration.conftest import Broker, settled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.lock_tasks"
TIMEOUT = 30.0


@pytest.fixture
def tasks(broker: Broker, task_module: Callable[..., ModuleType]) -> ModuleType:
    return task_module("lock_tasks", broker.url, results=broker.results)


def events(ledger: Path) -> list[list[str]]:
    return [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []


def overlaps(ledger: Path) -> list[str]:
    """Calls that started while another call with the same key was still running."""
    running: dict[str, str] = {}
    found = []
    for kind, key, task_id, _pid in events(ledger):
        if kind == "start":
            if key in running:
                found.append(f"{task_id} started during {running[key]} ({key})")
            running[key] = task_id
        elif running.get(key) == task_id:
            del running[key]
    return found


def test_one_call_runs_per_key_across_workers_and_the_rest_run_later(
        tasks: ModuleType, broker: Broker, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = tmp_path / "ledger"
    caplog.set_level(logging.INFO, logger="celeriac.worker")
    calls = ([tasks.exclusive.delay("a", str(ledger)) for _ in range(8)]
             + [tasks.exclusive.delay("b", str(ledger)) for _ in range(2)])
    with start_embedded(tasks.app, pool="threads", concurrency=2, shutdown_timeout=20), \
            start_embedded(tasks.app, pool="threads", concurrency=2, shutdown_timeout=20):
        assert [r.get(timeout=TIMEOUT) for r in calls] == ["a"] * 8 + ["b"] * 2
    assert overlaps(ledger) == []
    starts = collections.Counter(key for kind, key, *_ in events(ledger) if kind == "start")
    assert starts == {"a": 8, "b": 2}, "each call ran once"
    assert any("lock 'job:a' is held" in r.getMessage() for r in caplog.records), \
        "a worker found the key held and deferred the call"
    assert tasks.app.lock("job:a").owner() is None, "released when the last call ended"
    settled(broker, tasks.app)


def test_a_killed_holders_lock_expires_and_the_next_call_runs(
        tasks: ModuleType, broker: Broker, tmp_path: Path,
        start_worker: Callable[..., Any]) -> None:
    ledger = tmp_path / "ledger"
    env = broker.worker_env({"LOCK_EXPIRE": "2", "LOCK_VT": "2"})
    first = start_worker("-P", "threads", "-c", "2", app=APP, url=broker.url, env=env)
    holder = tasks.exclusive.delay("k", str(ledger), seconds=300)
    wait_for(lambda: events(ledger), TIMEOUT, message="the holder never started")
    second = start_worker("-P", "threads", "-c", "2", app=APP, url=broker.url, env=env)
    after = tasks.exclusive.delay("k", str(ledger), seconds=0)
    wait_for(lambda: "lock 'job:k' is held" in first.log() + second.log(), TIMEOUT,
             message=lambda: "the next call was never deferred:\n" + second.log())
    assert [e[2] for e in events(ledger)] == [holder.id], "it waits while the holder lives"
    first.kill()  # SIGKILL, mid-run: nothing releases the lock, it expires after 2 s
    assert after.get(timeout=TIMEOUT) == "k"
    ran = [e for e in events(ledger) if e[2] == after.id]
    assert [e[0] for e in ran] == ["start", "end"]
    assert int(ran[0][3]) == second.proc.pid, "the surviving worker ran it"
    assert not any(e[0] == "end" and e[2] == holder.id for e in events(ledger))
    assert second.stop() == 0


def test_unique_queues_one_call_until_it_starts(tasks: ModuleType, broker: Broker,
                                                tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    first = tasks.report.delay("mon", str(ledger))
    duplicates = [tasks.report.delay("mon", str(ledger)) for _ in range(3)]
    other = tasks.report.delay("tue", str(ledger))
    assert {d.id for d in duplicates} == {first.id}
    assert [d.already_queued for d in duplicates] == [True] * 3
    assert not first.already_queued and not other.already_queued and other.id != first.id
    with start_embedded(tasks.app, pool="threads", concurrency=2, shutdown_timeout=20):
        assert [first.get(timeout=TIMEOUT), other.get(timeout=TIMEOUT)] == ["mon", "tue"]
        again = tasks.report.delay("mon", str(ledger))  # the first one started: sent anew
        assert not again.already_queued and again.id != first.id
        assert again.get(timeout=TIMEOUT) == "mon"
    assert sorted(ledger.read_text().splitlines()) == ["run mon", "run mon", "run tue"]
    settled(broker, tasks.app)
