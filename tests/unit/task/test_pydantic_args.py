"""``@app.task(pydantic=True)`` (Celery 5.5): model-annotated arguments arrive as plain JSON and
are validated into the model; a returned model is stored dumped (``mode="json"``)."""

from __future__ import annotations

from typing import Optional

import pydantic
import pytest

from celeriac import states
from celeriac.testing import dispose_test_app, make_test_app, start_worker


class Numbers(pydantic.BaseModel):
    x: int
    y: int


class Total(pydantic.BaseModel):
    result: int


@pytest.fixture
def app():
    app = make_test_app("pydantic_args")

    @app.task(name="pyd.add", pydantic=True)
    def add(data: Numbers) -> Total:
        assert isinstance(data, Numbers)
        return Total(result=data.x + data.y)

    @app.task(name="pyd.add_named", pydantic=True)
    def add_named(data: "Numbers", extra: Optional[Numbers] = None) -> "Total":
        more = extra.x + extra.y if extra is not None else 0
        return Total(result=data.x + data.y + more)

    @app.task(name="pyd.bound", bind=True, pydantic=True, pydantic_strict=True)
    def bound(self, data: Numbers) -> int:
        return data.x

    @app.task(name="pyd.off")
    def off(data: Numbers):
        return type(data).__name__

    yield app
    dispose_test_app(app)


def test_a_worker_validates_json_arguments_and_dumps_the_model_result(app):
    with start_worker(app, pool="threads", concurrency=1):
        assert app.tasks["pyd.add"].delay({"x": 1, "y": 2}).get(timeout=10) == {"result": 3}
        assert app.tasks["pyd.add_named"].delay(
            {"x": 1, "y": 2}, extra={"x": 10, "y": 20}).get(timeout=10) == {"result": 33}
        assert app.tasks["pyd.add_named"].delay({"x": 1, "y": 2}).get(timeout=10) == {
            "result": 3}
        assert app.tasks["pyd.bound"].delay({"x": 7, "y": 0}).get(timeout=10) == 7
        # without the option, nothing is converted (as on Celery)
        assert app.tasks["pyd.off"].delay({"x": 1, "y": 2}).get(timeout=10) == "dict"


def test_invalid_arguments_fail_the_task_with_pydantics_error(app):
    with start_worker(app, pool="threads", concurrency=1):
        result = app.tasks["pyd.bound"].delay({"x": "7", "y": 0})  # strict: no str -> int
        exc = result.get(timeout=10, propagate=False)
        assert result.state == states.FAILURE
        assert type(exc).__name__ == "ValidationError"


def test_a_direct_call_validates_too(app):
    assert app.tasks["pyd.add"]({"x": 2, "y": 3}) == {"result": 5}
