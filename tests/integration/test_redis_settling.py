"""How a worker settles tasks on Redis when results and messages take different paths.

Inline settling (a result and the ack after it in one round trip) only applies when the broker
and the result store share a connection; these tests put them in two databases of one server,
the usual Celery layout, and check every pool still stores each result before (or without)
acking, and that a result store refusing writes is never papered over.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from celeriac import Celery
from celeriac.protocol.message import Message
from celeriac.transport.base import Outgoing
from tests.conftest import WorkerProcess, private_redis_db, require_redis
from tests.integration.test_redis_restart import _free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

#: two databases, one for the queue and one for the results (no other test module uses them)
SPLIT_DBS = ((8,), (11,))


@pytest.fixture
def split_urls() -> Iterator[tuple[str, str]]:
    server = require_redis()
    with contextlib.ExitStack() as stack:
        urls = tuple(stack.enter_context(private_redis_db(server, dbs)) for dbs in SPLIT_DBS)
        yield urls  # type: ignore[misc]


@pytest.mark.parametrize("pool", ["solo", "threads", "prefork"])
def test_results_in_another_database_are_stored_by_every_pool(split_urls, tmp_path, pool):
    from tests.integration import fault_tasks

    broker, results = split_urls
    app = fault_tasks.app
    app.conf.update(broker_url=broker, result_backend=results)
    app.close()
    ledger = tmp_path / "ledger"
    worker = WorkerProcess("tests.integration.fault_tasks", broker, tmp_path / "worker.log",
                           "-P", pool, "-c", "2",
                           env={"CELERIAC_RESULT_BACKEND": results})
    try:
        worker.wait_ready()
        early = [fault_tasks.work.delay(str(ledger), n) for n in range(20)]
        late = [fault_tasks.late_work.delay(str(ledger), n) for n in range(20, 40)]
        assert [r.get(timeout=20) for r in early + late] == list(range(40)), worker.log()
        with redis.Redis.from_url(broker) as queue:
            # every message acked, after its result
            wait_for(lambda: not queue.hlen("unacked"), 5, interval=0.05,
                     message=lambda: repr(queue.hgetall("unacked")))
    finally:
        worker.stop()
        app.close()
        app.conf.update(broker_url=None, result_backend=None)


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that refuses writes once full (maxmemory, noeviction)."""
    yield from _private_redis(tmp_path, "--maxmemory", "1", "--maxmemory-policy", "noeviction")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server a test may reconfigure (fill up, flush its scripts)."""
    yield from _private_redis(tmp_path)


def _private_redis(tmp_path: Path, *options: str) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        require_redis()  # fails under CI=true, skips locally
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        def up() -> bool:
            try:
                with redis.Redis.from_url(url) as client:
                    return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 10, interval=0.05, message="the private redis-server did not start")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def test_a_store_that_refuses_a_write_raises_instead_of_dropping_it(full_redis):
    app = Celery("full", broker="memory://full-store", backend=full_redis, set_as_current=False)
    try:
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            app.backend.mark_as_done("t1", 42)
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            app.backend.set_chord_size("g1", 3)
    finally:
        app.close()


def _batch_held(url: str, ids: list[str]) -> tuple[Celery, list[Any], list[Any]]:
    """An app on ``url`` holding a fetched message per id, and a success's write for each."""
    app = Celery("batch-acks", broker=url, backend=url, set_as_current=False)
    transport = app.transport
    transport.publish([Outgoing("q", Message(b"{}", headers={"id": task_id, "task": "t"}))
                       for task_id in ids])
    held = transport.fetch(["q"], len(ids), 1.0)
    writes = [app.backend.result_write(task_id, n, "SUCCESS") for n, task_id in enumerate(ids)]
    return app, held, writes


def test_a_batch_ack_is_discarded_with_writes_the_server_refuses(own_redis):
    # a batch's results and acks go in one transaction (worker/settlement.py): a result the
    # server refuses never leaves its message acked without it
    ids = ["refused-0", "refused-1"]
    app, held, writes = _batch_held(own_redis, ids)
    client = redis.Redis.from_url(own_redis)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        app.transport.ack_with_writes_later(held, lambda: app.backend.stage_results(writes))
        app.transport.flush()
        client.config_set("maxmemory", 0)
        assert client.hlen("unacked") == 2  # still leased: delivered again when it runs out
        assert client.exists(*(app.backend.task_key(t) for t in ids)) == 0
    finally:
        client.close()
        app.close()


def test_a_batch_ack_whose_script_the_server_forgot_is_sent_again(own_redis):
    # inside MULTI/EXEC a missing script fails only the ack, after the writes are stored
    ids = ["forgot-0", "forgot-1"]
    app, held, writes = _batch_held(own_redis, ids)
    client = redis.Redis.from_url(own_redis)
    try:
        client.script_flush()
        app.transport.ack_with_writes_later(held, lambda: app.backend.stage_results(writes))
        app.transport.flush()
        assert client.hlen("unacked") == 0
        assert [app.backend.get_task_meta(t)["result"] for t in ids] == [0, 1]
    finally:
        client.close()
        app.close()
