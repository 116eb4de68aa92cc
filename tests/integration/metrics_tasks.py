"""Tasks for tests/integration/test_metrics.py: one that succeeds, one that fails."""

from __future__ import annotations

from celeriac import Celery

# heartbeats every 0.2 s: the endpoint's last-heartbeat gauge shows up at once
app = Celery("tests.integration.metrics_tasks", worker_heartbeat_interval=0.2)


@app.task
def ok(x):
    return x


@app.task
def broken():
    raise ValueError("broken on purpose")
