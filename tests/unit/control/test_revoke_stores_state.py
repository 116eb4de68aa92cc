"""A revoke stores REVOKED at once for a task that has not started anywhere, as a Celery 5.7
worker does (Celery's integration suite, test_revoke_keeps_state_of_task_started_elsewhere): a
caller waiting on a revoked task learns of it without waiting for its message to be taken."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest

from celeriac import Celery, states
from celeriac.testing import dispose_test_app, make_test_app, start_worker
from tests.waiting import wait_for

NODE = "revoker@unit"
ONE: dict[str, Any] = {"reply": True, "timeout": 5.0, "limit": 1}


@pytest.fixture
def app() -> Iterator[Celery]:
    app = make_test_app("revoke_state")
    yield app
    dispose_test_app(app)


@pytest.mark.parametrize("started_state", [states.STARTED, "PROGRESS"])
def test_a_revoke_stores_revoked_only_for_tasks_not_started_elsewhere(app, started_state):
    backend = app.backend
    backend.store_result("started-elsewhere", {"hostname": "other@host"}, started_state)
    backend.store_result("finished", 3, states.SUCCESS)
    backend.store_result("retrying", None, states.RETRY)
    with start_worker(app, pool="threads", concurrency=1, hostname=NODE,
                      perform_ping_check=False):
        # as a Celery client sends it (a broadcast only)
        app.control.broadcast("revoke", arguments={
            "task_id": ["started-elsewhere", "finished", "retrying", "never-sent"],
            "terminate": False, "signal": "SIGTERM"}, **ONE)
    assert backend.get_task_meta("started-elsewhere")["status"] == started_state
    assert backend.get_task_meta("finished")["status"] == states.SUCCESS
    assert backend.get_task_meta("retrying")["status"] == states.REVOKED
    assert backend.get_task_meta("never-sent")["status"] == states.REVOKED



def test_a_celeriac_clients_revoke_spares_the_task_running_here(app):
    """The worker running a revoked task does not store REVOKED over it (the task's own end
    decides); a queued one is REVOKED at once."""
    gate = threading.Event()

    @app.task(name="revoke_state.hold")
    def hold():
        gate.wait(10)
        return "done"

    with start_worker(app, pool="threads", concurrency=1, hostname=NODE,
                      perform_ping_check=False):
        running = hold.delay()
        wait_for(lambda: (app.control.inspect(timeout=1).active() or {}).get(NODE), 10,
                 message="never ran")
        app.control.revoke([running.id, "queued"], **ONE)
        assert app.backend.get_task_meta("queued")["status"] == states.REVOKED
        assert app.backend.get_task_meta(running.id)["status"] == states.PENDING
        gate.set()

