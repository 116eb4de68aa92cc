"""``broker_transport_options={'confirm_publish': False}`` on RabbitMQ (kombu's name and meaning):
task publishes go out on a channel not in confirm mode and ``publish`` waits for nothing; the
default (True) waits for every confirm. Live, in this session's virtual host: a queue that
refuses what is over its length (``x-overflow: reject-publish``) nacks the publish, which raises
only with confirms; messages published either way arrive; a channel the broker closed for an
earlier unconfirmed publish is found and reported at the next one, which then goes out on a
fresh channel; ``send_many`` and groups from an app follow the option."""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest

from celeriac import Celery, group
from celeriac.protocol.entities import Queue
from celeriac.protocol.message import Message
from celeriac.transport.amqp import AMQPTransport, ConnectionLost
from celeriac.transport.base import Outgoing
from tests.conftest import REPO


def _message(tag: str) -> Message:
    return Message(body=tag.encode(), content_type="application/json", content_encoding="utf-8",
                   headers={"id": tag, "task": "t"})


def _tags(transport: AMQPTransport, queue: str, n: int, *, ids: bool = False) -> list[str]:
    """Fetch until ``n`` messages came (each fetch waits up to 5 s for more), ack them; their
    bodies (or task ids)."""
    got: list[str] = []
    for _ in range(20):
        deliveries = transport.fetch([queue], n - len(got), 5.0)
        if not deliveries:
            break
        transport.ack(deliveries)
        got += [d.message.headers["id"] if ids else d.message.body.decode()
                for d in deliveries]
        if len(got) >= n:
            break
    return got


@pytest.fixture
def made(rabbitmq_url: str) -> Iterator[list[AMQPTransport]]:
    transports: list[AMQPTransport] = []
    yield transports
    queues = {name for t in transports for name in t._declared}
    exchanges = {name for t in transports for name in t._exchanges if name}
    for transport in transports:
        transport.close()
    conn = _connection(rabbitmq_url)
    try:
        channel = conn.channel()
        for name in queues:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)
    finally:
        conn.close()


def _connection(url: str) -> Any:
    address = AMQPTransport(url).address
    conn = amqp.Connection(host=address.hostport, userid=address.userid,
                           password=address.password, virtual_host=address.virtual_host)
    conn.connect()
    return conn


def _transport(url: str, made: list[AMQPTransport], **options: Any) -> AMQPTransport:
    transport = AMQPTransport.from_url(url, **options)
    made.append(transport)
    return transport


def test_unconfirmed_publishes_arrive_without_using_the_confirm_channel(
        rabbitmq_url: str, made: list[AMQPTransport]) -> None:
    queue = f"unconfirmed-{uuid.uuid4().hex[:8]}"
    producer = _transport(rabbitmq_url, made, confirm_publish=False)
    assert producer.confirm_publish is False
    producer.declare(queue)
    producer.publish([Outgoing(queue, _message(f"batch-{i}")) for i in range(300)])
    for i in range(50):
        producer.publish([Outgoing(queue, _message(f"one-{i}"))])
    mine = producer._local.producer
    assert mine.plain is not None and mine.plain is not mine.channel  # its own channel
    assert mine.sent == 0 and not mine.unconfirmed  # nothing was awaited
    consumer = _transport(rabbitmq_url, made)
    got = _tags(consumer, queue, 350)
    assert sorted(got) == sorted([f"batch-{i}" for i in range(300)]
                                 + [f"one-{i}" for i in range(50)])


def test_only_a_confirmed_publish_hears_of_a_message_the_broker_refused(
        rabbitmq_url: str, made: list[AMQPTransport]) -> None:
    """A full queue with ``x-overflow: reject-publish`` nacks what it refuses: with confirms
    the publish raises; without, it returns and the message is gone unreported (docs)."""
    queue = f"full-{uuid.uuid4().hex[:8]}"
    confirmed = _transport(rabbitmq_url, made)
    confirmed.declare(Queue(queue, queue_arguments={"x-max-length": 1,
                                                    "x-overflow": "reject-publish"}))
    confirmed.publish([Outgoing(queue, _message("first"))])
    with pytest.raises(ConnectionLost, match="nacked"):
        confirmed.publish([Outgoing(queue, _message("refused"))])
    unconfirmed = _transport(rabbitmq_url, made, confirm_publish=False)
    unconfirmed.declare(Queue(queue, queue_arguments={"x-max-length": 1,
                                                      "x-overflow": "reject-publish"}))
    unconfirmed.publish([Outgoing(queue, _message("dropped"))])  # returns: no confirm awaited
    # the transport's own moves of a held message keep their confirms whatever the option
    with pytest.raises(ConnectionLost, match="nacked"):
        unconfirmed.publish([Outgoing(queue, _message("moved"))], confirm=True)
    assert _tags(confirmed, queue, 1) == ["first"]
    assert confirmed.fetch([queue], 1, 0.3) == []


