"""Fixtures shared by the integration tests: the brokers the worker suites run on, and task
modules loaded against them.

One definition of "a broker for one test" (``Broker``, ``open_broker``, the ``broker`` fixture)
serves every broker-parametrised suite (worker round trips, canvas, faults, limits and revokes,
signals, stored failures):

- ``sqlite``: the embedded broker, a file of the test's own (broker and results);
- ``redis``: a real Redis on 127.0.0.1:6379, a database of the test's own, flushed before and
  after (broker and results; marked ``redis``);
- ``amqp``: a real RabbitMQ on 127.0.0.1:5672, a virtual host of the test's own (the suites use
  Celery's fixed queue names, such as ``celery``), deleted afterwards; results in a SQLite file
  of the test's own (celeriac has no result store on RabbitMQ to test here).

A missing Redis or RabbitMQ skips locally and FAILS under CI=true (``tests/conftest.py``).

A test that fails on one broker because of a celeriac bug carries
``@pytest.mark.broker_xfail("amqp", reason="...", raises=AssertionError)``: a strict xfail on that
broker only (``raises`` optional), so it turns into a failure as soon as the bug is fixed.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from tests.conftest import private_redis_db, private_vhost, require_redis
from tests.waiting import wait_for

if TYPE_CHECKING:
    import redis

    from celeriac import Celery

#: Redis databases set aside for the function-scoped worker suites, each test holding one alone
#: under a file lock (interop uses 12-15, the contract tests 9 and 10, canvas 5 and 6, settling 8
#: and 11)
WORKER_DBS = (1, 2, 3, 4)

#: the ``broker`` fixture's params: every broker-parametrised suite runs on these
BROKERS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis), "amqp"]

#: fixtures whose param names the broker (for ``broker_xfail``)
_BROKER_FIXTURES = ("broker", "canvas")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_xfail(name, reason, raises=None): strict xfail on broker `name` only")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        names = {callspec.params.get(f) for f in _BROKER_FIXTURES}
        for mark in item.iter_markers("broker_xfail"):
            if mark.args[0] in names:
                item.add_marker(pytest.mark.xfail(strict=True, reason=mark.kwargs["reason"],
                                                  raises=mark.kwargs.get("raises")))


def private_db(redis_server: str, timeout: float = 120.0):
    """A private, flushed Redis database among ``WORKER_DBS`` (see tests/conftest.py)."""
    return private_redis_db(redis_server, WORKER_DBS, timeout)


@dataclass
class Broker:
    """Where one test's broker and results live."""

    name: str  # "sqlite", "redis" or "amqp"
    url: str  # broker (and result store, unless ``results`` says otherwise)
    redis_db: redis.Redis | None = None  # Redis only: a plain client on the test's database
    results: str | None = None  # where results live when not at ``url`` (RabbitMQ: SQLite)

    @property
    def backend(self) -> str:
        """The result store's URL."""
        return self.results or self.url

    def worker_env(self, env: dict[str, str] | None = None) -> dict[str, str] | None:
        """``env`` for ``start_worker(url=broker.url, env=...)``, plus the result store's URL
        when it is not the broker's."""
        if self.results:
            return {**(env or {}), "CELERIAC_RESULT_BACKEND": self.results}
        return env


@contextlib.contextmanager
def open_broker(name: str, tmp: Path, redis_dbs: tuple[int, ...] = WORKER_DBS
                ) -> Iterator[Broker]:
    """A ``Broker`` of one test's (or module's) own; ``tmp`` holds its SQLite files."""
    sqlite_url = f"sqlite:///{tmp / 'celeriac.db'}"
    if name == "sqlite":
        yield Broker("sqlite", sqlite_url)
    elif name == "amqp":
        with private_vhost() as url:
            yield Broker("amqp", url, results=sqlite_url)
    elif name == "redis":
        import redis

        with private_redis_db(require_redis(), redis_dbs) as url, \
                redis.Redis.from_url(url) as client:
            yield Broker("redis", url, client)
    else:
        raise ValueError(f"unknown broker {name!r}")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """The test's broker: SQLite, Redis and RabbitMQ in turn (see the module's docstring).

    The SQLite file is ``sqlite_url``'s, so ``start_worker`` without ``url`` agrees with it."""
    with open_broker(request.param, tmp_path) as broker:
        yield broker


def settled(broker: Broker, app: Celery, queue: str = "celery", timeout: float = 5.0) -> None:
    """Wait until nothing is queued or in flight (the ack follows the stored result closely)."""
    db = broker.redis_db

    def nothing_left() -> bool:
        if app.transport.qsize(queue):  # ready, deferred or leased (RabbitMQ: ready, held here)
            return False
        # Redis only: kombu's list and in-flight bookkeeping, which a Celery worker reads too
        return db is None or (db.llen(queue) == 0 and db.hlen("unacked") == 0
                              and db.zcard("unacked_index") == 0)

    def left_behind() -> str:
        if db is None:
            return f"left behind: {app.transport.qsize(queue)} message(s) in {queue!r}"
        return f"left behind: {db.llen(queue)} queued, {db.hkeys('unacked')} in flight"

    wait_for(nothing_left, timeout, interval=0.05, message=left_behind)


@pytest.fixture
def task_module(monkeypatch) -> Iterator[Callable[..., ModuleType]]:
    """``task_module("app_tasks", url)``: the task module ``tests.integration.<name>``, its app
    on ``url`` (broker and result store, from the environment as a worker subprocess reads
    them; ``results=`` puts the result store elsewhere), its connections to an earlier test's
    broker closed first and its own after the test."""
    loaded: list[ModuleType] = []

    def load(name: str, url: str, results: str | None = None) -> ModuleType:
        monkeypatch.setenv("CELERIAC_BROKER_URL", url)
        monkeypatch.setenv("CELERIAC_RESULT_BACKEND", results or url)
        module = importlib.import_module(f"tests.integration.{name}")
        module.app.close()  # forget connections to an earlier test's broker
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.app.close()
