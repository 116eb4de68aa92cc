"""Tasks for tests/integration/test_amqp_queue_arguments.py, run in real worker subprocesses
(broker and result store from the environment, as in app_tasks). The queues and their arguments
come from the environment too (``QUEUE_ARGUMENTS``: a JSON object of queue name -> arguments),
so the test and its workers declare them alike."""

from __future__ import annotations

import json
import os

from celeriac import Celery, Queue

app = Celery("tests.integration.queue_argument_tasks")
#: low, so a poison message is found after two deliveries that never finished
app.conf.worker_max_deliveries = 2
app.conf.task_queues = tuple(
    Queue(name, queue_arguments=arguments)
    for name, arguments in json.loads(os.environ.get("QUEUE_ARGUMENTS") or "{}").items()
) or None


@app.task
def add(x, y):
    return x + y


@app.task(acks_late=True)
def die_unless(path):
    """Kill the process running it (a solo worker: the worker itself) unless ``path`` exists."""
    if not os.path.exists(path):
        os._exit(1)
    return "survived"
