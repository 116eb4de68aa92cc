"""Metrics' pure parts and the endpoint's ports: parsing ``worker_metrics_port``, the settings'
validation, several endpoints sharing a range of ports (real sockets on loopback), the line a
missing ``prometheus_client`` gives, and an in-process worker's endpoint freeing its port."""

from __future__ import annotations

import socket
import sys
import urllib.request
from typing import Any

import pytest

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured, MissingDependency
from celeriac.metrics.prometheus import QueueExporter, parse_ports, require_prometheus, serve
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from celeriac.worker.metrics import WorkerMetrics


@pytest.mark.parametrize(("value", "ports"), [
    (9808, [9808]), ("9808", [9808]), (" 9808 - 9810 ", [9808, 9809, 9810]), (0, [0]),
    ("0", [0]),
])
def test_ports_parse(value, ports):
    assert parse_ports(value) == ports


@pytest.mark.parametrize("value", ["abc", "9810-9808", 70000, "1-70000", True, "0-5", None,
                                   "9808,9809"])
def test_bad_ports_name_the_setting_and_the_forms(value):
    with pytest.raises(ImproperlyConfigured) as info:
        parse_ports(value)
    assert f"worker_metrics_port={value!r}" in str(info.value)
    assert "9808-9815" in str(info.value)


@pytest.mark.parametrize(("setting", "value"), [
    ("worker_metrics_port", "nine"), ("worker_metrics_port", -1),
    ("worker_metrics_address", ""), ("tracing_enabled", "yes"),
])
def test_settings_are_validated_at_finalize(setting, value):
    app = Celery("metrics-validate", broker="memory://metrics-validate", set_as_current=False,
                 **{setting: value})
    with pytest.raises(ImproperlyConfigured, match=setting):
        app.finalize()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _registry():
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("probe", "a sample to read back", registry=registry).inc()
    return registry


def _two_endpoints_after_a_taken_port() -> tuple[socket.socket, int, list[Any]]:
    """A port someone else holds and two endpoints on the two ports after it (tried again on
    another port when those happen to be busy on this machine)."""
    for _ in range(20):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = taken.getsockname()[1]
        endpoints: list[Any] = []
        try:
            for _ in range(2):
                endpoints.append(serve(_registry(), [first, first + 1, first + 2], "127.0.0.1"))
        except ImproperlyConfigured:  # the ports after it were taken too: another try
            for endpoint in endpoints:
                endpoint.close()
            taken.close()
            continue
        return taken, first, endpoints
    raise AssertionError("no three consecutive ports were free in 20 tries")


def test_workers_sharing_a_range_each_take_a_free_port():
    taken, first, endpoints = _two_endpoints_after_a_taken_port()
    ports = [first, first + 1, first + 2]
    with taken:
        try:
            assert sorted(e.port for e in endpoints) == [first + 1, first + 2]
            for endpoint in endpoints:
                with urllib.request.urlopen(endpoint.url, timeout=5) as response:
                    assert "probe_total 1.0" in response.read().decode()
            with pytest.raises(ImproperlyConfigured) as info:
                serve(_registry(), ports, "127.0.0.1")
            assert f"every port of worker_metrics_port={first}-{first + 2} is in use" in str(
                info.value)
        finally:
            for endpoint in endpoints:
                endpoint.close()
    # closed: the port is free again
    again = serve(_registry(), [endpoints[0].port], "127.0.0.1")
    again.close()


def test_port_zero_takes_any_free_port_and_reports_it():
    endpoint = serve(_registry(), [0], "127.0.0.1")
    try:
        assert endpoint.port > 0 and endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
    finally:
        endpoint.close()


def test_a_missing_prometheus_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingDependency, match=r"pip install 'celeriac\[metrics\]'"):
        require_prometheus()


def test_exporter_defaults_to_the_apps_queues():
    app = Celery("metrics-queues", broker="memory://metrics-queues", set_as_current=False,
                 task_default_queue="jobs")
    assert QueueExporter(app).queues == ["jobs"]
    assert QueueExporter(app, ["a", "b"]).queues == ["a", "b"]


def test_in_process_worker_serves_and_frees_its_port():
    app = make_test_app("metrics-in-process", worker_metrics_port=0,
                        worker_metrics_address="127.0.0.1")

    @app.task(name="m.double")
    def double(x):
        return 2 * x

    try:
        with start_worker(app, pool="threads", concurrency=2) as worker:
            extension = next(e for e in worker.consumer.hooks.extensions
                             if isinstance(e, WorkerMetrics))
            url = extension.endpoint.url
            assert double.delay(21).get(timeout=10) == 42
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            assert 'celeriac_tasks_total{state="SUCCESS",task="m.double"} 1.0' in text
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)
    finally:
        dispose_test_app(app)
