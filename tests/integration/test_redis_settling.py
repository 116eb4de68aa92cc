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
from typing import Iterator

import pytest
import redis

from celeriac import Celery
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
    if shutil.which("redis-server") is None:
        require_redis()  # fails under CI=true, skips locally
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory", "1",
         "--maxmemory-policy", "noeviction"],
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
