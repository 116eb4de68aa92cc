"""The Dramatiq 2 twin of bench/bench_tasks.py, for bench/peers.py. Layer: bench.

Imported only by Dramatiq processes in the benchmark's own virtualenv (bench/.venv-dramatiq),
never by celeriac or pytest. The broker comes from CELERIAC_BROKER_URL (``amqp://`` for
RabbitMQ, ``redis://`` for Redis), the result store from CELERIAC_RESULT_BACKEND (Redis), as for
the other apps, so one runner drives every side. Dramatiq's defaults otherwise; the additions a
result-storing comparison needs are the Results middleware (a Redis backend) and GroupCallbacks
(the group completion callback, its barrier in the same Redis).

Dramatiq stores only a task's return value, not when it finished, so ``noop`` returns the
wall-clock time it ran at: the runner times drains from those, as it times celeriac's and
Celery's from the ``date_done`` their workers stamp.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from dramatiq.middleware.group_callbacks import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.ready_file import write_ready_time  # standard library only: no celeriac here

BROKER_URL = os.environ.get("CELERIAC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672")
RESULT_URL = os.environ.get("CELERIAC_RESULT_BACKEND", "redis://127.0.0.1:6379/9")


class ReadyFile(Middleware):
    """Writes the time the first worker process of a ``dramatiq`` command became ready (its
    consumers and worker threads are running by ``after_worker_boot``)."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        write_ready_time()


if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: Any = RabbitmqBroker(url=BROKER_URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL)
result_backend = RedisBackend(url=RESULT_URL)
broker.add_middleware(Results(backend=result_backend))
broker.add_middleware(GroupCallbacks(RedisRateLimiterBackend(url=RESULT_URL)))
broker.add_middleware(ReadyFile())
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop() -> float:
    """Does nothing but say when it ran (Dramatiq's result store keeps no finish time)."""
    return time.time()


@dramatiq.actor(store_results=True)
def done() -> float:
    """A group's completion callback: when it ran (Dramatiq passes it no results)."""
    return time.time()
