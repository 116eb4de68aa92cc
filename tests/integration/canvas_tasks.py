"""Tasks the workflow tests run in real worker subprocesses (broker URL from the environment)."""

from __future__ import annotations

import os
import time

from celeriac import Celery

app = Celery("tests.integration.canvas_tasks")


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(values):
    return sum(values)


@app.task
def collect(values):
    """Returns what the chord body was given, so tests can check the order and the nesting."""
    return values


@app.task
def identity(value):
    return value


@app.task
def slow_identity(value, seconds):
    time.sleep(seconds)
    return value


@app.task
def fail(*args, message="boom"):
    raise ValueError(message)


@app.task(bind=True)
def lineage(self, *previous):
    r = self.request
    return {"id": r.id, "root_id": r.root_id, "parent_id": r.parent_id, "group": r.group,
            "group_index": r.group_index}


@app.task
def record(task_id, path):
    """Old-style errback/callback: gets the failed task's id (or a result) first."""
    with open(path, "a") as fh:
        fh.write(f"old {task_id}\n")
    return task_id


@app.task
def record_new_style(request, exc, traceback, path):
    """New-style errback: runs in the worker process with the failed request."""
    with open(path, "a") as fh:
        fh.write(f"new {request.id} {type(exc).__name__}\n")


@app.task
def spawn_children(n):
    """Sends ``n`` tasks from inside a task: they become its children."""
    return [lineage.delay().id for _ in range(n)]


@app.task
def no_arguments():
    return "none taken"


@app.task
def pid(_=None):
    return os.getpid()
