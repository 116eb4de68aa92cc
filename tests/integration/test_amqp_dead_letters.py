"""Dead letters on RabbitMQ: a worker sets a message it can never run aside in
``celeriac.dead_letters``, its caller reads the failure, ``celeriac dlq`` lists and replays it;
several clients read the store at once; RabbitMQ's own dead-lettering can feed the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import amqp
import pytest

from celeriac.exceptions import ContentDisallowed
from celeriac.protocol.message import Message
from celeriac.transport.amqp import AMQPTransport
from celeriac.transport.amqp.dead_letters import DEAD_LETTER_QUEUE
from tests.conftest import REPO, private_vhost

pytestmark = pytest.mark.integration


def _dlq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``celeriac -A app_tasks -b <url> dlq ...`` with no broker in the environment: -b alone
    says where."""
    env = {k: v for k, v in os.environ.items() if k != "CELERIAC_BROKER_URL"}
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", "-A",
                           "tests.integration.app_tasks", "-b", url, "dlq", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


def test_worker_dead_letters_a_refused_message_and_the_cli_replays_it(
        task_module, start_worker, sqlite_url):
    with private_vhost() as url:
        tasks = task_module("app_tasks", url, results=sqlite_url)
        refused = tasks.add.apply_async((2, 3), serializer="pickle")
        fine = tasks.add.delay(1, 1)
        worker = start_worker("-c", "1", url=url, env={"CELERIAC_RESULT_BACKEND": sqlite_url})
        assert fine.get(timeout=30) == 2
        with pytest.raises(ContentDisallowed) as failure:
            refused.get(timeout=30)

        listed = _dlq(url, "list")
        assert listed.returncode == 0, listed.stderr
        [line] = listed.stdout.splitlines()
        letter_id = line.split()[0]
        assert f"id={refused.id}" in line and "queue=celery" in line, line
        assert "not accepted" in line, line
        assert letter_id in str(failure.value)  # the caller is told where the message is

        # the letter is the message the worker received, byte for byte
        letter = tasks.app.transport.dead_letter_get(letter_id)
        assert letter is not None
        assert letter.message.content_type == "application/x-python-serialize"
        assert letter.message.headers["id"] == refused.id
        assert not any(key.startswith("x-celeriac") for key in letter.message.headers)

        worker.stop()
        replayed = _dlq(url, "replay", "--all")
        assert replayed.returncode == 0 and "Replayed 1" in replayed.stdout, replayed.stderr
        assert _dlq(url, "list").stdout.strip() == "The dead-letter store is empty."
        reader = AMQPTransport(url)
        try:
            [back] = reader.fetch(["celery"], 5, 5.0)
            assert back.message == letter.message
            assert reader.ack([back]) == [True]
        finally:
            reader.close()


def _letters(url: str, n: int) -> tuple[AMQPTransport, list[str]]:
    transport = AMQPTransport(url)
    ids = [transport.dead_letter("q", Message(f"m{i}".encode(), headers={"id": f"t{i}"}),
                                 f"reason {i}") for i in range(n)]
    return transport, ids


def test_several_clients_read_the_store_at_once_and_each_sees_all_of_it():
    with private_vhost() as url:
        writer, ids = _letters(url, 6)
        readers = [AMQPTransport(url) for _ in range(4)]
        seen: list[list[str]] = []
        errors: list[BaseException] = []

        def read(reader: AMQPTransport) -> None:
            try:
                for _ in range(5):
                    seen.append([d.id for d in reader.dead_letters()])
                    letter = reader.dead_letter_get(ids[-1])
                    seen.append([letter.id] if letter else [])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=read, args=(r,)) for r in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        try:
            assert errors == []
            # a browse without the lock would see only what the others had not taken
            assert seen.count(ids) == 20 and seen.count([ids[-1]]) == 20, seen
            # deleting from two clients at once: each letter goes exactly once
            counts: list[int] = []
            deleters = [threading.Thread(target=lambda r=r: counts.append(
                r.dead_letter_delete(ids[:4]))) for r in readers[:2]]
            for thread in deleters:
                thread.start()
            for thread in deleters:
                thread.join(60)
            assert sorted(counts) == [0, 4]
            assert [d.id for d in writer.dead_letters()] == ids[4:]
        finally:
            for transport in (writer, *readers):
                transport.close()


def test_rabbitmqs_own_dead_lettering_can_feed_the_store():
    """A queue declared with ``x-dead-letter-exchange: ""`` and
    ``x-dead-letter-routing-key: celeriac.dead_letters`` sends what is rejected there."""
    with private_vhost() as url:
        transport = AMQPTransport(url)
        assert transport.dead_letters() == []  # declares the store
        address = transport.address
        conn = amqp.Connection(host=address.hostport, userid=address.userid,
                               password=address.password, virtual_host=address.virtual_host)
        conn.connect()
        try:
            channel = conn.channel()
            queue = f"native-{uuid.uuid4().hex[:8]}"
            channel.queue_declare(queue, durable=True, auto_delete=False, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD_LETTER_QUEUE})
            channel.basic_publish(amqp.Message(b"\x00native", content_type="application/x-test",
                                               application_headers={"id": "n-1"}),
                                  exchange="", routing_key=queue)
            msg = None
            for _ in range(500):
                msg = channel.basic_get(queue)
                if msg is not None:
                    break
                time.sleep(0.01)
            assert msg is not None, "the message never reached its queue"
            channel.basic_reject(msg.delivery_tag, requeue=False)
            conn.close()
            conn = None
            [letter] = transport.dead_letters()
            assert (letter.queue, letter.message.body, letter.message.headers["id"]) == (
                queue, b"\x00native", "n-1")
            assert "rejected" in letter.reason and letter.created_at > 0
            assert transport.dead_letter_get(letter.id) == letter  # its id is stable
            assert transport.dead_letter_delete([letter.id]) == 1
            assert transport.dead_letters() == []
        finally:
            if conn is not None:
                conn.close()
            transport.close()
