"""App modules for the broker-side delay tests on RabbitMQ (``test_amqp_delayed.py``): the same
task, ``delayed.stamp``, on a celeriac app (``celeriac_app``) and on a real Celery app
(``celery_app``, imported only when asked for), both with the queue ``celery`` as a quorum queue.

Environment: ``DELAYED_BROKER_URL`` (the test's vhost), ``DELAYED_LOG`` (the file each run of
the task appends a JSON line to: its id, when it ran, its ``eta`` header and routing key) and
``DELAYED_EXCHANGE_TYPE`` (``topic``: the queue's exchange ``celery`` is a topic exchange, where
Celery 5.5+ delays on the broker; ``direct``: Celery's default exchange).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

BROKER = os.environ.get("DELAYED_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
LOG = os.environ.get("DELAYED_LOG", "/tmp/celeriac-delayed.log")
EXCHANGE_TYPE = os.environ.get("DELAYED_EXCHANGE_TYPE", "topic")
QUORUM = {"x-queue-type": "quorum"}


def _stamp(request: Any, side: str) -> None:
    eta = request.eta
    line = {"id": request.id, "ran_at": time.time(), "side": side,
            "eta": eta.isoformat() if hasattr(eta, "isoformat") else eta,
            "routing_key": (request.delivery_info or {}).get("routing_key")}
    with open(LOG, "a") as log:
        log.write(json.dumps(line) + "\n")


def _queues(queue_class: Any, exchange_class: Any) -> list[Any]:
    if EXCHANGE_TYPE == "topic":
        return [queue_class("celery", exchange_class("celery", type="topic"),
                            routing_key="celery", queue_arguments=QUORUM)]
    return [queue_class("celery", queue_arguments=QUORUM)]


def _celeriac_app() -> Any:
    from celeriac import Celery, Exchange, Queue

    app = Celery("delayed", broker=BROKER, backend=f"sqlite:///{LOG}.db", set_as_current=False)
    app.conf.task_queues = _queues(Queue, Exchange)

    @app.task(name="delayed.stamp", bind=True)
    def stamp(self: Any) -> None:
        _stamp(self.request, "celeriac")

    return app


def _celery_app() -> Any:
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("delayed", broker=BROKER)
    app.conf.update(task_queues=_queues(Queue, Exchange), worker_hijack_root_logger=True,
                    broker_connection_retry_on_startup=True, task_ignore_result=True)

    @app.task(name="delayed.stamp", bind=True)
    def stamp(self: Any) -> None:
        _stamp(self.request, "celery")

    return app


_APPS: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``celeriac_app`` and ``celery_app``, each built once, when first asked for."""
    build = {"celeriac_app": _celeriac_app, "celery_app": _celery_app}.get(name)
    if build is None:
        raise AttributeError(name)
    if name not in _APPS:
        _APPS[name] = build()
    return _APPS[name]
