"""Workflows run in-process: ``task_always_eager`` and ``.apply()`` give the same answers a worker
would, without a broker."""

from __future__ import annotations

import pytest

from celeriac import EagerResult, GroupResult, TaskSet, chain, chord, group


@pytest.fixture(params=[True, False], ids=["always_eager", "apply"])
def run(request, make_app):
    app = make_app(task_always_eager=request.param)

    @app.task(name="e.add")
    def add(x, y):
        return x + y

    @app.task(name="e.xsum")
    def xsum(values):
        return sum(values)

    @app.task(name="e.fail")
    def fail(*args):
        raise ValueError("eager boom")

    def go(canvas):
        return canvas.apply_async() if request.param else canvas.apply()

    go.tasks = app.tasks
    return go


def test_chain(run):
    add = run.tasks["e.add"]
    result = run(add.s(1, 1) | add.s(2) | add.s(3))
    assert result.get() == 7 and result.parent.get() == 4 and result.parent.parent.get() == 2


def test_group_and_chord(run):
    add, xsum = run.tasks["e.add"], run.tasks["e.xsum"]
    result = run(group(add.s(i, i) for i in range(4)))
    assert isinstance(result, GroupResult) and result.get() == [0, 2, 4, 6]
    assert all(isinstance(r, EagerResult) for r in result.results)
    assert result.ready() and result.successful() and result.completed_count() == 4
    assert run(chord([add.s(1, 1), add.s(2, 2)], xsum.s())).get() == 6
    assert run(add.s(1, 1) | group(add.s(1), add.s(2)) | xsum.s()).get() == 7


def test_map_and_chunks(run):
    add = run.tasks["e.add"]
    assert run(add.starmap([(1, 2), (3, 4)])).get() == [3, 7]
    assert run(add.chunks([(1, 1), (2, 2), (3, 3)], 2)).get() == [[2, 4], [6]]


def test_a_failure_in_a_group(run):
    add, fail = run.tasks["e.add"], run.tasks["e.fail"]
    result = run(group(add.s(1, 1), fail.s()))
    values = result.get(propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError)
    assert result.failed()
    with pytest.raises(ValueError, match="eager boom"):
        result.get()


def test_taskset_apply(run):
    add = run.tasks["e.add"]
    result = TaskSet(tasks=[add.s(1, 1), add.s(2, 2)]).apply()
    assert result.join() == [2, 4] and result.total == 2


def test_a_chain_link_runs_once_after_the_last_step(run):
    add = run.tasks["e.add"]
    seen = []

    @add.app.task(name="e.record")
    def record(value):
        seen.append(value)

    steps = add.s(1, 1) | add.s(1) | add.s(1)
    steps.link(record.s())
    assert run(steps).get() == 4
    if add.app.conf.task_always_eager:
        assert seen == [4]
    else:  # .apply() runs the chain here; its callback is sent, as on Celery
        sent = add.app.transport.fetch(["celery"], 10, 0.1)
        assert [d.message.headers["task"] for d in sent] == ["e.record"]


def test_chain_apply_passes_results(run):
    add = run.tasks["e.add"]
    assert chain(add.s(1), add.s(10)).apply((1,)).get() == 12
