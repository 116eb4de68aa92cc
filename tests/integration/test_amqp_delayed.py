"""Broker-side delays on RabbitMQ (issue 12 item 5): Celery 5.5+'s native delayed delivery.

The queue ``celery`` is a quorum queue. A task with a countdown waits in the ``celery_delayed_*``
levels, not unacked in a worker (checked live: ``rabbitmqctl list_channels`` reports what each
channel holds unacked, and a passive ``queue.declare`` counts what the levels hold), and runs no
earlier than its ETA: celeriac to celeriac, Celery 5.7 to celeriac and celeriac to Celery 5.7.
The topology celeriac declares is the one a Celery worker declares.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import amqp
import pytest

from celeriac.transport.amqp.delayed import (
    DELIVERY_EXCHANGE,
    MAX_LEVEL,
    delay_of,
    level_name,
    queue_route,
)
from tests.conftest import REPO, WorkerProcess, private_vhost, rabbitmqctl
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.delayed_tasks"
#: seconds the task waits: on a busy machine the client may take seconds to publish (the delay
#: it gives the broker is what is left of the countdown then: 4 of 8 seen) and ``rabbitmqctl``
#: seconds to read the unacked count (4 and more seen); the message must still wait after both
COUNTDOWN = 12


class CeleryWorker(WorkerProcess):
    """A real ``celery worker -P solo`` on ``delayed_tasks.celery_app``."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:  # noqa: D107
        self.logfile = logfile
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", f"{APP}:celery_app", "worker", "-P", "solo",
             "-l", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=REPO, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)


class Scene:
    """One test's vhost, task log and workers."""

    def __init__(self, url: str, tmp_path: Path, exchange_type: str) -> None:
        self.url = url
        self.vhost = unquote(urlsplit(url).path[1:])
        self.log = tmp_path / "ran.jsonl"
        self.env = {"DELAYED_BROKER_URL": url, "DELAYED_LOG": str(self.log),
                    "DELAYED_EXCHANGE_TYPE": exchange_type}
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []

    def worker(self, kind: str) -> WorkerProcess:
        logfile = self.tmp_path / f"{kind}-{len(self.workers)}.log"
        worker: WorkerProcess
        if kind == "celery":
            worker = CeleryWorker(self.env, logfile)
        else:
            worker = WorkerProcess(f"{APP}:celeriac_app", self.url, logfile, "-P", "threads",
                                   "-c", "2", env={**self.env, "CELERIAC_RESULT_BACKEND":
                                                   f"sqlite:///{self.tmp_path / 'r.db'}"})
        self.workers.append(worker)
        worker.wait_ready(timeout=30)
        return worker

    def send(self, kind: str, countdown: float) -> str:
        """Send ``delayed.stamp`` with ``countdown`` from a ``kind`` client (a subprocess, real
        Celery 5.7 or celeriac); returns the task id."""
        code = (f"import json, sys; from {APP} import {kind}_app as app; "
                f"r = app.send_task('delayed.stamp', countdown={countdown!r}); "
                "print(json.dumps(r.id))")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env={**os.environ, **self.env})
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout.strip().splitlines()[-1]))

    def ran(self, task_id: str, timeout: float = 40.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if not self.log.exists():
                return None
            for line in self.log.read_text().splitlines():
                entry = json.loads(line)
                if entry["id"] == task_id:
                    return dict(entry)
            return None

        found: dict[str, Any] = wait_for(find, timeout, interval=0.05, message=lambda: (
            f"task {task_id} never ran; logs:\n" + "\n".join(w.log() for w in self.workers)))
        return found

    def counts(self) -> tuple[int, int]:
        """(messages ready in ``celery``, messages in the delay levels): the broker's live
        counts (passive declares), on one connection."""
        conn = amqp.Connection("127.0.0.1:5672", virtual_host=self.vhost)
        conn.connect()
        try:
            channel = conn.channel()
            levels = sum(int(channel.queue_declare(level_name(level), passive=True).message_count)
                         for level in range(MAX_LEVEL + 1))
            return int(channel.queue_declare("celery", passive=True).message_count), levels
        finally:
            conn.close()

    def unacked(self) -> int:
        """Messages every channel of this vhost holds unacked (live, from each channel)."""
        out = rabbitmqctl("list_channels", "--no-table-headers", "vhost",
                          "messages_unacknowledged")
        return sum(int(fields[1]) for fields in (line.split("\t") for line in out.splitlines())
                   if len(fields) == 2 and fields[0] == self.vhost)

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.kill()
            if not worker._log.closed:
                worker._log.close()


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Any]:
    def make(exchange_type: str = "topic") -> Scene:
        made.append(Scene(url, tmp_path, exchange_type))
        return made[-1]

    made: list[Scene] = []
    with private_vhost() as url:
        try:
            yield make
        finally:
            for s in made:
                s.close()


