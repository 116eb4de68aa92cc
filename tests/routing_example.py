"""Issue 12's routing example (a topic exchange ``tasks``, queues bound with ``task.#`` and
``feed.#``), applied the same way to a celeriac or a Celery app: the Queue class is the caller's,
so this module imports neither."""

from __future__ import annotations

from typing import Any, Callable


def use_issue_routing(conf: Any, queue: Callable[..., Any]) -> None:
    """Set ``conf`` (an app's settings) to the example's queues and defaults."""
    conf.task_default_queue = "default"
    conf.task_queues = (queue("default", routing_key="task.#"),
                        queue("feed_tasks", routing_key="feed.#"))
    conf.task_default_exchange = "tasks"
    conf.task_default_exchange_type = "topic"
    conf.task_default_routing_key = "task.default"
