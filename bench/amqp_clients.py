"""AMQP client choice for the RabbitMQ transport (issue 12): py-amqp, pika and aio-pika measured
side by side against one RabbitMQ, in interleaved rounds.

Layer: bench (outside the package; pytest never runs it, and it imports nothing of celeriac).
Run it from a virtualenv holding the clients, not from the project's environment::

    python -m venv /tmp/amqpbench
    /tmp/amqpbench/bin/pip install amqp pika aio-pika
    /tmp/amqpbench/bin/python bench/amqp_clients.py --rounds 3

A client that is not installed is skipped with a printed line. Each round runs every measure
for every client before the next measure (measure 1: A, B, C; measure 2: A, B, C; ...), and
the client order rotates from round to round, so a slow moment of the machine is spread over
the clients instead of landing on one. The measures, each on its own durable queue named
``amqpbench.<client>.<measure>.<random>`` (with ``x-expires`` as a safety net, and deleted at
the end of the measure):

- ``publish, confirm each``: N messages, each ``basic_publish`` waits for its publisher
  confirm before the next one (what a ``delay()`` that must be on the broker costs).
- ``publish, pipelined confirms``: the same in batches of ``--batch``: publish the batch, then
  wait until the broker has acked all of it. pika's BlockingConnection cannot do this (after
  ``confirm_delivery()`` every ``basic_publish`` blocks until its own ack).
- ``publish, no confirms``: reference only (Dramatiq's default): publishes with no confirm,
  timed until a synchronous ``queue_declare(passive)`` after the last one returns.
- ``consume, ack each`` / ``consume, multiple ack /50``: the queue is filled first (untimed),
  then one consumer with prefetch ``--prefetch`` takes N messages, acking each one, or acking
  every ``--ack-every`` with ``multiple=True``. Timed from ``basic_consume`` to the last ack.
- ``consume, basic.get``: reference: ``basic_get`` in a loop (one round trip per message)
  for N/4 messages, acking each.
- ``round trip``: a consumer thread in this process (its own connection) takes a request from
  queue A, acks it and publishes a reply to queue B (no confirm); the producer publishes each
  request with a publisher confirm, then waits for the reply on its own connection. p50/p99
  over ``--samples`` trips after ``--warmup`` untimed ones.

aio-pika is driven the way a synchronous-threaded transport would have to drive it: one event
loop owned by a background thread, the calling threads handing it coroutines with
``asyncio.run_coroutine_threadsafe`` and waiting on the result, deliveries handed back through a
``queue.Queue``. Its ``consume (in loop)`` row is a reference for what it does with no thread
hop (the callback acks inside the loop).

Messages: a ~300-byte JSON body and Celery protocol 2 headers (lang, task, id, root_id,
parent_id, group, retries, eta, expires, timelimit, argsrepr, kwargsrepr, origin, ...),
content type application/json, delivery mode 2, through the default exchange. Progress goes
to stderr; the table (median and min-max over rounds) to stdout; ``--json FILE`` saves the raw
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue as queue_mod
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any
from urllib.parse import unquote, urlsplit

QUEUE_ARGS = {"x-expires": 600_000}  # a queue left behind by a crash goes away in 10 minutes
CLIENT_ORDER = ("amqp", "pika", "aio-pika")
MEASURES = (
    ("publish_sync", "publish, confirm each", "msgs/s"),
    ("publish_pipelined", "publish, pipelined confirms", "msgs/s"),
    ("publish_noconfirm", "publish, no confirms (reference)", "msgs/s"),
    ("consume_ack1", "consume, prefetch, ack each", "msgs/s"),
    ("consume_ack50", "consume, prefetch, multiple ack /50", "msgs/s"),
    ("consume_inloop", "consume, ack each, in loop (reference)", "msgs/s"),
    ("consume_get", "consume, basic.get loop (reference)", "msgs/s"),
    ("rtt_p50", "round trip p50", "ms"),
    ("rtt_p99", "round trip p99", "ms"),
)


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def from_url(cls, url: str) -> Broker:
        parts = urlsplit(url)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(parts.hostname or "127.0.0.1", parts.port or 5672,
                   unquote(parts.username or "guest"), unquote(parts.password or "guest"), vhost)


@dataclass
class Settings:
    messages: int
    sync_messages: int
    batch: int
    prefetch: int
    ack_every: int
    samples: int
    warmup: int
    delivery_mode: int


@dataclass
class Task:
    """One message to send: its protocol 2 headers and properties, built before any timing."""

    task_id: str
    headers: dict[str, Any]
    body: bytes = field(repr=False)
    delivery_mode: int = 2


def make_body() -> bytes:
    """A protocol 2 body (args, kwargs, embed) of about 300 bytes."""
    args = [42, "x" * 150, {"user": "someone@example.com", "ids": [1, 2, 3, 4, 5]}]
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([args, {"flag": True, "n": 7}, embed]).encode()


def make_tasks(n: int, delivery_mode: int = 2) -> list[Task]:
    body = make_body()
    origin = f"gen{os.getpid()}@{socket.gethostname()}"
    tasks = []
    for _ in range(n):
        task_id = str(uuid.uuid4())
        headers: dict[str, Any] = {
            "lang": "py", "task": "bench.tasks.noop", "id": task_id, "shadow": None,
            "eta": None, "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": "(42, 'xxxxxxxxxx...', {...})", "kwargsrepr": "{'flag': True, 'n': 7}",
            "origin": origin, "ignore_result": False,
        }
        tasks.append(Task(task_id, headers, body, delivery_mode))
    return tasks


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(pct / 100 * len(sorted_values) + 0.4999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def queue_name(client: str, measure: str) -> str:
    return f"amqpbench.{client}.{measure}.{uuid.uuid4().hex[:8]}"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Client:
    """One AMQP client library: each measure opens its own connection(s) and closes them."""

    name = ""
    module = ""
    unsupported: dict[str, str] = {}

    def publish_sync(self, q: str, tasks: list[Task]) -> float:
        raise NotImplementedError

    def publish_pipelined(self, q: str, tasks: list[Task], batch: int) -> float:
        raise NotImplementedError

    def publish_noconfirm(self, q: str, tasks: list[Task]) -> float:
        raise NotImplementedError

    def consume(self, q: str, n: int, prefetch: int, ack_every: int) -> float:
        raise NotImplementedError

    def consume_inloop(self, q: str, n: int, prefetch: int) -> float:
        raise NotImplementedError

    def consume_get(self, q: str, n: int) -> float:
        raise NotImplementedError

    def round_trips(self, qa: str, qb: str, tasks: list[Task], warmup: int) -> list[float]:
        raise NotImplementedError

    # queue management, with the client's own API
    def declare(self, q: str) -> None:
        raise NotImplementedError

    def count(self, q: str) -> int:
        raise NotImplementedError

    def delete(self, q: str) -> None:
        raise NotImplementedError

    def fill(self, q: str, tasks: list[Task]) -> None:
        """Publish without confirms, then wait until the queue holds them all."""
        self.publish_noconfirm(q, tasks)
        deadline = time.monotonic() + 60
        while self.count(q) < len(tasks):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{q}: only {self.count(q)} of {len(tasks)} arrived")
            time.sleep(0.05)


# ---- py-amqp (the ``amqp`` package under Celery's kombu) ------------------------------------
class PyAmqp(Client):
    name = "amqp"
    module = "amqp"
    unsupported = {"consume_inloop": "not an asyncio client"}

    def __init__(self, broker: Broker) -> None:
        import amqp

        self.amqp = amqp
        self.broker = broker

    @contextmanager
    def connection(self, confirm_publish: bool = False) -> Iterator[Any]:
        b = self.broker
        conn = self.amqp.Connection(f"{b.host}:{b.port}", userid=b.user, password=b.password,
                                    virtual_host=b.vhost, heartbeat=60,
                                    confirm_publish=confirm_publish)
        conn.connect()
        try:
            yield conn
        finally:
            conn.close()

    def message(self, task: Task) -> Any:
        return self.amqp.Message(task.body, content_type="application/json",
                                 content_encoding="utf-8", delivery_mode=task.delivery_mode,
                                 priority=0, correlation_id=task.task_id,
                                 application_headers=task.headers)

    def declare(self, q: str) -> None:
        with self.connection() as conn:
            conn.channel().queue_declare(q, durable=True, auto_delete=False, arguments=QUEUE_ARGS)

    def count(self, q: str) -> int:
        with self.connection() as conn:
            return int(conn.channel().queue_declare(q, passive=True).message_count)

    def delete(self, q: str) -> None:
        with self.connection() as conn:
            conn.channel().queue_delete(q)

    def publish_sync(self, q: str, tasks: list[Task]) -> float:
        with self.connection(confirm_publish=True) as conn:
            ch = conn.channel()
            ch.confirm_select()
            ch._confirm_selected = True  # what basic_publish_confirm would do on first use
            start = time.perf_counter()
            for task in tasks:  # basic_publish is basic_publish_confirm: waits for the ack
                ch.basic_publish(self.message(task), exchange="", routing_key=q)
            return time.perf_counter() - start

    def publish_pipelined(self, q: str, tasks: list[Task], batch: int) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            ch.confirm_select()
            pending: set[int] = set()
            nacked: list[int] = []

            def on_ack(tag: int, multiple: bool) -> None:
                if multiple:
                    pending.difference_update([t for t in pending if t <= tag])
                else:
                    pending.discard(tag)

            def on_nack(tag: int, multiple: bool) -> None:
                nacked.append(tag)
                on_ack(tag, multiple)

            ch.events["basic_ack"].add(on_ack)
            ch.events["basic_nack"].add(on_nack)
            tag = 0
            start = time.perf_counter()
            for i in range(0, len(tasks), batch):
                for task in tasks[i:i + batch]:
                    ch.basic_publish(self.message(task), exchange="", routing_key=q)
                    tag += 1
                    pending.add(tag)
                while pending:
                    conn.drain_events(timeout=30)
            elapsed = time.perf_counter() - start
            if nacked:
                raise RuntimeError(f"{len(nacked)} publishes nacked")
            return elapsed

    def publish_noconfirm(self, q: str, tasks: list[Task]) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            start = time.perf_counter()
            for task in tasks:
                ch.basic_publish(self.message(task), exchange="", routing_key=q)
            ch.queue_declare(q, passive=True)  # a round trip: the broker has read them all
            return time.perf_counter() - start

    def consume(self, q: str, n: int, prefetch: int, ack_every: int) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            ch.basic_qos(0, prefetch, False)
            got = 0

            def on_message(message: Any) -> None:
                nonlocal got
                got += 1
                tag = message.delivery_info["delivery_tag"]
                if ack_every <= 1:
                    ch.basic_ack(tag)
                elif got % ack_every == 0 or got == n:
                    ch.basic_ack(tag, multiple=True)

            start = time.perf_counter()
            ch.basic_consume(q, callback=on_message, no_ack=False)
            while got < n:
                conn.drain_events(timeout=30)
            return time.perf_counter() - start

    def consume_get(self, q: str, n: int) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            start = time.perf_counter()
            for _ in range(n):
                message = ch.basic_get(q, no_ack=False)
                if message is None:
                    raise RuntimeError(f"{q} empty before {n} messages")
                ch.basic_ack(message.delivery_tag)
            ch.queue_declare(q, passive=True)  # the last ack has reached the broker
            return time.perf_counter() - start

    def round_trips(self, qa: str, qb: str, tasks: list[Task], warmup: int) -> list[float]:
        ready, stop, errors = threading.Event(), threading.Event(), []

        def worker() -> None:
            try:
                with self.connection() as conn:
                    ch = conn.channel()
                    ch.basic_qos(0, 100, False)

                    def on_request(message: Any) -> None:
                        ch.basic_ack(message.delivery_tag)
                        reply = self.amqp.Message(b'{"status": "SUCCESS", "result": null}',
                                                  content_type="application/json",
                                                  correlation_id=message.correlation_id)
                        ch.basic_publish(reply, exchange="", routing_key=qb)

                    ch.basic_consume(qa, callback=on_request, no_ack=False)
                    ready.set()
                    while not stop.is_set():
                        try:
                            conn.drain_events(timeout=0.2)
                        except socket.timeout:
                            conn.heartbeat_tick()
            except Exception as exc:  # noqa: BLE001 - reported by the producer side
                errors.append(exc)
                ready.set()

        thread = threading.Thread(target=worker, name="amqp-rtt-worker", daemon=True)
        thread.start()
        ready.wait(30)
        times: list[float] = []
        try:
            with self.connection(confirm_publish=True) as conn:
                ch = conn.channel()
                replies: list[Any] = []
                ch.basic_consume(qb, callback=replies.append, no_ack=True)
                for i, task in enumerate(tasks):
                    start = time.perf_counter()
                    ch.basic_publish(self.message(task), exchange="", routing_key=qa)
                    while not replies:
                        conn.drain_events(timeout=10)
                    elapsed = time.perf_counter() - start
                    if replies.pop().correlation_id != task.task_id:
                        raise RuntimeError("reply out of order")
                    if i >= warmup:
                        times.append(elapsed)
        finally:
            stop.set()
            thread.join(10)
        if errors:
            raise errors[0]
        return times


# ---- pika BlockingConnection -----------------------------------------------------------------
class PikaBlocking(Client):
    name = "pika"
    module = "pika"
    unsupported = {
        "publish_pipelined": "BlockingChannel.confirm_delivery() makes each publish wait",
        "consume_inloop": "not an asyncio client",
    }

    def __init__(self, broker: Broker) -> None:
        import pika

        self.pika = pika
        self.params = pika.ConnectionParameters(
            host=broker.host, port=broker.port, virtual_host=broker.vhost, heartbeat=60,
            credentials=pika.PlainCredentials(broker.user, broker.password))

    @contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.pika.BlockingConnection(self.params)
        try:
            yield conn
        finally:
            if conn.is_open:
                conn.close()

    def properties(self, task: Task) -> Any:
        return self.pika.BasicProperties(content_type="application/json",
                                         content_encoding="utf-8",
                                         delivery_mode=task.delivery_mode, priority=0,
                                         correlation_id=task.task_id, headers=task.headers)

    def declare(self, q: str) -> None:
        with self.connection() as conn:
            conn.channel().queue_declare(q, durable=True, auto_delete=False, arguments=QUEUE_ARGS)

    def count(self, q: str) -> int:
        with self.connection() as conn:
            return int(conn.channel().queue_declare(q, passive=True).method.message_count)

    def delete(self, q: str) -> None:
        with self.connection() as conn:
            conn.channel().queue_delete(q)

    def publish_sync(self, q: str, tasks: list[Task]) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            start = time.perf_counter()
            for task in tasks:  # raises NackError / UnroutableError, else the broker has it
                ch.basic_publish("", q, task.body, self.properties(task))
            return time.perf_counter() - start

    def publish_noconfirm(self, q: str, tasks: list[Task]) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            start = time.perf_counter()
            for task in tasks:
                ch.basic_publish("", q, task.body, self.properties(task))
            ch.queue_declare(q, passive=True)
            return time.perf_counter() - start

    def consume(self, q: str, n: int, prefetch: int, ack_every: int) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=prefetch)
            got = 0

            def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
                nonlocal got
                got += 1
                if ack_every <= 1:
                    channel.basic_ack(method.delivery_tag)
                elif got % ack_every == 0 or got == n:
                    channel.basic_ack(method.delivery_tag, multiple=True)

            start = time.perf_counter()
            ch.basic_consume(q, on_message, auto_ack=False)
            while got < n:
                conn.process_data_events(time_limit=30)
            elapsed = time.perf_counter() - start
            return elapsed

    def consume_get(self, q: str, n: int) -> float:
        with self.connection() as conn:
            ch = conn.channel()
            start = time.perf_counter()
            for _ in range(n):
                method, _props, _body = ch.basic_get(q, auto_ack=False)
                if method is None:
                    raise RuntimeError(f"{q} empty before {n} messages")
                ch.basic_ack(method.delivery_tag)
            ch.queue_declare(q, passive=True)
            return time.perf_counter() - start

    def round_trips(self, qa: str, qb: str, tasks: list[Task], warmup: int) -> list[float]:
        ready, stop, errors = threading.Event(), threading.Event(), []
        pika = self.pika

        def worker() -> None:
            try:
                with self.connection() as conn:
                    ch = conn.channel()
                    ch.basic_qos(prefetch_count=100)

                    def on_request(channel: Any, method: Any, props: Any, body: bytes) -> None:
                        channel.basic_ack(method.delivery_tag)
                        reply = pika.BasicProperties(content_type="application/json",
                                                     correlation_id=props.correlation_id)
                        channel.basic_publish("", qb, b'{"status": "SUCCESS", "result": null}',
                                              reply)

                    ch.basic_consume(qa, on_request, auto_ack=False)
                    ready.set()
                    while not stop.is_set():
                        conn.process_data_events(time_limit=0.2)
            except Exception as exc:  # noqa: BLE001 - reported by the producer side
                errors.append(exc)
                ready.set()

        thread = threading.Thread(target=worker, name="pika-rtt-worker", daemon=True)
        thread.start()
        ready.wait(30)
        times: list[float] = []
        try:
            with self.connection() as conn:
                ch = conn.channel()
                ch.confirm_delivery()
                replies: list[str] = []
                ch.basic_consume(qb, lambda c, m, p, b: replies.append(p.correlation_id),
                                 auto_ack=True)
                for i, task in enumerate(tasks):
                    start = time.perf_counter()
                    ch.basic_publish("", qa, task.body, self.properties(task))
                    while not replies:
                        conn.process_data_events(time_limit=10)
                    elapsed = time.perf_counter() - start
                    if replies.pop() != task.task_id:
                        raise RuntimeError("reply out of order")
                    if i >= warmup:
                        times.append(elapsed)
        finally:
            stop.set()
            thread.join(10)
        if errors:
            raise errors[0]
        return times


# ---- aio-pika, from threads, through a loop a background thread owns --------------------------
class AioPikaThreaded(Client):
    name = "aio-pika"
    module = "aio_pika"
    unsupported: dict[str, str] = {}

    def __init__(self, broker: Broker) -> None:
        import asyncio

        import aio_pika

        self.asyncio = asyncio
        self.aio_pika = aio_pika
        b = broker
        self.url = (f"amqp://{b.user}:{b.password}@{b.host}:{b.port}/"
                    f"{'' if b.vhost == '/' else b.vhost}?heartbeat=60")

    @contextmanager
    def loop_connection(self) -> Iterator[tuple[Any, Callable[..., Any], Callable[..., Any]]]:
        """A loop in its own thread with one connection; yields (connection, run, submit):
        ``run(coro)`` waits for the coroutine's result, ``submit(coro)`` returns its future."""
        asyncio = self.asyncio
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="aio-pika-loop", daemon=True)
        thread.start()

        def submit(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop)

        def run(coro: Any, timeout: float = 60) -> Any:
            return submit(coro).result(timeout)

        conn = run(self.aio_pika.connect(self.url))
        try:
            yield conn, run, submit
        finally:
            try:
                run(conn.close())
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                loop.close()

    @staticmethod
    async def open_channel(conn: Any, publisher_confirms: bool) -> Any:
        """Channels are made inside the loop (their constructor needs the running loop)."""
        return await conn.channel(publisher_confirms=publisher_confirms)

    def message(self, task: Task) -> Any:
        return self.aio_pika.Message(task.body, content_type="application/json",
                                     content_encoding="utf-8",
                                     delivery_mode=self.aio_pika.DeliveryMode(task.delivery_mode),
                                     priority=0, correlation_id=task.task_id,
                                     headers=task.headers)

    def declare(self, q: str) -> None:
        async def go(conn: Any) -> None:
            ch = await conn.channel()
            await ch.declare_queue(q, durable=True, arguments=QUEUE_ARGS)

        with self.loop_connection() as (conn, run, _submit):
            run(go(conn))

    def count(self, q: str) -> int:
        async def go(conn: Any) -> int:
            ch = await conn.channel()
            queue = await ch.declare_queue(q, passive=True)
            return int(queue.declaration_result.message_count)

        with self.loop_connection() as (conn, run, _submit):
            return int(run(go(conn)))

    def delete(self, q: str) -> None:
        async def go(conn: Any) -> None:
            ch = await conn.channel()
            await ch.queue_delete(q)

        with self.loop_connection() as (conn, run, _submit):
            run(go(conn))

    def publish_sync(self, q: str, tasks: list[Task]) -> float:
        with self.loop_connection() as (conn, run, _submit):
            ch = run(self.open_channel(conn, True))
            exchange = ch.default_exchange
            start = time.perf_counter()
            for task in tasks:  # the publish coroutine returns once the broker acked
                run(exchange.publish(self.message(task), routing_key=q))
            return time.perf_counter() - start

    def publish_pipelined(self, q: str, tasks: list[Task], batch: int) -> float:
        asyncio = self.asyncio

        async def publish_all(exchange: Any, messages: list[Any]) -> None:
            await asyncio.gather(*(exchange.publish(m, routing_key=q) for m in messages))

        with self.loop_connection() as (conn, run, _submit):
            ch = run(self.open_channel(conn, True))
            exchange = ch.default_exchange
            start = time.perf_counter()
            for i in range(0, len(tasks), batch):
                run(publish_all(exchange, [self.message(t) for t in tasks[i:i + batch]]))
            return time.perf_counter() - start

    def publish_noconfirm(self, q: str, tasks: list[Task]) -> float:
        with self.loop_connection() as (conn, run, _submit):
            ch = run(self.open_channel(conn, False))
            exchange = ch.default_exchange
            start = time.perf_counter()
            for task in tasks:
                run(exchange.publish(self.message(task), routing_key=q))
            run(ch.declare_queue(q, passive=True))
            return time.perf_counter() - start

    def consume(self, q: str, n: int, prefetch: int, ack_every: int) -> float:
        """The worker is this thread: deliveries come through a queue.Queue, acks go back to
        the loop as coroutines (not waited for, except the last)."""
        inbox: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()

        async def on_message(message: Any) -> None:
            inbox.put(message)

        async def start_consuming(conn: Any) -> None:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=prefetch)
            queue = await ch.get_queue(q, ensure=False)
            await queue.consume(on_message, no_ack=False)

        with self.loop_connection() as (conn, run, submit):
            start = time.perf_counter()
            run(start_consuming(conn))
            future = None
            for got in range(1, n + 1):
                message = inbox.get(timeout=30)
                if ack_every <= 1:
                    future = submit(message.ack())
                elif got % ack_every == 0 or got == n:
                    future = submit(message.ack(multiple=True))
            if future is not None:
                future.result(30)
            return time.perf_counter() - start

    def consume_inloop(self, q: str, n: int, prefetch: int) -> float:
        asyncio = self.asyncio

        async def drain(conn: Any) -> float:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=prefetch)
            queue = await ch.get_queue(q, ensure=False)
            done = asyncio.Event()
            got = 0

            async def on_message(message: Any) -> None:
                nonlocal got
                await message.ack()
                got += 1
                if got == n:
                    done.set()

            start = time.perf_counter()
            await queue.consume(on_message, no_ack=False)
            await asyncio.wait_for(done.wait(), 60)
            return time.perf_counter() - start

        with self.loop_connection() as (conn, run, _submit):
            return float(run(drain(conn), timeout=90))

    def consume_get(self, q: str, n: int) -> float:
        async def get_n(conn: Any) -> None:
            ch = await conn.channel()
            queue = await ch.get_queue(q, ensure=False)
            for _ in range(n):
                message = await queue.get(no_ack=False, fail=True)
                await message.ack()
            await ch.declare_queue(q, passive=True)

        with self.loop_connection() as (conn, run, _submit):
            start = time.perf_counter()
            run(get_n(conn), timeout=120)
            return time.perf_counter() - start

    def round_trips(self, qa: str, qb: str, tasks: list[Task], warmup: int) -> list[float]:
        requests: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        replies: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        stop, errors = threading.Event(), []
        aio_pika = self.aio_pika

        async def put(target: queue_mod.SimpleQueue[Any], message: Any) -> None:
            target.put(message)

        times: list[float] = []
        worker_conns: list[Any] = []
        with self.loop_connection() as (conn, run, submit):
            async def setup_async() -> tuple[Any, Any]:
                worker_conn = await aio_pika.connect(self.url)  # its own, as in the others
                worker_conns.append(worker_conn)
                worker_ch = await worker_conn.channel(publisher_confirms=False)
                await worker_ch.set_qos(prefetch_count=100)
                queue_a = await worker_ch.get_queue(qa, ensure=False)
                await queue_a.consume(lambda m: put(requests, m), no_ack=False)
                producer_ch = await conn.channel(publisher_confirms=True)
                queue_b = await producer_ch.get_queue(qb, ensure=False)
                await queue_b.consume(lambda m: put(replies, m), no_ack=True)
                return worker_ch.default_exchange, producer_ch.default_exchange

            worker_exchange, producer_exchange = run(setup_async())

            def worker() -> None:
                try:
                    while not stop.is_set():
                        try:
                            message = requests.get(timeout=0.2)
                        except queue_mod.Empty:
                            continue
                        submit(message.ack())  # not waited for
                        reply = aio_pika.Message(b'{"status": "SUCCESS", "result": null}',
                                                 content_type="application/json",
                                                 correlation_id=message.correlation_id)
                        run(worker_exchange.publish(reply, routing_key=qb))
                except Exception as exc:  # noqa: BLE001 - reported by the producer side
                    errors.append(exc)

            thread = threading.Thread(target=worker, name="aio-pika-rtt-worker", daemon=True)
            thread.start()
            try:
                for i, task in enumerate(tasks):
                    start = time.perf_counter()
                    run(producer_exchange.publish(self.message(task), routing_key=qa))
                    reply = replies.get(timeout=10)
                    elapsed = time.perf_counter() - start
                    if reply.correlation_id != task.task_id:
                        raise RuntimeError("reply out of order")
                    if i >= warmup:
                        times.append(elapsed)
            finally:
                stop.set()
                thread.join(10)
                for worker_conn in worker_conns:
                    run(worker_conn.close())
        if errors:
            raise errors[0]
        return times


