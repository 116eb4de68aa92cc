"""The rpc:// result backend on a real RabbitMQ, checked against a real Celery 5 worker and client.

Every test runs in a virtual host of this module's own (created with ``rabbitmqctl``, deleted
after). Real Celery runs only in subprocesses (a module written to ``tmp_path``). The celeriac
"worker" half runs a task message through ``celeriac.worker.request.run_message``, the path a
worker's pool runs, in this process: the task messages are taken from RabbitMQ with py-amqp (or
built by celeriac's producer), the replies travel through RabbitMQ as they would from a worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import amqp
import pytest

import celeriac
from celeriac import states
from celeriac.backends.rpc import RPCBackend, queue_arguments, reply_properties
from celeriac.protocol.message import Message
from celeriac.result import ResultSet
from celeriac.task import Context
from celeriac.worker.request import run_message
from tests.conftest import RABBITMQ_HOST as HOST
from tests.conftest import RABBITMQ_PORT as PORT
from tests.conftest import WorkerProcess, private_vhost, rabbitmqctl
from tests.waiting import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.integration]

TIMEOUT = 30.0

CELERY_SIDE = '''
"""Real Celery 5 with broker amqp (RPC_BROKER) and backend rpc://."""
import json
import os
import sys

from celery import Celery

app = Celery("rpc_celery_side", broker=os.environ["RPC_BROKER"], backend="rpc://")
app.conf.update(task_track_started=True, broker_connection_retry_on_startup=True,
                accept_content=["json"], result_accept_content=["json"])


@app.task(name="rpc.add")
def add(x, y):
    return x + y


@app.task(name="rpc.fail")
def fail(msg):
    raise ValueError(msg)


@app.task(name="rpc.retry_once", bind=True, max_retries=1)
def retry_once(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=KeyError("again"))
    return "done"


@app.task(name="rpc.progress", bind=True)
def progress(self):
    self.update_state(state="PROGRESS", meta={"done": 1})
    return "finished"


if __name__ == "__main__":
    mode, queue = sys.argv[1], sys.argv[2]
    if mode == "send":  # send tasks whose replies go to argv[3]; print their ids and our oid
        reply_to = sys.argv[3]
        ids = {name: app.send_task(f"rpc.{name}", args, queue=queue, reply_to=reply_to).id
               for name, args in (("add", (2, 3)), ("fail", ("boom",)), ("retry_once", ()),
                                  ("progress", ()))}
        print(json.dumps({"oid": app.thread_oid, **ids}), flush=True)
    elif mode == "get":  # a Celery client reading the replies to what it sent
        r_add = add.apply_async((2, 3), queue=queue)
        r_fail = fail.apply_async(("boom from celeriac",), queue=queue)
        print(json.dumps({"oid": app.thread_oid, "add": r_add.id, "fail": r_fail.id}),
              flush=True)
        out = {"add": r_add.get(timeout=60), "add_state": r_add.state}
        try:
            r_fail.get(timeout=60)
        except Exception as exc:
            out["fail"] = [type(exc).__name__, type(exc).__module__, list(exc.args)]
            out["fail_state"] = r_fail.state
            out["fail_traceback"] = r_fail.traceback
        print(json.dumps(out), flush=True)
