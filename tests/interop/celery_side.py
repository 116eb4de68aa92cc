"""The real-Celery half of the interop tests: an app module for ``celery worker`` and a tiny client.

Layer: test support. Imports ``celery`` (never celeriac). The result backend URL comes from
``INTEROP_REDIS_URL`` so each test can use its own Redis DB, the broker URL from
``INTEROP_BROKER_URL`` (a RabbitMQ vhost, or that same Redis DB when unset). Run as a module,
it is a one-shot Celery client that prints one JSON line
(``python -m tests.interop.celery_side <scenario> <queue>``), so Celery's own
``AsyncResult.get()`` is what reads the results.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery, chain, chord, group

from .shared_tasks import register

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/12")
BROKER = os.environ.get("INTEROP_BROKER_URL", URL)
TIMEOUT = 20.0

app = Celery("interop_celery", broker=BROKER, backend=URL)
app.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json",
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=True)

TASKS = register(app, "celery")
add = TASKS["add"]
echo = TASKS["echo"]


# ---- one-shot client scenarios (each prints a JSON document) -----------------------------------
def _describe_exception(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "module": type(exc).__module__, "args": list(exc.args)}


def scenario_basic(queue: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["add"] = app.send_task("interop.add", (2, 3), queue=queue).get(timeout=TIMEOUT)
    out["add_kwargs"] = app.send_task("interop.add", kwargs={"x": 4, "y": 5},
                                      queue=queue).get(timeout=TIMEOUT)
    out["echo"] = echo.apply_async((1, "two", [3]), {"k": {"v": None}},
                                   queue=queue).get(timeout=TIMEOUT)
    steps = chain(app.signature("interop.add", (1, 1), queue=queue),
                  app.signature("interop.add", (10,), queue=queue),
                  app.signature("interop.add", (100,), queue=queue))
    last = steps.apply_async()
    out["chain_last"] = last.get(timeout=TIMEOUT)
    out["chain_middle"] = last.parent.get(timeout=TIMEOUT)
    try:
        app.send_task("interop.fail", ("boom from celery client",),
                      queue=queue).get(timeout=TIMEOUT)
        out["fail"] = None
    except Exception as exc:  # what Celery rebuilt from the stored meta
        out["fail"] = _describe_exception(exc)
    return out


def scenario_whoami_chain(queue: str) -> dict[str, Any]:
    steps = chain(*(app.signature("interop.whoami", queue=queue) for _ in range(3)))
    last = steps.apply_async()
    results = [last.parent.parent, last.parent, last]
    return {"ids": [r.id for r in results], "steps": [r.get(timeout=TIMEOUT) for r in results]}


def scenario_whoami(queue: str) -> dict[str, Any]:
    result = app.send_task("interop.whoami", queue=queue)
    return {"id": result.id, "ran": result.get(timeout=TIMEOUT)}


def scenario_request_fields(queue: str) -> dict[str, Any]:
    """A task's request as the worker gives it, first run and after two retries."""
    plain = app.send_task("interop.whoami", queue=queue)
    retried = app.send_task("interop.retry_whoami", (2,), queue=queue)
    return {"id": plain.id, "ran": plain.get(timeout=TIMEOUT),
            "retried_id": retried.id, "retried": retried.get(timeout=TIMEOUT)}


def scenario_declare_default(queue: str) -> dict[str, Any]:
    """Declare the default queue (``celery``) as Celery does, then ``delay()`` onto it."""
    assert queue == app.conf.task_default_queue, queue
    with app.connection_for_write() as conn:
        app.amqp.queues[queue].bind(conn.default_channel).declare()
    return {"add": add.delay(2, 3).get(timeout=TIMEOUT),
            "echo": echo.delay(1, k="v").get(timeout=TIMEOUT)}


def scenario_countdown(queue: str) -> dict[str, Any]:
    sent_at = time.time()
    result = app.signature("interop.whoami").apply_async(countdown=1, queue=queue)
    return {"sent_at": sent_at, "ran": result.get(timeout=TIMEOUT)}


def scenario_canvas(queue: str) -> dict[str, Any]:
    """Celery builds each canvas; whoever serves ``queue`` runs it."""

    def sig(name: str, *args: Any) -> Any:
        return app.signature(name, args, queue=queue)

    out: dict[str, Any] = {}
    out["group"] = group(sig("interop.add", i, 1) for i in range(3)).apply_async().get(
        timeout=TIMEOUT)
    header = [sig("interop.add", i, i) for i in range(4)]
    out["chord"] = chord(header, sig("interop.collect")).apply_async().get(timeout=TIMEOUT)
    out["group_in_chain"] = (sig("interop.add", 1, 1)
                             | group(sig("interop.add", 10), sig("interop.add", 20))
                             | sig("interop.collect")).apply_async().get(timeout=TIMEOUT)
    out["chord_in_chain"] = (sig("interop.add", 1, 1)
                             | chord([sig("interop.add", 1), sig("interop.add", 2)],
                                     sig("interop.xsum"))
                             | sig("interop.add", 100)).apply_async().get(timeout=TIMEOUT)
    out["chain_in_group"] = group(sig("interop.add", 1, 1) | sig("interop.add", 5),
                                  sig("interop.add", 2, 2)).apply_async().get(timeout=TIMEOUT)
    out["chunks"] = add.chunks(zip(range(4), range(4)), 2).apply_async(queue=queue).get(
        timeout=TIMEOUT)
    out["starmap"] = add.starmap([(1, 2), (3, 4)]).apply_async(queue=queue).get(timeout=TIMEOUT)
    failing = chord([sig("interop.add", 1, 1), sig("interop.fail", "header boom")],
                    sig("interop.collect")).apply_async()
    # propagate=False: Celery would raise a failed header task's own error instead, if it
    # happened to see it before the body's
    stored = failing.get(timeout=TIMEOUT, propagate=False)
    out["chord_failure"] = {**_describe_exception(stored), "state": failing.state}
    return out


SCENARIOS = {"canvas": scenario_canvas, "basic": scenario_basic,
             "whoami_chain": scenario_whoami_chain, "whoami": scenario_whoami,
             "countdown": scenario_countdown, "request_fields": scenario_request_fields,
             "declare_default": scenario_declare_default}


def main(argv: list[str]) -> None:
    scenario, queue = argv
    try:
        print(json.dumps(SCENARIOS[scenario](queue)))
    finally:
        app.close()


if __name__ == "__main__":
    main(sys.argv[1:])