CLIENTS: dict[str, type[Client]] = {"amqp": PyAmqp, "pika": PikaBlocking,
                                     "aio-pika": AioPikaThreaded}


# ---- the runner --------------------------------------------------------------------------------
def run_measure(client: Client, measure: str, s: Settings) -> dict[str, float]:
    """One measure for one client on fresh queues; returns {row: value}."""
    if measure.startswith("rtt"):
        qa, qb = queue_name(client.name, "rtt-a"), queue_name(client.name, "rtt-b")
        client.declare(qa)
        client.declare(qb)
        try:
            tasks = make_tasks(s.samples + s.warmup, s.delivery_mode)
            times = sorted(client.round_trips(qa, qb, tasks, s.warmup))
        finally:
            client.delete(qa)
            client.delete(qb)
        return {"rtt_p50": percentile(times, 50) * 1000, "rtt_p99": percentile(times, 99) * 1000}
    q = queue_name(client.name, measure)
    client.declare(q)
    try:
        if measure.startswith("publish"):
            n = s.sync_messages if measure == "publish_sync" else s.messages
            tasks = make_tasks(n, s.delivery_mode)
            if measure == "publish_sync":
                elapsed = client.publish_sync(q, tasks)
            elif measure == "publish_pipelined":
                elapsed = client.publish_pipelined(q, tasks, s.batch)
            else:
                elapsed = client.publish_noconfirm(q, tasks)
            deadline = time.monotonic() + 30
            while (count := client.count(q)) < n and time.monotonic() < deadline:
                time.sleep(0.05)  # only the no-confirm reference may still be arriving
            if count != n:
                raise RuntimeError(f"{q}: {count} messages on the queue, {n} published")
            return {measure: n / elapsed}
        n = s.messages // 4 if measure == "consume_get" else s.messages
        client.fill(q, make_tasks(n, s.delivery_mode))
        if measure == "consume_get":
            elapsed = client.consume_get(q, n)
        elif measure == "consume_inloop":
            elapsed = client.consume_inloop(q, n, s.prefetch)
        else:
            ack_every = 1 if measure == "consume_ack1" else s.ack_every
            elapsed = client.consume(q, n, s.prefetch, ack_every)
        return {measure: n / elapsed}
    finally:
        client.delete(q)