'''


# ---- RabbitMQ: one virtual host for this module -------------------------------------------------
@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    with private_vhost() as url:
        yield url


@pytest.fixture(scope="module")
def vhost(broker_url: str) -> str:
    return broker_url.rsplit("/", 1)[1]


@pytest.fixture
def channel(vhost: str) -> Iterator[Any]:
    """A raw py-amqp channel on the test's virtual host (the test's own eyes on the broker)."""
    conn = amqp.Connection(f"{HOST}:{PORT}", userid="guest", password="guest",
                           virtual_host=vhost)
    conn.connect()
    try:
        yield conn.channel()
    finally:
        conn.close()


def _queues(vhost: str) -> dict[str, list[str]]:
    """name -> [durable, auto_delete, exclusive, arguments] as rabbitmqctl lists them."""
    out = rabbitmqctl("list_queues", "--no-table-headers", "-p", vhost, "name", "durable",
                      "auto_delete", "exclusive", "arguments")
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {row[0]: row[1:] for row in rows}


@pytest.fixture
def make_app(broker_url: str) -> Iterator[Callable[..., Any]]:
    """celeriac apps with broker amqp:// (this vhost) and backend rpc://, closed after."""
    apps: list[Any] = []

    def make(**conf: Any) -> Any:
        app = celeriac.Celery("rpc-test", broker=broker_url, backend="rpc://")
        app.conf.update(accept_content=["json"], result_accept_content=["json"], **conf)

        @app.task(name="rpc.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="rpc.fail")
        def fail(msg: str) -> None:
            raise ValueError(msg)

        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


# ---- real Celery in subprocesses ----------------------------------------------------------------
@pytest.fixture
def celery_side(tmp_path: Path, broker_url: str) -> Callable[..., dict[str, Any]]:
    """Run ``celery_side.py <mode> <queue> [...]`` (real Celery) to the end; its JSON line."""
    (tmp_path / "rpc_celery_side.py").write_text(textwrap.dedent(CELERY_SIDE))

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "rpc_celery_side.py", *args], cwd=tmp_path,
                              env=_celery_env(broker_url), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    return run


def _celery_env(broker_url: str) -> dict[str, str]:
    return {**os.environ, "RPC_BROKER": broker_url, "PYTHONUNBUFFERED": "1"}


class CeleryWorker(WorkerProcess):
    """``celery -A rpc_celery_side worker -P solo`` on one queue, its log captured."""

    def __init__(self, directory: Path, broker_url: str, queue: str) -> None:  # noqa: D107
        self.logfile = directory / f"celery-worker-{queue}.log"
        self._log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "rpc_celery_side", "worker", "-P", "solo",
             "-Q", queue, "-n", f"rpc-{queue}@%h", "-l", "INFO", "--without-heartbeat",
             "--without-gossip", "--without-mingle"],
            cwd=directory, env=_celery_env(broker_url), stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def celery_worker(tmp_path: Path, broker_url: str,
                  celery_side: Any) -> Iterator[Callable[[str], CeleryWorker]]:
    started: list[CeleryWorker] = []

    def start(queue: str) -> CeleryWorker:
        worker = CeleryWorker(tmp_path, broker_url, queue)
        started.append(worker)
        worker.wait_ready(timeout=60)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _queue_name() -> str:
    return f"rpc-{uuid.uuid4().hex[:8]}"


def _declare_like_reply_queue(channel: Any, name: str) -> None:
    channel.queue_declare(name, durable=True, auto_delete=True, exclusive=False,
                          arguments=queue_arguments(86400.0))


def _drain(channel: Any, queue: str, count: int) -> list[Any]:
    """``count`` messages from ``queue`` (waiting for them to arrive), acknowledged."""
    got: list[Any] = []

    def more() -> bool:
        while len(got) < count:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                return False
            got.append(message)
        return True

    wait_for(more, TIMEOUT, interval=0.05,
             message=lambda: f"{len(got)} of {count} messages arrived on {queue}")
    assert channel.basic_get(queue, no_ack=True) is None  # nothing more than expected
    return got


def _as_celeriac_message(raw: Any) -> Message:
    """A task message taken from RabbitMQ as celeriac's worker receives it."""
    props = dict(raw.properties)
    headers = dict(props.pop("application_headers", None) or {})
    body = raw.body.encode(props["content_encoding"]) if isinstance(raw.body, str) else raw.body
    return Message(bytes(body), content_type=props.pop("content_type"),
                   content_encoding=props.pop("content_encoding"), headers=headers,
                   properties=props)


# ---- a Celery worker publishes, celeriac reads --------------------------------------------------
def test_celeriac_reads_a_celery_workers_replies(make_app, celery_worker, celery_side):
    queue = _queue_name()
    worker = celery_worker(queue)
    app = make_app()
    backend = app.backend
    assert isinstance(backend, RPCBackend) and backend.persistent is False
    backend.prepare_replies()  # the queue exists before the tasks are sent
    ids = celery_side("send", queue, backend.reply_to)

    assert app.AsyncResult(ids["add"]).get(timeout=TIMEOUT) == 5, worker.log()
    failed = app.AsyncResult(ids["fail"])
    with pytest.raises(ValueError, match="^boom$"):
        failed.get(timeout=TIMEOUT)
    assert failed.state == states.FAILURE
    assert "ValueError: boom" in failed.traceback
    assert app.AsyncResult(ids["retry_once"]).get(timeout=TIMEOUT) == "done"
    assert app.AsyncResult(ids["progress"]).get(timeout=TIMEOUT) == "finished"
    # every task in one wait (a group's join)
    values = ResultSet([app.AsyncResult(ids[n]) for n in ("add", "retry_once")], app=app).get(
        timeout=TIMEOUT)
    assert values == [5, "done"]


def test_reply_queue_is_declared_as_celery_declares_it(make_app, celery_side, vhost):
    app = make_app()
    app.backend.prepare_replies()
    celery_oid = celery_side("send", _queue_name(), "nobody")["oid"]  # declares its own
    queues = _queues(vhost)
    assert queues[app.backend.oid] == queues[celery_oid]
    assert queues[app.backend.oid][:3] == ["true", "true", "false"]
    assert "86400000" in queues[app.backend.oid][3]


def test_replies_are_what_a_celery_worker_sends(make_app, celery_worker, celery_side, channel):
    """Capture a real Celery worker's replies on a spy queue, then make celeriac send the same
    states for the same tasks to a second one: same properties, same documents."""
    queue, spy, ours = _queue_name(), _queue_name(), _queue_name()
    _declare_like_reply_queue(channel, spy)
    _declare_like_reply_queue(channel, ours)
    celery_worker(queue)
    ids = celery_side("send", queue, spy)
    # track_started: STARTED then the end, for each; retry_once: STARTED, RETRY, STARTED,
    # SUCCESS; progress: STARTED, PROGRESS, SUCCESS
    celery_replies = _drain(channel, spy, 11)
    for message in celery_replies:
        assert message.delivery_info["exchange"] == ""
        assert message.delivery_info["routing_key"] == spy
    by_task: dict[str, list[Any]] = {}
    for message in celery_replies:
        by_task.setdefault(message.properties["correlation_id"], []).append(message)

    def statuses(name: str) -> list[str]:
        return [json.loads(m.body)["status"] for m in by_task[ids[name]]]

    assert statuses("add") == ["STARTED", "SUCCESS"]
    assert statuses("fail") == ["STARTED", "FAILURE"]
    assert statuses("retry_once") == ["STARTED", "RETRY", "STARTED", "SUCCESS"]
    assert statuses("progress") == ["STARTED", "PROGRESS", "SUCCESS"]
    assert by_task[ids["add"]][0].properties == reply_properties(
        "application/json", "utf-8", ids["add"], durable=False)

    backend = make_app().backend
    theirs = by_task[ids["add"]] + by_task[ids["fail"]]
    for message in theirs:
        meta = json.loads(message.body)
        task_id = meta["task_id"]
        request = Context(id=task_id, reply_to=ours, correlation_id=task_id)
        if meta["status"] == states.FAILURE:
            backend.mark_as_failure(task_id, ValueError("boom"), meta["traceback"],
                                    request=request)
        else:
            backend.store_result(task_id, meta["result"], meta["status"], request=request)
    mine = _drain(channel, ours, len(theirs))
    for expected, got in zip(theirs, mine):
        assert got.properties == expected.properties
        assert got.delivery_info["exchange"] == ""
        assert got.delivery_info["routing_key"] == ours
        expected_meta, got_meta = json.loads(expected.body), json.loads(got.body)
        assert list(got_meta) == list(expected_meta)  # same keys, same order
        assert {k: v for k, v in got_meta.items() if k != "date_done"} == \
               {k: v for k, v in expected_meta.items() if k != "date_done"}
        assert (got_meta["date_done"] is None) == (expected_meta["date_done"] is None)


# ---- celeriac's worker side publishes, a real Celery client reads -------------------------------
def test_celery_client_reads_replies_from_celeriacs_worker_side(make_app, tmp_path, broker_url,
                                                                channel):
    queue = _queue_name()
    (tmp_path / "rpc_celery_side.py").write_text(textwrap.dedent(CELERY_SIDE))
    client = subprocess.Popen([sys.executable, "rpc_celery_side.py", "get", queue], cwd=tmp_path,
                              env=_celery_env(broker_url), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        sent = json.loads(client.stdout.readline() or "null")
        assert sent is not None, client.stderr.read() if client.stderr else ""
        worker_app = make_app(task_track_started=True)
        tasks = _drain(channel, queue, 2)
        for raw in tasks:
            message = _as_celeriac_message(raw)
            assert message.properties["reply_to"] == sent["oid"]
            run_message(worker_app, message, {"routing_key": queue}, "celeriac@test",
                        worker_app.backend.accept)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["add"] == 5 and got["add_state"] == "SUCCESS"
    assert got["fail"] == ["ValueError", "builtins", ["boom from celeriac"]]
    assert got["fail_state"] == "FAILURE"
    assert "ValueError: boom from celeriac" in got["fail_traceback"]


# ---- celeriac on both sides ---------------------------------------------------------------------
def test_celeriac_client_and_worker_side(make_app, vhost):
    client, worker = make_app(), make_app(task_track_started=True)
    outgoing = [client.producer.build("rpc.add", (i, 1)) for i in range(3)]
    failing = client.producer.build("rpc.fail", ("nope",))
    oid = client.backend.oid
    assert oid == client.oid  # what frozen workflow signatures carry too
    assert all(item.message.properties["reply_to"] == oid for item in [*outgoing, failing])
    assert all(item.message.properties["correlation_id"] == item.message.headers["id"]
               for item in outgoing)
    assert oid in _queues(vhost)  # declared by the first build, before anything is sent
    for item in [*outgoing, failing]:
        run_message(worker, item.message, {"routing_key": "celery"}, "celeriac@test",
                    worker.backend.accept)
    first = client.AsyncResult(outgoing[0].message.headers["id"])
    assert first.state == states.SUCCESS  # read without waiting: every reply so far is seen
    assert first.get(timeout=TIMEOUT) == 1
    results = ResultSet([client.AsyncResult(i.message.headers["id"]) for i in outgoing],
                        app=client)
    assert results.get(timeout=TIMEOUT) == [1, 2, 3]
    bad = client.AsyncResult(failing.message.headers["id"])
    with pytest.raises(ValueError, match="^nope$"):
        bad.get(timeout=TIMEOUT)

    # not persistent: another client (another reply queue) never sees these results
    other = make_app()
    assert other.backend.oid != oid
    assert other.AsyncResult(first.id).state == states.PENDING


def test_a_message_without_reply_to_gets_no_reply(make_app, channel):
    spy = _queue_name()
    _declare_like_reply_queue(channel, spy)
    backend = make_app().backend
    task_id = str(uuid.uuid4())
    backend.mark_as_done(task_id, 1, request=Context(id=task_id, reply_to="",
                                                     correlation_id=task_id))
    backend.mark_as_done(task_id, 2, request=Context(id=task_id, reply_to=spy,
                                                     correlation_id=task_id))
    (only,) = _drain(channel, spy, 1)  # the marker reply arrived, the first never did
    assert json.loads(only.body)["result"] == 2


# ---- a real celeriac worker over the amqp:// transport -------------------------------------------
CELERIAC_SIDE = '''
import os

