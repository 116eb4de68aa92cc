"""Shared helpers for the worker unit tests: raw task messages, a pool that holds jobs, and a
Consumer built the way ``Worker.start`` builds one, on a private ``memory://`` app.

Everything here is in-process; waiting is always on a condition with a deadline
(``tests.waiting.wait_for``), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from celeriac.protocol import v2
from celeriac.protocol.message import Message
from celeriac.transport.base import Delivery, Outgoing
from celeriac.worker.consumer import Consumer
from celeriac.worker.extensions import Expiry, WorkerExtension
from celeriac.worker.settlement import Settlement
from tests.waiting import wait_for

QUEUE = "celery"
#: a queue nobody publishes task messages to: a started consumer listens there, so the test
#: itself decides what reaches ``receive``
IDLE_QUEUE = "idle-for-tests"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def task_message(name: str, task_id: str | None = None, *, args: Sequence[Any] = (),
                 **options: Any) -> Message:
    """A protocol 2 task message, as a producer would send it."""
    return v2.encode_task(name=name, task_id=task_id or uuid.uuid4().hex, args=list(args),
                          **options)


def bare_message(headers: dict[str, Any], body: bytes = b'[[], {}, {}]',
                 content_type: str = "application/json") -> Message:
    return Message(body, content_type, "utf-8", dict(headers), {})


def delivery(message: Message, *, count: int = 1) -> Delivery:
    """A delivery that never touched a broker (for the pure admission steps)."""
    return Delivery(message, QUEUE, receipt=None, delivery_count=count, redelivered=count > 1)


def publish(app: Any, message: Message, queue: str = QUEUE) -> str:
    """Store ``message`` now (no ``not_before``: it is fetchable at once, whatever its eta)."""
    app.transport.publish([Outgoing(queue, message)])
    return message.headers.get("id")


def fetch_one(app: Any, queue: str = QUEUE, timeout: float = 5.0) -> Delivery:
    deliveries = app.transport.fetch([queue], 1, timeout)
    assert len(deliveries) == 1, f"nothing to fetch from {queue!r} within {timeout}s"
    return deliveries[0]


def dead_letters(app: Any) -> list[Any]:
    return app.transport.dead_letters()


class HoldingPool:
    """A pool that takes jobs and holds them: the test reports their outcome itself through
    ``Consumer.on_done``, as a real pool would."""

    def __init__(self, limit: int = 4) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        #: task id -> job id of every job submitted and not yet released
        self.held: dict[str, int] = {}
        self.submitted: list[str] = []

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        with self._lock:
            return self.limit - len(self.held)

    def submit(self, job_id: int, message: Message, delivery_info: dict) -> bool:
        with self._lock:
            self.held[message.headers["id"]] = job_id
            self.submitted.append(message.headers["id"])
        return True

    def release(self, task_id: str) -> int:
        with self._lock:
            return self.held.pop(task_id)

    def wait_for_job(self, task_id: str, timeout: float = 5.0) -> int:
        def submitted() -> int | None:
            with self._lock:
                return self.held.get(task_id)

        return wait_for(submitted, timeout, message=f"task {task_id} never reached the pool")

    def terminate(self, job_id: int, signum: int) -> bool:
        return False

    def stop(self, wait: bool = True) -> None:
        pass


def make_consumer(app: Any, *, pool: Any = None, queues: Sequence[str] = (QUEUE,),
                  settlement: type[Settlement] = Settlement,
                  extensions: Sequence[WorkerExtension] | None = None,
                  prefetch_multiplier: int = 1) -> Consumer:
    """A Consumer as the worker builds it (``Expiry`` is the worker's built-in extension)."""
    app.finalize()
    return Consumer(app, queues=list(queues), pool=pool or HoldingPool(),
                    hostname=f"unit-{uuid.uuid4().hex[:8]}@test",
                    prefetch_multiplier=prefetch_multiplier, settlement=settlement,
                    extensions=[Expiry()] if extensions is None else list(extensions))


@contextlib.contextmanager
def running_consumer(app: Any, pool: Any, **kwargs: Any) -> Iterator[Consumer]:
    """A started consumer whose fetch loop listens on ``IDLE_QUEUE`` only: its dispatch loop,
    acker, lease and revoke threads run, while the test feeds ``receive`` itself."""
    consumer = make_consumer(app, pool=pool, queues=(IDLE_QUEUE,), **kwargs)
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop_consuming()
        # The fetch loop waits in the broker for up to a second: a message on its queue wakes
        # it at once (it sees the shutdown and gives that message straight back).
        publish(app, task_message("unit.wake-up"), queue=IDLE_QUEUE)
        consumer.join()


def utc_in(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
