"""Priorities and queue arguments on RabbitMQ (issue 12, item 4), each test on a private vhost:

- ``x-max-priority`` (``Queue(queue_arguments=...)``, or ``task_queue_max_priority`` for queues
  declared without one) with Celery's semantics on RabbitMQ: the higher number first; the
  priority from ``apply_async(priority=)``, else ``task_default_priority``;
- ``x-message-ttl`` with ``x-dead-letter-exchange``: what RabbitMQ drops from a classic queue
  lands in the dead-letter store, ``celeriac dlq`` lists and replays it;
- quorum queues: a task whose worker dies each time it runs becomes a stored ``WorkerLostError``
  after ``worker_max_deliveries`` (read from ``x-delivery-count``), listed by ``celeriac dlq``
  and replayable; RabbitMQ's own ``x-delivery-limit`` dead-letters into the store too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from typing import Any, Iterator

import pytest

from celeriac import Celery, Queue, states
from celeriac.exceptions import WorkerLostError
from celeriac.testing import start_worker
from celeriac.transport.amqp.dead_letters import DEAD_LETTER_QUEUE
from tests.conftest import REPO, private_vhost, rabbitmqctl
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.queue_argument_tasks"
#: a bound on each wait, not a timing claim
PATIENCE = 30.0
#: RabbitMQ's own dead-lettering into celeriac's store (docs/rabbitmq.md)
INTO_THE_STORE = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD_LETTER_QUEUE}


@pytest.fixture
def vhost() -> Iterator[str]:
    with private_vhost() as url:
        yield url


def _queue_info(url: str, queue: str) -> dict[str, Any]:
    """What RabbitMQ says about ``queue``: its type and arguments."""
    vhost = url.rsplit("/", 1)[1]
    rows = json.loads(rabbitmqctl("list_queues", "-p", vhost, "name", "type", "arguments",
                                  "--formatter", "json"))
    [row] = [r for r in rows if r["name"] == queue]
    arguments = row["arguments"]
    if isinstance(arguments, list):  # [[name, AMQP type, value], ...]
        arguments = {entry[0]: entry[-1] for entry in arguments}
    return {"type": row["type"], "arguments": arguments}


def _dlq(url: str, results: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": results}
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", "-A", APP, "dlq", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


# ---- priorities ----------------------------------------------------------------------------------
def _priority_app(url: str, results: str, **conf: Any) -> tuple[Celery, list[str]]:
    app = Celery(f"prio-{uuid.uuid4().hex[:6]}", broker=url, backend=results,
                 set_as_current=False)
    app.conf.update(conf)
    seen: list[str] = []
    lock = threading.Lock()

    @app.task(name="prio.record")
    def record(label: str) -> str:
        with lock:
            seen.append(label)
        return label

    return app, seen


@pytest.mark.parametrize("how", ["queue_arguments", "task_queue_max_priority"])
def test_a_priority_queue_serves_the_higher_number_first(vhost, tmp_path, how):
    results = f"sqlite:///{tmp_path / 'results.db'}"
    if how == "queue_arguments":
        conf: dict[str, Any] = {"task_queues": (
            Queue("celery", queue_arguments={"x-max-priority": 10}),)}
    else:  # Celery's task_queue_max_priority: for every queue without an x-max-priority
        conf = {"task_queue_max_priority": 10, "task_default_priority": 5,
                "task_queues": (Queue("celery", message_ttl=3600),)}
    app, seen = _priority_app(vhost, results, **conf)
    try:
        record = app.tasks["prio.record"]
        sent = []
        # published while no worker runs: low, middle, high, low, middle, high...
        for i in range(4):
            for priority in (1, None, 9):
                label = f"p{priority}-{i}"
                sent.append(record.apply_async((label,), priority=priority))
        info = _queue_info(vhost, "celery")
        assert info["arguments"].get("x-max-priority") == 10, info
        if how == "task_queue_max_priority":  # kombu's message_ttl, in seconds, sent in ms
            assert info["arguments"].get("x-message-ttl") == 3600000, info
        default = 5 if how == "task_queue_max_priority" else 0
        assert app.transport.qsize("celery") == 12
        with start_worker(app, pool="solo", prefetch_multiplier=1, perform_ping_check=False):
            for result in sent:
                result.get(timeout=PATIENCE)
        order = [label.split("-")[0] for label in seen]
        # Celery on RabbitMQ: the higher number first; within one priority, the oldest first
        expected = ["p9"] * 4 + (["pNone"] * 4 + ["p1"] * 4 if default > 1
                                 else ["p1"] * 4 + ["pNone"] * 4)
        assert order == expected, seen
        assert [label for label in seen if label.startswith("p9")] == [f"p9-{i}" for i in range(4)]
    finally:
        app.close()


def test_priorities_are_ignored_on_a_queue_without_x_max_priority(vhost, tmp_path):
    """The counter-case: on a classic queue without ``x-max-priority`` RabbitMQ keeps the
    publish order, whatever the priority."""
    app, seen = _priority_app(vhost, f"sqlite:///{tmp_path / 'results.db'}")
    try:
        record = app.tasks["prio.record"]
        sent = [record.apply_async((f"{p}-{i}",), priority=p)
                for i in range(3) for p in (1, 9)]
        assert "x-max-priority" not in _queue_info(vhost, "celery")["arguments"]
        with start_worker(app, pool="solo", prefetch_multiplier=1, perform_ping_check=False):
            for result in sent:
                result.get(timeout=PATIENCE)
        assert seen == [f"{p}-{i}" for i in range(3) for p in (1, 9)]
    finally:
        app.close()


# ---- TTL and RabbitMQ's dead-lettering from a classic queue ------------------------------------
def test_a_message_ttl_drops_into_the_store_through_the_dead_letter_exchange(
        vhost, tmp_path, task_module, start_worker, monkeypatch):
    results = f"sqlite:///{tmp_path / 'results.db'}"
    arguments = {"celery": {}, "short": {"x-message-ttl": 50, **INTO_THE_STORE}}
    monkeypatch.setenv("QUEUE_ARGUMENTS", json.dumps(arguments))
    tasks = task_module("queue_argument_tasks", vhost, results=results)
    tasks.app.conf.task_queues = tuple(Queue(n, queue_arguments=a) for n, a in arguments.items())
    app = tasks.app
    assert app.transport.dead_letters() == []  # the store exists before RabbitMQ sends to it
    expired = tasks.add.apply_async((2, 3), queue="short")
    assert _queue_info(vhost, "short") == {"type": "classic", "arguments": arguments["short"]}

    # nobody consumes 'short': RabbitMQ drops the message at its TTL, into the store
    wait_for(lambda: app.transport.qsize("short") == 0 and app.transport.dead_letters(),
             PATIENCE, interval=0.05, message="the expired message never reached the store")
    listed = _dlq(vhost, results, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert f"id={expired.id}" in line and "queue=short" in line, line
    assert "RabbitMQ dead-lettered it (expired)" in line, line
    assert expired.state == states.PENDING  # RabbitMQ stores no result, as with Celery

    # replayed to a queue a worker consumes, it runs
    replayed = _dlq(vhost, results, "replay", "--all", "-Q", "celery")
    assert replayed.returncode == 0 and "Replayed 1" in replayed.stdout, replayed.stderr
    start_worker("-P", "solo", "-Q", "celery", app=APP, url=vhost,
                 env={"CELERIAC_RESULT_BACKEND": results, "QUEUE_ARGUMENTS": json.dumps(arguments)})
    assert expired.get(timeout=PATIENCE) == 5
    assert app.transport.dead_letters() == []


# ---- quorum queues and poison messages -----------------------------------------------------------
def _run_until_exit(start_worker, url: str, results: str, arguments: dict) -> None:
    """A solo worker that runs until a task kills it (the message goes back to the queue)."""
    worker = start_worker("-P", "solo", app=APP, url=url, ready=False,
                          env={"CELERIAC_RESULT_BACKEND": results,
                               "QUEUE_ARGUMENTS": json.dumps(arguments)})
    try:
        assert worker.proc.wait(PATIENCE) == 1, worker.log()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not die:\n{worker.log()}") from None


def test_a_poison_message_on_a_quorum_queue_is_stored_listed_and_replayed(
        vhost, tmp_path, task_module, start_worker, monkeypatch):
    results = f"sqlite:///{tmp_path / 'results.db'}"
    # RabbitMQ's own limit is higher than the worker's (2, queue_argument_tasks): the worker's
    # delivery limit, read from x-delivery-count, finds the poison message first
    arguments = {"celery": {"x-queue-type": "quorum", "x-delivery-limit": 10}}
    monkeypatch.setenv("QUEUE_ARGUMENTS", json.dumps(arguments))
    tasks = task_module("queue_argument_tasks", vhost, results=results)
    tasks.app.conf.task_queues = (Queue("celery", queue_arguments=arguments["celery"]),)
    app = tasks.app
    cure = tmp_path / "cured"
    result = tasks.die_unless.delay(str(cure))
    assert _queue_info(vhost, "celery") == {"type": "quorum", "arguments": arguments["celery"]}

    for _ in range(2):  # two deliveries that never finished: the worker died each time
        _run_until_exit(start_worker, vhost, results, arguments)
    worker = start_worker("-P", "solo", app=APP, url=vhost,
                          env={"CELERIAC_RESULT_BACKEND": results,
                               "QUEUE_ARGUMENTS": json.dumps(arguments)})
    with pytest.raises(WorkerLostError) as failure:
        result.get(timeout=PATIENCE)
    assert result.state == states.FAILURE
    assert "was delivered 3 times without finishing" in str(failure.value)
    assert tasks.add.delay(2, 3).get(timeout=PATIENCE) == 5  # the worker goes on
    worker.stop()

    listed = _dlq(vhost, results, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    letter_id = line.split()[0]
    assert f"id={result.id}" in line and "queue=celery" in line, line
    assert "delivered 3 times (poison message)" in line, line
    assert letter_id in str(failure.value)  # the caller is told which letter to replay

    # fixed, replayed: a fresh first delivery (not a fourth), and it runs
    cure.touch()
    replayed = _dlq(vhost, results, "replay", letter_id)
    assert replayed.returncode == 0 and "Replayed 1" in replayed.stdout, replayed.stderr
    start_worker("-P", "solo", app=APP, url=vhost,
                 env={"CELERIAC_RESULT_BACKEND": results,
                      "QUEUE_ARGUMENTS": json.dumps(arguments)})
    # a fresh handle at each look: one keeps the first ready state it read (the FAILURE)
    wait_for(lambda: app.AsyncResult(result.id).state == states.SUCCESS, PATIENCE,
             interval=0.05, message=lambda: f"the replayed task ended "
                                            f"{app.AsyncResult(result.id).state}")
    assert app.AsyncResult(result.id).get(timeout=PATIENCE) == "survived"
    assert app.transport.dead_letters() == []


def test_rabbitmqs_delivery_limit_on_a_quorum_queue_dead_letters_into_the_store(
        vhost, tmp_path, task_module, start_worker, monkeypatch):
    results = f"sqlite:///{tmp_path / 'results.db'}"
    # RabbitMQ's limit (1 redelivery) comes before the worker's (2 deliveries)
    arguments = {"celery": {"x-queue-type": "quorum", "x-delivery-limit": 1, **INTO_THE_STORE}}
    monkeypatch.setenv("QUEUE_ARGUMENTS", json.dumps(arguments))
    tasks = task_module("queue_argument_tasks", vhost, results=results)
    tasks.app.conf.task_queues = (Queue("celery", queue_arguments=arguments["celery"]),)
    app = tasks.app
    assert app.transport.dead_letters() == []  # the store exists before RabbitMQ sends to it
    result = tasks.die_unless.delay(str(tmp_path / "never"))

    for _ in range(2):
        _run_until_exit(start_worker, vhost, results, arguments)
    wait_for(lambda: app.transport.dead_letters(), PATIENCE, interval=0.05,
             message="RabbitMQ never dead-lettered the message")
    [letter] = app.transport.dead_letters()
    assert (letter.queue, letter.message.headers["id"]) == ("celery", result.id)
    assert letter.reason == "RabbitMQ dead-lettered it (delivery_limit)"
    assert app.transport.qsize("celery") == 0
    assert result.state == states.PENDING  # RabbitMQ drops it without a result, as for Celery


def test_priorities_above_9_reach_rabbitmq_and_the_queues_x_max_priority_caps_them(
        vhost, tmp_path):
    """Celery on RabbitMQ sends ``priority=20`` as 20 (kombu clamps to 0..9 only on Redis):
    on a queue of ``x-max-priority`` 30, 20 runs before 10."""
    app, seen = _priority_app(vhost, f"sqlite:///{tmp_path / 'results.db'}", task_queues=(
        Queue("celery", queue_arguments={"x-max-priority": 30}),))
    try:
        record = app.tasks["prio.record"]
        sent = [record.apply_async((f"{p}-{i}",), priority=p)
                for i in range(3) for p in (10, 20)]
        with start_worker(app, pool="solo", prefetch_multiplier=1, perform_ping_check=False):
            for result in sent:
                result.get(timeout=PATIENCE)
        assert seen == [f"20-{i}" for i in range(3)] + [f"10-{i}" for i in range(3)]
    finally:
        app.close()


_CELERY_SENDS = """
import sys
from celery import Celery
app = Celery("oracle", broker=sys.argv[1])
app.conf.task_create_missing_queue_type = sys.argv[2]
app.conf.task_create_missing_queue_exchange_type = sys.argv[3]
app.send_task("prio.record", ("celery",), queue="made_on_first_use")
"""


@pytest.mark.parametrize("first", ["celery", "celeriac"])
@pytest.mark.parametrize(("queue_type", "exchange_type"), [("quorum", "topic"),
                                                           ("classic", "topic")])
def test_a_queue_created_on_first_use_is_declared_as_celery_declares_it(
        vhost, tmp_path, first, queue_type, exchange_type):
    """``task_create_missing_queue_type``/``_exchange_type``: a Celery 5.7 client and celeriac
    with the same settings declare the queue alike, in either order (else RabbitMQ refuses the
    second with PRECONDITION_FAILED)."""
    app, seen = _priority_app(vhost, f"sqlite:///{tmp_path / 'results.db'}",
                              task_create_missing_queue_type=queue_type,
                              task_create_missing_queue_exchange_type=exchange_type)

    def celery_sends() -> None:
        done = subprocess.run([sys.executable, "-c", _CELERY_SENDS, vhost, queue_type,
                               exchange_type], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr

    try:
        record = app.tasks["prio.record"]
        if first == "celery":
            celery_sends()
        sent = record.apply_async(("celeriac",), queue="made_on_first_use")
        if first == "celeriac":
            celery_sends()
        assert _queue_info(vhost, "made_on_first_use")["type"] == queue_type
        with start_worker(app, pool="solo", queues=["made_on_first_use"],
                          perform_ping_check=False):
            assert sent.get(timeout=PATIENCE) == "celeriac"
    finally:
        app.close()