import celeriac

app = celeriac.Celery("rpc_celeriac_side", broker=os.environ["RPC_BROKER"], backend="rpc://")
app.conf.update(accept_content=["json"], result_accept_content=["json"])


@app.task(name="rpc.add")
def add(x, y):
    return x + y


@app.task(name="rpc.fail")
def fail(msg):
    raise ValueError(msg)
'''


def test_a_celeriac_worker_answers_celeriac_and_celery_clients(make_app, tmp_path, broker_url):
    queue = _queue_name()
    (tmp_path / "rpc_celeriac_side.py").write_text(textwrap.dedent(CELERIAC_SIDE))
    (tmp_path / "rpc_celery_side.py").write_text(textwrap.dedent(CELERY_SIDE))
    path = os.pathsep.join([str(tmp_path), str(Path(celeriac.__file__).parents[1])])
    worker = WorkerProcess("rpc_celeriac_side", broker_url, tmp_path / "celeriac-worker.log",
                           "-P", "threads", "-c", "2", "-Q", queue,
                           env={"RPC_BROKER": broker_url, "PYTHONPATH": path,
                                "CELERIAC_RESULT_BACKEND": "rpc://"})
    try:
        worker.wait_ready(timeout=60)
        app = make_app()
        assert app.send_task("rpc.add", (2, 3), queue=queue).get(timeout=TIMEOUT) == 5, \
            worker.log()
        with pytest.raises(ValueError, match="^boom$"):
            app.send_task("rpc.fail", ("boom",), queue=queue).get(timeout=TIMEOUT)

        done = subprocess.run([sys.executable, "rpc_celery_side.py", "get", queue], cwd=tmp_path,
                              env=_celery_env(broker_url), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr + worker.log()
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert got["add"] == 5 and got["add_state"] == "SUCCESS"
        assert got["fail"] == ["ValueError", "builtins", ["boom from celeriac"]]
    finally:
        worker.stop()
