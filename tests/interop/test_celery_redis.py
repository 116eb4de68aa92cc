"""Real Celery 5 and celeriac, clients and workers, talking to each other through one broker.

Every test runs twice (the ``broker`` fixture of ``conftest.py``): through one Redis DB, and
through RabbitMQ (a virtual host of the test's own) with the results in that Redis DB.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from tests.conftest import rabbitmqctl
from tests.waiting import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.integration]

TIMEOUT = 20.0


def _step(task: str, args: list[Any], queue: str, task_id: str) -> dict[str, Any]:
    """A chain element as Celery embeds it (§1.5): the pre-assigned id sits in options."""
    return {"task": task, "args": args, "kwargs": {},
            "options": {"task_id": task_id, "queue": queue},
            "subtask_type": None, "immutable": False}


def _send_chain(app: Any, queue: str, steps: list[tuple[str, list[Any]]]) -> list[str]:
    """Send ``steps`` as one chain (embed.chain, reversed, §1.6); returns every step's id."""
    ids = [str(uuid.uuid4()) for _ in steps]
    rest = [_step(name, args, queue, ids[i]) for i, (name, args) in enumerate(steps) if i]
    name, args = steps[0]
    app.send_task(name, args, queue=queue, task_id=ids[0], chain=list(reversed(rest)))
    return ids


def _assert_chain_lineage(steps: list[dict[str, Any]], ids: list[str], impl: str) -> None:
    assert [s["impl"] for s in steps] == [impl] * len(ids)
    assert [s["id"] for s in steps] == ids
    assert [s["root_id"] for s in steps] == [ids[0]] * len(ids)
    assert [s["parent_id"] for s in steps] == [None, *ids[:-1]]


# ---- (a) Celery client -> celeriac worker --------------------------------------------------------
def test_celery_client_gets_values_and_exception_from_celeriac_worker(workers, celery_client,
                                                                      queue_name):
    worker = workers("celeriac", queue_name)
    out = celery_client("basic", queue_name)
    assert out["add"] == 5, worker.log()
    assert out["add_kwargs"] == 9
    assert out["echo"] == {"args": [1, "two", [3]], "kwargs": {"k": {"v": None}}}
    assert out["chain_middle"] == 12
    assert out["chain_last"] == 112
    assert out["fail"] == {"type": "ValueError", "module": "builtins",
                           "args": ["boom from celery client"]}, worker.log()


# ---- (b) celeriac client -> Celery worker --------------------------------------------------------
def test_celeriac_client_gets_values_and_exception_from_celery_worker(workers, celeriac_client,
                                                                      queue_name):
    worker = workers("celery", queue_name)
    app = celeriac_client
    assert app.send_task("interop.add", (2, 3), queue=queue_name).get(timeout=TIMEOUT) == 5, \
        worker.log()
    assert app.send_task("interop.add", kwargs={"x": 4, "y": 5},
                         queue=queue_name).get(timeout=TIMEOUT) == 9
    echoed = app.send_task("interop.echo", (1, "two", [3]), {"k": {"v": None}}, queue=queue_name)
    assert echoed.get(timeout=TIMEOUT) == {"args": [1, "two", [3]], "kwargs": {"k": {"v": None}}}
    ids = _send_chain(app, queue_name, [("interop.add", [1, 1]), ("interop.add", [10]),
                                        ("interop.add", [100])])
    assert [app.AsyncResult(i).get(timeout=TIMEOUT) for i in ids] == [2, 12, 112], worker.log()
    failing = app.send_task("interop.fail", ("boom from celeriac client",), queue=queue_name)
    with pytest.raises(ValueError) as caught:
        failing.get(timeout=TIMEOUT)
    assert type(caught.value) is ValueError
    assert caught.value.args == ("boom from celeriac client",)
    assert failing.state == "FAILURE"
    assert "boom from celeriac client" in (failing.traceback or ""), worker.log()


# ---- (c) request fields: id / root_id / parent_id along a chain ---------------------------------
def test_celeriac_worker_sees_celery_chain_lineage(workers, celery_client, queue_name):
    worker = workers("celeriac", queue_name)
    out = celery_client("whoami_chain", queue_name)
    _assert_chain_lineage(out["steps"], out["ids"], "celeriac")
    assert out["steps"][0]["hostname"].startswith("celeriac-interop@"), worker.log()