def test_a_channel_closed_for_an_earlier_publish_is_reported_then_replaced(
        rabbitmq_url: str, made: list[AMQPTransport]) -> None:
    exchange, queue = f"gone-{uuid.uuid4().hex[:8]}", f"bound-{uuid.uuid4().hex[:8]}"
    transport = _transport(rabbitmq_url, made, confirm_publish=False)
    transport.declare(Queue(queue, exchange=exchange, routing_key="k"))
    transport.publish([Outgoing("", _message("routed"), exchange=exchange, routing_key="k")])
    conn = _connection(rabbitmq_url)
    try:
        conn.channel().exchange_delete(exchange)  # the transport still thinks it exists
    finally:
        conn.close()
    # RabbitMQ closes the channel (404), after publish returned
    transport.publish([Outgoing("", _message("lost"), exchange=exchange, routing_key="k")])
    sock = transport._local.producer.conn.sock
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    assert poller.poll(10_000), "RabbitMQ never answered the publish to a deleted exchange"
    with pytest.raises(ConnectionLost, match="closed the publishing channel.*NOT_FOUND"):
        transport.publish([Outgoing(queue, _message("retried"))])
    transport.publish([Outgoing(queue, _message("retried"))])  # the producer's retry
    consumer = _transport(rabbitmq_url, made)
    assert sorted(_tags(consumer, queue, 2)) == ["retried", "routed"]
    assert consumer.fetch([queue], 1, 0.3) == []  # "lost" never reached the queue


def test_an_app_sends_send_many_and_groups_unconfirmed(rabbitmq_url: str,
                                                        made: list[AMQPTransport]) -> None:
    queue = f"app-{uuid.uuid4().hex[:8]}"
    app = Celery("confirm_publish_off", broker=rabbitmq_url, backend="memory://",
                 task_default_queue=queue,
                 broker_transport_options={"confirm_publish": False})

    @app.task
    def noop() -> None: ...

    try:
        made.append(app.transport)  # type: ignore[arg-type]
        assert app.transport.confirm_publish is False  # type: ignore[attr-defined]
        ids = list(app.producer.send_many([(noop.name, (), {}, {})] * 40))
        ids += [r.id for r in group(noop.s() for _ in range(30)).apply_async().results]
        ids.append(noop.delay().id)
        mine = app.transport._local.producer  # type: ignore[attr-defined]
        assert mine.sent == 0 and mine.plain is not None
        consumer = _transport(rabbitmq_url, made)
        assert sorted(_tags(consumer, queue, len(ids), ids=True)) == sorted(ids)
    finally:
        app.close()


class _RecordingProxy:
    """A TCP relay to RabbitMQ that keeps every byte the client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = bytearray()
        self.done = threading.Event()  # both directions ended, both sockets closed
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self.server.accept()
        except OSError:  # closed before any client came
            return
        with client, socket.create_connection(self.target) as upstream:
            back = threading.Thread(target=self._pipe, args=(upstream, client, False),
                                    daemon=True)
            back.start()
            self._pipe(client, upstream, True)
            back.join(10)
        self.done.set()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


_PUBLISH_AND_EXIT = textwrap.dedent("""
    import sys
    from celeriac import Celery
    app = Celery("exit", broker=sys.argv[1])
    app.conf.broker_transport_options = {"confirm_publish": False}
    app.conf.task_default_queue = sys.argv[2]
    @app.task
    def noop():
        pass
    for _ in range(20):
        noop.delay()
    # the process ends here, closing nothing itself
""")


def test_a_process_that_published_unconfirmed_closes_its_connection_as_it_ends(
        rabbitmq_url: str, made: list[AMQPTransport]) -> None:
    # A process that just ends drops its socket, and RabbitMQ may drop what it had not yet
    # routed (seen: ~150 of 10,001 tasks). At exit the connection is closed properly instead:
    # the client's connection.close (class 10, method 50, on channel 0) follows its publishes.
    address = AMQPTransport(rabbitmq_url).address
    host, _, port = address.hostport.partition(":")
    proxy = _RecordingProxy((host, int(port or 5672)))
    queue = f"exit-{uuid.uuid4().hex[:8]}"
    url = rabbitmq_url.replace(address.hostport, f"127.0.0.1:{proxy.port}", 1)
    try:
        subprocess.run([sys.executable, "-c", _PUBLISH_AND_EXIT, url, queue], check=True,
                       timeout=60, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proxy.done.wait(10)
    finally:
        proxy.server.close()
    reader = _transport(rabbitmq_url, made)
    reader._declared.add(queue)  # deleted after the test
    assert _CONNECTION_CLOSE.search(bytes(proxy.sent)), "no connection.close before the end"
    assert len(_tags(reader, queue, 20)) == 20


#: a method frame on channel 0 carrying connection.close
_CONNECTION_CLOSE = re.compile(rb"\x01\x00\x00.{4}\x00\x0a\x00\x32", re.DOTALL)
