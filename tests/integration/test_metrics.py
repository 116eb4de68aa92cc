"""Prometheus metrics from a real worker (``--metrics-port``) and from ``celeriac metrics``,
scraped over HTTP and read with prometheus_client's own parser, on every broker.

The worker runs the prefork pool: its children's outcomes are counted in its main process.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celeriac import states
from tests.integration.conftest import settled
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.metrics_tasks"
OK = f"{APP}.ok"
BROKEN = f"{APP}.broken"


def endpoint_port(process, prefix: str) -> int:
    """The port a worker or exporter logged it serves metrics on (it was given 0: any)."""
    pattern = re.compile(re.escape(prefix) + r" http://[^\s/]+:(\d+)/metrics")
    process.wait_for_log(prefix)
    match = wait_for(lambda: pattern.search(process.log()), 10,
                     message=lambda: f"no metrics URL in the log:\n{process.log()}")
    return int(match.group(1))


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of the endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_worker_endpoint_counts_tasks_by_state(broker, task_module, start_worker):
    tasks = task_module("metrics_tasks", broker.url, broker.results)
    worker = start_worker("-c", "2", "-n", "metrics@test", "--metrics-port", "0", app=APP,
                          url=broker.url, env=broker.worker_env())
    port = endpoint_port(worker, "metrics@test: metrics on")

    succeeded = [tasks.ok.delay(i) for i in range(3)]
    failed = [tasks.broken.delay() for _ in range(2)]
    expired = tasks.ok.apply_async(
        (99,), expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert [r.get(timeout=20) for r in succeeded] == [0, 1, 2]
    for r in failed:
        with pytest.raises(ValueError):
            r.get(timeout=20)
    wait_for(lambda: expired.state == states.REVOKED, 20,
             message=lambda: f"the expired task is {expired.state}")
    settled(broker, tasks.app)

    # the count is made just before the message is settled: wait for it, not for a moment
    def counted():
        samples = scrape(port)
        return samples if sample(samples, "celeriac_tasks_total", task=BROKEN,
                                 state="FAILURE") == 2 and sample(
            samples, "celeriac_tasks_total", task=OK, state="SUCCESS") == 3 else None

    samples = wait_for(counted, 10, interval=0.1, message=lambda: f"counts: {scrape(port)}")
    assert sample(samples, "celeriac_tasks_total", task=OK, state="REVOKED") == 1
    assert sample(samples, "celeriac_tasks_total", task=OK, state="FAILURE") is None
    # runtimes: one observation per run, the expired task never ran
    assert sample(samples, "celeriac_task_runtime_seconds_count", task=OK) == 3
    assert sample(samples, "celeriac_task_runtime_seconds_count", task=BROKEN) == 2
    assert sample(samples, "celeriac_task_runtime_seconds_bucket", task=OK, le="+Inf") == 3
    assert sample(samples, "celeriac_task_runtime_seconds_sum", task=OK) >= 0
    # liveness
    host = {"hostname": "metrics@test"}
    assert sample(samples, "celeriac_worker_up", **host) == 1
    assert sample(samples, "celeriac_worker_tasks_processed_total", **host) == 5
    assert sample(samples, "celeriac_worker_tasks_active", **host) == 0
    assert sample(samples, "celeriac_worker_concurrency", **host) == 2
    heartbeat = sample(samples, "celeriac_worker_last_heartbeat_timestamp_seconds", **host)
    assert heartbeat is not None and abs(time.time() - heartbeat) < 30
    assert sample(samples, "celeriac_queue_length", queue="celery") == 0

    assert worker.stop() == 0
    with pytest.raises(OSError):  # the port was freed with the worker
        scrape(port)


def test_exporter_measures_queues_without_a_worker(broker, task_module, start_worker):
    tasks = task_module("metrics_tasks", broker.url, broker.results)
    for i in range(3):
        tasks.ok.apply_async((i,), queue="metrics-waiting")
    exporter = start_worker("--port", "0", "-Q", "metrics-waiting", command="metrics", app=APP,
                            url=broker.url, env=broker.worker_env(), ready=False)
    port = endpoint_port(exporter, "celeriac metrics: serving")
    samples = scrape(port)
    assert sample(samples, "celeriac_queue_length", queue="metrics-waiting") == 3
    assert exporter.stop() == 0


def test_a_taken_port_stops_the_worker_in_one_line(sqlite_url, start_worker):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker("--metrics-port", str(port), app=APP, ready=False)
        assert worker.proc.wait(20) != 0
    log = worker.log()
    assert f"worker_metrics_port={port} is in use" in log, log
    assert "give each worker its own port" in log
    assert "Traceback" not in log