def test_celery_worker_sees_celeriac_chain_lineage(workers, celeriac_client, queue_name):
    worker = workers("celery", queue_name)
    app = celeriac_client
    ids = _send_chain(app, queue_name, [("interop.whoami", [])] * 3)
    steps = [app.AsyncResult(i).get(timeout=TIMEOUT) for i in ids]
    _assert_chain_lineage(steps, ids, "celery")
    assert steps[0]["hostname"].startswith("celery-interop@"), worker.log()


# ---- (c') request fields of a single task and of a retried one ---------------------------------
def _assert_request_fields(out: dict[str, Any], queue: str, impl: str) -> None:
    """What Celery 5.7's own worker gives a task sent by ``send_task(queue=...)``: the id is its
    own root, no parent, the default exchange with the queue as routing key (a direct publish),
    and a retry keeps all of it but counts ``retries`` and names the task itself as its parent
    (Celery re-sends it from within the task)."""
    ran, retried = out["ran"], out["retried"]
    host = f"{impl}-interop@"
    assert ran["impl"] == impl
    assert (ran["id"], ran["root_id"], ran["parent_id"]) == (out["id"], out["id"], None)
    assert ran["hostname"].startswith(host), ran
    assert ran["retries"] == 0
    assert ran["delivery_info"] == {"exchange": "", "routing_key": queue}
    assert retried["impl"] == impl
    assert (retried["id"], retried["root_id"], retried["parent_id"]) == (
        out["retried_id"], out["retried_id"], out["retried_id"])
    assert retried["hostname"].startswith(host), retried
    assert retried["retries"] == 2
    assert retried["delivery_info"] == {"exchange": "", "routing_key": queue}


def test_celeriac_worker_gives_request_fields_of_celery_messages(workers, celery_client,
                                                                 queue_name):
    worker = workers("celeriac", queue_name)
    out = celery_client("request_fields", queue_name)
    _assert_request_fields(out, queue_name, "celeriac")
    assert worker.proc.poll() is None


def test_celery_worker_gives_request_fields_of_celeriac_messages(workers, celeriac_client,
                                                                 queue_name):
    worker = workers("celery", queue_name)
    app = celeriac_client
    plain = app.send_task("interop.whoami", queue=queue_name)
    retried = app.send_task("interop.retry_whoami", (2,), queue=queue_name)
    out = {"id": plain.id, "ran": plain.get(timeout=TIMEOUT),
           "retried_id": retried.id, "retried": retried.get(timeout=TIMEOUT)}
    _assert_request_fields(out, queue_name, "celery")
    assert worker.proc.poll() is None


# ---- (d) both workers on one Redis DB / vhost, each on its own queue ----------------------------
def test_celery_and_celeriac_workers_share_a_db_without_crosstalk(workers, celeriac_client,
                                                                  broker, broker_url,
                                                                  interop_url):
    queues = {"celery": f"interop-{uuid.uuid4().hex[:8]}",
              "celeriac": f"interop-{uuid.uuid4().hex[:8]}"}
    for kind, queue in queues.items():
        workers(kind, queue)
    app = celeriac_client
    sent = [(kind, app.send_task("interop.whoami", queue=queue))
            for _ in range(4) for kind, queue in queues.items()]
    for kind, result in sent:
        ran = result.get(timeout=TIMEOUT)
        assert (ran["impl"], ran["id"]) == (kind, result.id)
    if broker == "redis":
        _assert_all_acked(interop_url, list(queues.values()))
    else:
        _assert_all_acked_amqp(broker_url, list(queues.values()))


def _assert_all_acked_amqp(url: str, queues: list[str]) -> None:
    """RabbitMQ holds no message of either queue, ready or unacked."""
    from urllib.parse import unquote, urlsplit

    vhost = unquote(urlsplit(url).path[1:])

    def counts() -> dict[str, tuple[str, str]]:
        lines = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name",
                            "messages_ready", "messages_unacknowledged").splitlines()
        rows = (line.split() for line in lines if line.strip())
        return {row[0]: (row[1], row[2]) for row in rows if row[0] in queues}

    seen: dict[str, tuple[str, str]] = {}

    def settled() -> bool:
        seen.clear()
        seen.update(counts())
        return sorted(seen) == sorted(queues) and all(v == ("0", "0") for v in seen.values())

    wait_for(settled, 10, interval=0.2, message=lambda: repr(seen))


