"""Tasks for tests/integration/test_stored_failures.py, run in real worker subprocesses (broker
and result store from the environment, as in app_tasks)."""

from __future__ import annotations

import os

from celeriac import Celery

app = Celery("tests.integration.stored_failure_tasks")
#: low, so a test can make a poison message with two failed deliveries of its own
app.conf.worker_max_deliveries = 2
if os.environ.get("STORED_FAILURE_EXTENDED"):
    # results in json, with the request's arguments (result_extended), from pickled messages
    app.conf.result_extended = True
    app.conf.accept_content = ["json", "pickle"]


class Opaque:
    """An argument pickle can send and the json result serializer cannot store."""

    def __repr__(self) -> str:
        return "<Opaque>"


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


@app.task(acks_late=True)
def type_of(value):
    return type(value).__name__


@app.task(acks_late=True)
def refuse(value):
    raise ValueError(f"refused {value!r}")


@app.task(acks_late=True)
def unencodable_from(value):
    return {1, 2}