def _eta(entry: dict[str, Any]) -> float:
    eta = datetime.datetime.fromisoformat(entry["eta"])
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=datetime.timezone.utc)
    return eta.timestamp()


def _waits_on_the_broker(s: Scene) -> None:
    """While the task waits: it is in the levels, the queue is empty, nothing is unacked.

    ``rabbitmqctl`` takes seconds on a busy machine, so its unacked count is taken between two
    looks that both find the message in the levels (and none in the queue), until one such
    look agrees: a worker holding the message (or a copy) unacked all along never passes."""
    seen: list[Any] = []

    def waiting() -> bool:
        if s.counts() != (0, 1):
            return False
        seen[:] = [s.unacked()]
        seen.append(s.counts())
        return seen == [0, (0, 1)]

    wait_for(waiting, 30, interval=0.05, message=lambda: (
        f"the delayed message was never seen waiting in the celery_delayed_* queues with "
        f"nothing unacked (last: unacked {seen[0]}, then (queue, levels) {seen[1]})" if seen
        else "the delayed message never showed up in the celery_delayed_* queues"))


@pytest.mark.parametrize(("client", "worker", "exchange_type"), [
    ("celeriac", "celeriac", "topic"),   # Celery's route: the queue's exchange
    ("celeriac", "celeriac", "direct"),  # celeriac's own route to the queue
    ("celery", "celeriac", "topic"),     # Celery 5.7 publishes on the broker, celeriac runs it
    ("celeriac", "celery", "topic"),     # celeriac publishes on the broker, Celery 5.7 runs it
    ("celery", "celeriac", "direct"),    # Celery sends it at once; celeriac defers it
])
def test_a_countdown_waits_on_the_broker_and_runs_at_its_eta(
        scene: Any, client: str, worker: str, exchange_type: str) -> None:
    s = scene(exchange_type)
    s.worker(worker)
    task_id = s.send(client, COUNTDOWN)
    _waits_on_the_broker(s)
    entry = s.ran(task_id)
    assert entry["side"] == worker
    assert entry["ran_at"] >= _eta(entry)  # never before its ETA
    routing_key = entry["routing_key"]
    if exchange_type == "topic":  # arrived through the levels, with the delay bits in its key
        assert delay_of(routing_key) is not None and routing_key.endswith(".celery")
    else:  # celeriac's own route records the original one
        assert routing_key == "celery"
    left: list[Any] = []

    def nothing_left() -> bool:
        left[:] = [*s.counts(), s.unacked()]
        return left == [0, 0, 0]

    wait_for(nothing_left, 20, message=lambda: f"a copy of the task was left behind: (queue, "
             f"levels, unacked) {tuple(left)}")


def _topology(vhost: str) -> set[str]:
    """Exchanges, queues and bindings of ``vhost`` with their flags and arguments, as lines,
    without Celery's remote-control entities (``*.pidbox``)."""
    lines: set[str] = set()
    for what in (("list_exchanges", "name", "type", "durable", "auto_delete", "internal",
                  "arguments"),
                 ("list_queues", "name", "type", "durable", "auto_delete", "exclusive",
                  "arguments"),
                 ("list_bindings", "source_name", "source_kind", "destination_name",
                  "destination_kind", "routing_key", "arguments")):
        out = rabbitmqctl(what[0], "-p", vhost, "--no-table-headers", *what[1:])
        lines |= {f"{what[0]}\t{line}" for line in out.splitlines() if "pidbox" not in line}
    return lines


def test_celeriac_declares_the_topology_a_celery_worker_declares(scene: Any) -> None:
    from celeriac import Exchange, Queue
    from celeriac.transport.amqp import AMQPTransport

    s = scene("topic")
    s.worker("celery").stop()
    celery_side = _topology(s.vhost)
    assert any(level_name(MAX_LEVEL) in line for line in celery_side)  # Celery declared it

    with private_vhost() as url:
        transport = AMQPTransport(url)
        try:
            queue = Queue("celery", Exchange("celery", type="topic"), routing_key="celery",
                          queue_arguments={"x-queue-type": "quorum"})
            transport.declare(queue)
            transport.declare(queue)  # idempotent
            ours = _topology(unquote(urlsplit(url).path[1:]))
        finally:
            transport.close()
    private = f"list_bindings\t{DELIVERY_EXCHANGE}\texchange\tcelery\tqueue\t" \
              f"#.{queue_route('celery')}\t[]"
    assert ours - celery_side == {private}
    assert celery_side - ours == set()
