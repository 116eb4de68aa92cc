"""Real Celery 5 and celeriac declare the default ``celery`` queue on RabbitMQ with identical
flags: whichever comes first, the other's declare is accepted (a different durable /
auto_delete / arguments would fail it with PRECONDITION_FAILED), and both serve it."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import rabbitmqctl
from tests.waiting import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.integration,
              pytest.mark.parametrize("broker", ["amqp"])]

TIMEOUT = 20.0
#: what Celery 5.7 alone declares for its default queue (``Queue("celery")``): a durable direct
#: exchange named like the queue, a durable classic queue without arguments, bound by its name
CELERY_ENTITIES = {
    "queue": ["celery", "true", "false", "false", "[]"],
    "exchange": ["celery", "direct", "true", "false", "false", "[]"],
    "binding": ["celery", "celery", "celery"],
}


def _rows(*args: str) -> list[list[str]]:
    out = rabbitmqctl(*args, "--no-table-headers")
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def _entities(broker_url: str) -> dict[str, Any]:
    """The ``celery`` queue, exchange and binding in the test's vhost, once all three exist (a
    worker may print ``ready`` just before its first declare)."""
    seen: list[Any] = []

    def declared() -> dict[str, Any] | None:
        seen[:] = [_celery_entities(broker_url)]
        return seen[0] if all(seen[0].values()) else None

    found = wait_for(declared, 10, interval=0.2, message=lambda: f"not all declared: {seen}")
    assert [len(v) for v in found.values()] == [1, 1, 1], found
    return {kind: rows[0] for kind, rows in found.items()}


def _celery_entities(broker_url: str) -> dict[str, list[list[str]]]:
    vhost = unquote(urlsplit(broker_url).path[1:])
    queues = [r for r in _rows("list_queues", "-p", vhost, "name", "durable", "auto_delete",
                               "exclusive", "arguments") if r[0] == "celery"]
    exchanges = [r for r in _rows("list_exchanges", "-p", vhost, "name", "type", "durable",
                                  "auto_delete", "internal", "arguments") if r[0] == "celery"]
    bindings = [r for r in _rows("list_bindings", "-p", vhost, "source_name",
                                 "destination_name", "routing_key") if r[0] == "celery"]
    return {"queue": queues, "exchange": exchanges, "binding": bindings}


def test_celeriac_worker_first_then_celery_client_and_worker_declare(workers, celery_client,
                                                                     broker_url):
    first = workers("celeriac", None)
    assert _entities(broker_url) == CELERY_ENTITIES, first.log()
    # Celery's client declares the queue explicitly, then delay()s onto it: celeriac serves it
    out = celery_client("declare_default", "celery")
    assert out == {"add": 5, "echo": {"args": [1], "kwargs": {"k": "v"}}}, first.log()
    # a Celery worker declares it again to consume it, next to the celeriac one
    second = workers("celery", None)
    assert "PRECONDITION_FAILED" not in second.log()
    assert _entities(broker_url) == CELERY_ENTITIES
    assert first.proc.poll() is None and second.proc.poll() is None


def test_celery_worker_first_then_celeriac_client_and_worker_declare(workers, celeriac_client,
                                                                     broker_url):
    first = workers("celery", None)
    assert _entities(broker_url) == CELERY_ENTITIES, first.log()
    app = celeriac_client
    # celeriac's client declares the queue explicitly, then delay()s onto it: Celery serves it
    app.transport.declare(app.conf.task_default_queue)

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        raise AssertionError("runs on the worker only")

    @app.task(name="interop.echo")
    def echo(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("runs on the worker only")

    assert add.delay(2, 3).get(timeout=TIMEOUT) == 5, first.log()
    assert echo.delay(1, k="v").get(timeout=TIMEOUT) == {"args": [1], "kwargs": {"k": "v"}}
    # a celeriac worker declares it again to consume it, next to the Celery one
    second = workers("celeriac", None)
    assert "PRECONDITION_FAILED" not in second.log()
    assert _entities(broker_url) == CELERY_ENTITIES
    assert first.proc.poll() is None and second.proc.poll() is None
