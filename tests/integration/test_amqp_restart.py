"""The broker connections dropped mid-run on RabbitMQ: the worker reconnects with backoff,
re-declares and consumes again, and no ``acks_late`` task is lost.

RabbitMQ itself is shared, so the test does not restart it: it closes every connection of its
own virtual host (``rabbitmqctl close_all_connections -p <vhost>``), which is what a broker
restart or a network cut looks like from the worker. Messages the worker held unacked go back
to the queue (the channel is the lease) and are delivered again; results are in a SQLite file.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from celeriac.protocol.message import Message
from celeriac.transport.amqp import AMQPTransport
from celeriac.transport.base import Outgoing
from tests.conftest import private_vhost, rabbitmqctl
from tests.integration.test_worker_faults import Ledger

pytestmark = pytest.mark.integration


def test_worker_survives_dropped_connections_without_losing_acks_late_tasks(
        tmp_path, monkeypatch, start_worker, sqlite_url):
    with private_vhost() as url:
        vhost = urlsplit(url).path[1:]
        env = {"FAULT_ACKS_LATE": "1", "FAULT_NAME": "survivor",
               "CELERIAC_RESULT_BACKEND": sqlite_url}
        for key, value in {"CELERIAC_BROKER_URL": url, **env}.items():
            monkeypatch.setenv(key, value)
        from tests.integration import fault_tasks

        fault_tasks.app.close()
        ledger = Ledger(tmp_path / "ledger")
        total = 160  # about 4 s of work after the first 20: rabbitmqctl is slow on a busy machine
        try:
            results = [fault_tasks.late_work.delay(str(ledger.path), n, 0.05)
                       for n in range(total)]
            worker = start_worker("-c", "2", app="tests.integration.fault_tasks", url=url,
                                  env=env)
            ledger.wait(lambda lg: len(lg.ended()) >= 20, 30, "20 tasks done")
            rabbitmqctl("close_all_connections", "-p", vhost, "celeriac restart test")
            cut = len(ledger.ended())
            assert cut < total, "the cut came after the run: it tested nothing"
            # every task ended (redelivered ones may have run twice: at-least-once), none lost
            ledger.wait(lambda lg: len(lg.ended()) == total, 60, f"all {total} tasks done")
            assert [r.get(timeout=30) for r in results] == list(range(total))
            assert worker.proc.poll() is None, "the worker must keep running through the cut"
            worker.wait_for_log("connection lost")
            # the worker consumes again after the cut: a task sent now runs too
            late = fault_tasks.late_work.delay(str(ledger.path), total, 0.0)
            assert late.get(timeout=30) == total
        finally:
            fault_tasks.app.close()
            time.sleep(0.1)


def test_a_consumer_connection_lost_on_a_write_is_closed_before_the_next_one() -> None:
    """An ack that fails marks the consumer connection lost while its socket may still be up:
    the next fetch closes it before opening another, so RabbitMQ gives back what it held (with
    heartbeats off, nothing else ever would) and its descriptor is not leaked."""
    with private_vhost() as url:
        transport = AMQPTransport(url, heartbeat=0)
        try:
            transport.declare("writer-loss")
            transport.publish([Outgoing("writer-loss", Message(b"x", headers={"id": "t1"}))])
            [first] = transport.fetch(["writer-loss"], 1, 10.0)
            old = transport._consumer
            assert old is not None

            def broken_write(*args: object, **kwargs: object) -> None:
                raise OSError("simulated write failure")

            # the ack frame is written straight to the socket (wire.ack_frame)
            old.conn.transport.write = broken_write
            assert transport.ack([first]) == [False]
            assert not old.alive and old.conn.connected, "the socket is still up"
            [again] = transport.fetch(["writer-loss"], 1, 10.0)
            assert again.message.headers["id"] == "t1" and again.redelivered
            assert not old.conn.connected
            assert transport.ack([again]) == [True]
        finally:
            transport.close()
