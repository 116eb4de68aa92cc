"""The seed's errback example on a real worker: an errback that calls ``result.get()`` on the task
that failed gets the stored exception back instead of Celery's "Never call result.get() within a
task!", while a ``get()`` inside a task that would have to wait is still refused.

Real ``celeriac worker`` subprocesses (``start_worker``) on the test's own SQLite file.
"""

from __future__ import annotations

import uuid

import pytest

from celeriac import states
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
APP = "tests.integration.errback_tasks"


@pytest.fixture
def tasks(sqlite_url, task_module):
    return task_module("errback_tasks", sqlite_url)


def test_seed_errback_example_reads_the_failure(tasks, start_worker):
    worker = start_worker("-P", "prefork", "-c", "2", app=APP)
    # the seed's call, on a task that fails
    failed = tasks.div.apply_async((2, 0), link_error=tasks.error_handler.s())
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=TIMEOUT)
    # the errback ran in the worker, its get() returned the exception, and it printed it
    printed = f"Task {failed.id} raised exception: ZeroDivisionError('division by zero')"
    wait_for(lambda: printed in worker.log(), TIMEOUT,
             message=lambda: f"{printed!r} not in the worker log:\n{worker.log()}")
    worker.wait_for_log("Task tests.integration.errback_tasks.error_handler[")
    assert "Never call result.get()" not in worker.log()

    # the same reads, with the errback's own result to look at
    report = tasks.error_report.s()
    report_result = report.freeze()
    failed = tasks.div.apply_async((1, 0), link_error=report)
    info = report_result.get(timeout=TIMEOUT)
    assert info["uuid"] == failed.id
    assert info["type"] == "ZeroDivisionError"
    assert info["exc"] == "ZeroDivisionError('division by zero')"
    assert "ZeroDivisionError: division by zero" in info["traceback"]
    assert report_result.state == states.SUCCESS


def test_get_inside_a_task_on_a_result_not_ready_is_refused(tasks, start_worker):
    start_worker("-P", "threads", "-c", "2", app=APP)
    done = tasks.div.delay(6, 3)
    assert done.get(timeout=TIMEOUT) == 2
    assert tasks.get_other.delay(done.id).get(timeout=TIMEOUT) == 2  # ready: returned at once

    never_sent = str(uuid.uuid4())  # stays PENDING: the get() would have to wait
    refused = tasks.get_other.delay(never_sent)
    with pytest.raises(RuntimeError, match=r"Never call result\.get\(\) within a task!"):
        refused.get(timeout=TIMEOUT)
    assert refused.state == states.FAILURE
    assert "disable_sync_subtasks=False" in str(refused.result)
    assert "RuntimeError: Never call result.get() within a task!" in refused.traceback
