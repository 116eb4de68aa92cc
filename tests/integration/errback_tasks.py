"""Tasks for test_errback_get.py, run by a real worker subprocess (broker URL from the
environment): the seed's errback example, which calls ``result.get()`` inside a task."""

from __future__ import annotations

from celeriac import Celery
from celeriac.result import AsyncResult

app = Celery("tests.integration.errback_tasks")


@app.task
def div(x, y):
    return x / y


# The seed's errback, as written there (it reads the failed task's stored outcome).
@app.task
def error_handler(uuid):
    result = AsyncResult(uuid)
    exc = result.get(propagate=False)
    print('Task {0} raised exception: {1!r}\n{2!r}'.format(uuid, exc, result.traceback))


@app.task
def error_report(uuid):
    """The same reads as ``error_handler``, returned for the test to check."""
    result = AsyncResult(uuid)
    exc = result.get(propagate=False)
    return {"uuid": uuid, "exc": repr(exc), "type": type(exc).__name__,
            "traceback": result.traceback}


@app.task
def get_other(task_id):
    """``get()`` on another task's result from inside a task (refused unless it is ready)."""
    return AsyncResult(task_id).get(timeout=5)