def _assert_all_acked(url: str, queues: list[str]) -> None:
    """Both sides acked in kombu's shared ``unacked`` bookkeeping and left nothing queued."""
    client = redis.Redis.from_url(url)
    try:
        wait_for(lambda: not (client.hlen("unacked") or client.zcard("unacked_index")), 5,
                 interval=0.05, message=lambda: repr(client.hgetall("unacked")))
        assert [client.llen(q) for q in queues] == [0, 0]
    finally:
        client.close()


# ---- (e) countdown set by a Celery client, honoured by a celeriac worker -------------------------
def test_celery_countdown_runs_on_celeriac_worker_after_one_second(workers, celery_client,
                                                                  queue_name):
    workers("celeriac", queue_name)
    out = celery_client("countdown", queue_name)
    assert out["ran"]["impl"] == "celeriac"
    # eta = client's now (taken after sent_at) + 1 s; allow only float/ISO rounding below that
    assert out["ran"]["at"] - out["sent_at"] >= 0.999


# ---- (f) countdown set by a celeriac client, honoured by a Celery worker -------------------------
def test_celeriac_countdown_runs_on_celery_worker_after_one_second(workers, celeriac_client,
                                                                  queue_name):
    workers("celery", queue_name)
    sent_at = time.time()
    ran = celeriac_client.send_task("interop.whoami", queue=queue_name, countdown=1).get(timeout=3)
    assert ran["impl"] == "celery"
    assert ran["at"] - sent_at >= 0.999


# ---- (g) canvases: built by one side, run by the other ------------------------------------------
CANVAS_RESULTS = {
    "group": [1, 2, 3],
    "chord": [0, 2, 4, 6],
    "group_in_chain": [12, 22],
    "chord_in_chain": 107,
    "chain_in_group": [7, 4],
    "chunks": [[0, 2], [4, 6]],
    "starmap": [3, 7],
}


def test_celery_canvases_run_on_a_celeriac_worker(workers, celery_client, queue_name):
    worker = workers("celeriac", queue_name)
    out = celery_client("canvas", queue_name)
    failure = out.pop("chord_failure")
    assert out == CANVAS_RESULTS, worker.log()
    # the body's stored failure, as Celery's AsyncResult rebuilt it
    assert (failure["type"], failure["module"], failure["state"]) == (
        "ChordError", "celery.exceptions", "FAILURE")
    assert "header boom" in failure["args"][0], worker.log()


def test_celeriac_canvases_run_on_a_celery_worker(workers, celeriac_client, queue_name):
    from celeriac import chord, chunks, group
    from celeriac.exceptions import ChordError

    worker = workers("celery", queue_name)
    app = celeriac_client

    def sig(name: str, *args: Any) -> Any:
        return app.signature(name, args, queue=queue_name)

    out = {
        "group": group(sig("interop.add", i, 1) for i in range(3)).apply_async(),
        "chord": chord([sig("interop.add", i, i) for i in range(4)],
                       sig("interop.collect")).apply_async(),
        "group_in_chain": (sig("interop.add", 1, 1)
                           | group(sig("interop.add", 10), sig("interop.add", 20))
                           | sig("interop.collect")).apply_async(),
        "chord_in_chain": (sig("interop.add", 1, 1)
                           | chord([sig("interop.add", 1), sig("interop.add", 2)],
                                   sig("interop.xsum"))
                           | sig("interop.add", 100)).apply_async(),
        "chain_in_group": group(sig("interop.add", 1, 1) | sig("interop.add", 5),
                                sig("interop.add", 2, 2)).apply_async(),
        "chunks": chunks(app.signature("interop.add"), zip(range(4), range(4)), 2).apply_async(
            queue=queue_name),
        "starmap": app.signature("interop.add").set(queue=queue_name),
    }
    from celeriac.canvas import xstarmap

    out["starmap"] = xstarmap(out["starmap"], [(1, 2), (3, 4)], app=app).apply_async(
        queue=queue_name)
    assert {k: r.get(timeout=TIMEOUT) for k, r in out.items()} == CANVAS_RESULTS, worker.log()
    failing = chord([sig("interop.add", 1, 1), sig("interop.fail", "header boom")],
                    sig("interop.collect")).apply_async()
    stored = failing.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(stored, ChordError) and "header boom" in str(stored), worker.log()
    with pytest.raises(ChordError, match="header boom"):
        failing.get(timeout=TIMEOUT)
