"""Tasks for ``celeriac demo``; the broker URL comes from CELERIAC_BROKER_URL set by the demo."""

from __future__ import annotations

from celeriac import Celery

app = Celery("celeriac.cli.demo_tasks")
# extended results record each task's retry count (Celery's meta["retries"]): the demo reads them
# to report how many retries the worker really did
app.conf.result_extended = True


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def checked_div(x: int, y: int) -> float:
    """Fails on purpose when y is 0, so the demo shows failures being recorded."""
    if y == 0:
        raise ValueError(f"cannot divide {x} by zero (a deliberate demo failure)")
    return x / y


@app.task(bind=True, max_retries=2)
def flaky(self, n: int) -> int:
    """Retries once (0.05 s later) before succeeding, so the demo shows retries."""
    if self.request.retries == 0:
        raise self.retry(countdown=0.05, exc=RuntimeError("first attempt fails"))
    return n