def summary(values: list[float], unit: str) -> str:
    if not values:
        return "-"
    fmt = "{:,.0f}" if unit == "msgs/s" else "{:.3f}"
    med = fmt.format(statistics.median(values))
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000,
                        help="messages per publish and consume measure (basic.get: a quarter)")
    parser.add_argument("--sync-messages", type=int, default=None,
                        help="messages for 'publish, confirm each' (default: --messages)")
    parser.add_argument("--batch", type=int, default=500, help="pipelined confirm batch size")
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--ack-every", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2000, help="timed round trips")
    parser.add_argument("--warmup", type=int, default=200, help="untimed round trips first")
    parser.add_argument("--clients", default=",".join(CLIENT_ORDER),
                        help="comma-separated, of: " + ", ".join(CLIENT_ORDER))
    parser.add_argument("--only", default="",
                        help="comma-separated measures: publish_sync, publish_pipelined, "
                             "publish_noconfirm, consume_ack1, consume_ack50, consume_inloop, "
                             "consume_get, rtt")
    parser.add_argument("--delivery-mode", type=int, choices=(1, 2), default=2,
                        help="2 persistent (Celery's default), 1 transient (no fsync)")
    parser.add_argument("--json", default="", help="write the raw figures to this file")
    args = parser.parse_args(argv)
    settings = Settings(args.messages, args.sync_messages or args.messages, args.batch,
                        args.prefetch, args.ack_every, args.samples, args.warmup,
                        args.delivery_mode)
    broker = Broker.from_url(args.url)

    clients: list[Client] = []
    versions: dict[str, str] = {}
    for name in args.clients.split(","):
        name = name.strip()
        if name not in CLIENTS:
            parser.error(f"unknown client {name!r}")
        try:
            client = CLIENTS[name](broker)
        except ImportError as exc:
            print(f"skipping {name}: not installed here ({exc})", flush=True)
            continue
        clients.append(client)
        versions[name] = metadata.version(name)
    if not clients:
        print("no client installed: pip install amqp pika aio-pika", flush=True)
        return 1

    measures = ["publish_sync", "publish_pipelined", "publish_noconfirm", "consume_ack1",
                "consume_ack50", "consume_inloop", "consume_get", "rtt"]
    if args.only:
        wanted = {m.strip() for m in args.only.split(",")}
        measures = [m for m in measures if m in wanted]
    results: dict[str, dict[str, list[float]]] = {c.name: {} for c in clients}
    errors: list[str] = []
    load_before = load_average()
    started = datetime.now()
    log(f"{started:%Y-%m-%d %H:%M} {platform.node()} python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, load {load_before}; clients: "
        + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for rnd in range(args.rounds):
        order = clients[rnd % len(clients):] + clients[:rnd % len(clients)]
        for measure in measures:
            for client in order:
                if measure in client.unsupported:
                    continue
                try:
                    values = run_measure(client, measure, settings)
                except Exception as exc:  # noqa: BLE001 - one failure must not end the run
                    errors.append(f"round {rnd + 1} {client.name} {measure}: {exc!r}")
                    log("  ERROR " + errors[-1])
                    continue
                for row, value in values.items():
                    results[client.name].setdefault(row, []).append(value)
                shown = ", ".join(f"{k} {v:,.3f}" if k.startswith("rtt") else f"{k} {v:,.0f}"
                                  for k, v in values.items())
                log(f"round {rnd + 1} {client.name:9} {shown}")

    names = [c.name for c in clients]
    print()
    print(f"AMQP clients, {started:%Y-%m-%d %H:%M}, {args.rounds} rounds, "
          f"python {platform.python_version()}, {os.cpu_count()} cpus, "
          f"load before {load_before}, after {load_average()}")
    print("clients: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"N={settings.messages} (confirm each: {settings.sync_messages}; basic.get: "
          f"{settings.messages // 4}), batch {settings.batch}, prefetch {settings.prefetch}, "
          f"round trips {settings.samples} (+{settings.warmup} warm-up), delivery mode "
          f"{settings.delivery_mode}; median (min-max)")
    print()
    print("| measure | unit | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row, label, unit in MEASURES:
        if not any(row in results[n] for n in names):
            continue
        cells = []
        for client in clients:
            if row in client.unsupported:
                cells.append("n/a")
            else:
                cells.append(summary(results[client.name].get(row, []), unit))
        print(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    for client in clients:
        for row, why in client.unsupported.items():
            print(f"- {client.name}, {row}: n/a, {why}")
    for error in errors:
        print("ERROR " + error)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started.isoformat(), "versions": versions,
                       "settings": settings.__dict__, "results": results, "errors": errors},
                      fh, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
