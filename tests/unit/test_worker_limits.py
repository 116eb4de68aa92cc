"""Which time limits apply to a message: the call's, else the task's, else the settings'."""

from __future__ import annotations

import asyncio

import pytest

from celeriac import Celery
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.worker.limits import limits_for, run_with_limits


@pytest.fixture
def app():
    app = Celery("limits", broker="memory://limits", backend="memory://limits",
                 task_time_limit=30, task_soft_time_limit=20, set_as_current=False)
    yield app
    app.close()


def test_precedence_call_then_task_then_settings(app):
    @app.task(time_limit=9)
    def with_task_limit():
        pass

    assert limits_for(app, with_task_limit, {"timelimit": [3, 2]}) == (3.0, 2.0)
    assert limits_for(app, with_task_limit, {"timelimit": [None, None]}) == (9.0, 20.0)
    assert limits_for(app, None, {}) == (30.0, 20.0)


def test_async_soft_limit_is_raised_at_the_await():
    async def body():
        try:
            await asyncio.sleep(5)
        except SoftTimeLimitExceeded:
            return "caught"
        return "slept"

    assert asyncio.run(run_with_limits(body(), 0.05, None)) == "caught"


def test_async_hard_limit_cancels():
    async def body():
        await asyncio.sleep(5)

    with pytest.raises(TimeLimitExceeded):
        asyncio.run(run_with_limits(body(), None, 0.05))
