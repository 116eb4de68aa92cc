"""Tasks for tests/integration/test_stored_failures.py, run in real worker subprocesses (broker
and result store from the environment, as in app_tasks)."""

from __future__ import annotations

from celeriac import Celery

app = Celery("tests.integration.stored_failure_tasks")
#: low, so a test can make a poison message with two failed deliveries of its own
app.conf.worker_max_deliveries = 2


@app.task
def add(x, y):
    return x + y


@app.task
def unencodable():
    return {1, 2}  # a set: the default json result serializer cannot encode it


@app.task
async def unencodable_async():
    return {1, 2}


@app.task
def collect(values):
    return values
