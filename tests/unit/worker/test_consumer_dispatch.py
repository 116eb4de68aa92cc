"""The consumer's dispatch loop, run by an in-process worker on the in-memory broker."""

from __future__ import annotations

import threading
import uuid

import pytest

from celeriac import Celery
from celeriac.worker.pools.threads import ThreadPool


@pytest.fixture
def refused(monkeypatch):
    """The pool refuses its first hand-over (as when a prefork child dies between "a slot is
    free" and the submit); the job ids it refused."""
    real_submit = ThreadPool.submit
    refused_ids = []

    def submit_refusing_once(self, job_id, message, delivery_info):
        if not refused_ids:
            refused_ids.append(job_id)
            return False
        return real_submit(self, job_id, message, delivery_info)

    monkeypatch.setattr(ThreadPool, "submit", submit_refusing_once)
    return refused_ids


@pytest.fixture
def app():
    url = f"memory://{uuid.uuid4().hex}"
    app = Celery("dispatch", broker=url, backend=url, set_as_current=False)
    yield app
    app.close()


def test_an_early_acked_task_whose_slot_vanished_still_runs(app, refused):
    """A prefork child can die between "a slot is free" and the hand-over: the task goes back to
    the front of the buffer. Its early ack already went through, so it must not be acked again
    (that ack would fail and the task would be given up as taken by another worker)."""

    @app.task(name="dispatch.add")
    def add(x, y):
        return x + y

    worker = app.Worker(pool="threads", concurrency=1, hostname="dispatch@test")
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert add.delay(2, 3).get(timeout=10) == 5
        assert refused  # the refusal did happen
    finally:
        worker.stop(warm=True)
        thread.join(10)


def test_a_job_put_back_after_a_refused_hand_over_is_announced_started_once(app, refused):
    """``on_started`` (task-started events, the pidbox's counts and start times) runs once per
    job, not again when a refused hand-over puts the job back in front."""
    from celeriac.worker.extensions import WorkerExtension

    @app.task(name="dispatch.mul")
    def mul(x, y):
        return x * y

    started = []

    class Starts(WorkerExtension):
        def on_started(self, job):
            started.append((job.task_id, job.started_at))

    app.worker_extensions.append(Starts())
    worker = app.Worker(pool="threads", concurrency=1, hostname="dispatch@test")
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        result = mul.delay(2, 3)
        assert result.get(timeout=10) == 6
        assert refused
        assert len(started) == 1 and started[0][0] == result.id and started[0][1] is not None
    finally:
        worker.stop(warm=True)
        thread.join(10)
