"""Workflows end to end: chain, group, chord, map/starmap/chunks, nesting, failures and the
TaskSet API, run by a real prefork worker on each broker of tests/integration/conftest.py: the
embedded SQLite broker, a real Redis and a real RabbitMQ (results in SQLite).

One worker per broker serves the whole module (starting one per test would cost more than the
tests). Every test builds its canvas with the public API, as a Celery user would.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from celeriac import GroupResult, TaskSet, TaskSetResult, chain, chord, group, states, subtask
from celeriac.exceptions import ChordError, TaskRevokedError
from tests.conftest import WorkerProcess
from tests.integration.conftest import BROKERS, open_broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
#: Redis databases for this module (worker tests use 1-4, contract 9-10, interop 12-15)
CANVAS_DBS = (5, 6)


@pytest.fixture(scope="module", params=BROKERS)
def canvas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[SimpleNamespace]:
    """The client app, its tasks module and a running ``-P prefork -c 2`` worker."""
    from tests.integration import canvas_tasks

    tmp = tmp_path_factory.mktemp(f"canvas-{request.param}")
    with open_broker(request.param, tmp, CANVAS_DBS) as broker:
        app = canvas_tasks.app
        app.conf.update(broker_url=broker.url, result_backend=broker.backend)
        app.close()
        worker = WorkerProcess("tests.integration.canvas_tasks", broker.url, tmp / "worker.log",
                               "-P", "prefork", "-c", "2", env=broker.worker_env())
        try:
            worker.wait_ready()
            yield SimpleNamespace(app=app, t=canvas_tasks, worker=worker, tmp=tmp,
                                  broker=broker)
        finally:
            worker.stop()
            app.close()
            app.conf.update(broker_url=None, result_backend=None)


def _wait_for_lines(path: Path, count: int, timeout: float = TIMEOUT) -> list[str]:
    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    def enough() -> list[str] | None:
        got = lines()
        return got if len(got) >= count else None

    return wait_for(enough, timeout, interval=0.05,
                    message=lambda: f"{path} has {lines()!r}, expected {count} line(s)")


# ---- chain ---------------------------------------------------------------------------------------
def test_chain_passes_each_result_on_and_links_parents(canvas):
    t = canvas.t
    result = (t.add.s(2, 2) | t.add.s(4) | t.mul.s(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 80
    assert result.parent.get(timeout=TIMEOUT) == 8
    assert result.parent.parent.get(timeout=TIMEOUT) == 4
    assert result.parent.parent.parent is None
    # partial args go to the first step; an immutable step ignores the previous result
    assert chain(t.add.s(1), t.add.si(5, 5), t.add.s(1))(1).get(timeout=TIMEOUT) == 11


def test_chain_steps_see_root_and_parent_and_list_their_children(canvas):
    t = canvas.t
    last = (t.lineage.s() | t.lineage.s() | t.lineage.s())()
    steps = [last.parent.parent, last.parent, last]
    seen = [step.get(timeout=TIMEOUT) for step in steps]
    assert [s["id"] for s in seen] == [step.id for step in steps]
    assert [s["root_id"] for s in seen] == [steps[0].id] * 3
    assert [s["parent_id"] for s in seen] == [None, steps[0].id, steps[1].id]
    assert steps[0].children == [steps[1]] and steps[1].children == [steps[2]]


def test_tasks_sent_from_a_task_are_its_children(canvas):
    result = canvas.t.spawn_children.delay(3)
    ids = result.get(timeout=TIMEOUT)
    assert [child.id for child in result.children] == ids
    for child in result.children:
        seen = child.get(timeout=TIMEOUT)
        assert (seen["parent_id"], seen["root_id"]) == (result.id, result.id)


# ---- group ---------------------------------------------------------------------------------------
def test_group_results_come_back_in_call_order(canvas):
    t = canvas.t
    # the first member is the slowest, so completion order is the reverse of call order
    g = group(t.slow_identity.s(i, 0.1 * (4 - i)) for i in range(5))()
    assert isinstance(g, GroupResult) and len(g) == 5
    assert g.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4]
    assert g.ready() and g.successful() and not g.failed() and not g.waiting()
    assert g.completed_count() == 5
    assert sorted(g.iterate(timeout=TIMEOUT)) == [0, 1, 2, 3, 4]
    g.save()
    restored = GroupResult.restore(g.id, app=canvas.app)
    assert [r.id for r in restored] == [r.id for r in g]
    assert restored.join(timeout=TIMEOUT) == [0, 1, 2, 3, 4]
    g.delete()
    assert GroupResult.restore(g.id, app=canvas.app) is None


def test_group_iterate_yields_results_as_they_finish(canvas):
    t = canvas.t
    g = group(t.slow_identity.s("slow", 1.0), t.slow_identity.s("fast", 0.0))()
    assert list(g.iterate(timeout=TIMEOUT)) == ["fast", "slow"]


def test_group_propagate_false_gathers_exceptions(canvas):
    t = canvas.t
    g = group(t.add.s(1, 1), t.fail.s(message="second"), t.add.s(2, 2))()
    values = g.get(timeout=TIMEOUT, propagate=False)
    assert values[0] == 2 and values[2] == 4
    assert isinstance(values[1], ValueError) and values[1].args == ("second",)
    assert g.failed() and not g.successful() and g.completed_count() == 2
    with pytest.raises(ValueError, match="second"):
        g.get(timeout=TIMEOUT)


def test_revoking_a_group_revokes_what_has_not_started(canvas):
    t = canvas.t
    g = group(t.slow_identity.s(i, 0.5) for i in range(8))()
    g.revoke()
    values = g.get(timeout=TIMEOUT, propagate=False)
    revoked = [v for v in values if isinstance(v, TaskRevokedError)]
    assert revoked, values  # two worker slots: most of the eight never started
    assert all(v in range(8) for v in values if not isinstance(v, TaskRevokedError))
    states_seen = {r.state for r in g}
    assert states.REVOKED in states_seen and states_seen <= {states.REVOKED, states.SUCCESS}


# ---- chord ---------------------------------------------------------------------------------------
def test_chord_body_gets_the_header_results_in_header_order(canvas):
    t = canvas.t
    header = [t.slow_identity.s(i, 0.05 * (5 - i)) for i in range(6)]
    result = chord(header)(t.collect.s())
    assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4, 5]
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4, 5]
    assert chord(header, t.xsum.s()).apply_async().get(timeout=TIMEOUT) == 15
    assert (group(header) | t.xsum.s())().get(timeout=TIMEOUT) == 15


def test_chord_body_runs_exactly_once(canvas, tmp_path):
    t = canvas.t
    ledger = tmp_path / "bodies"
    body = t.record.s(path=str(ledger))
    result = chord([t.identity.s(i) for i in range(40)], body)()
    assert result.get(timeout=TIMEOUT) == list(range(40))
    # No fixed wait for a second body run: a marker sent now is taken after anything queued
    # before it, a duplicate body included (one queue, oldest first), and writes to the same ledger
    marker = t.record.delay("marker", path=str(ledger))
    assert marker.get(timeout=TIMEOUT) == "marker"
    assert _wait_for_lines(ledger, 2) == [f"old {list(range(40))}", "old marker"]


def test_a_failed_header_task_fails_the_body_with_chord_error(canvas, tmp_path):
    t = canvas.t
    ledger = tmp_path / "errbacks"
    body = t.xsum.s()
    body.link_error(t.record.s(path=str(ledger)))
    result = chord([t.add.s(1, 1), t.fail.s(message="header"), t.add.s(2, 2)], body)()
    stored = result.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(stored, ChordError) and result.state == states.FAILURE
    with pytest.raises(ChordError, match=r"Dependency .* raised ValueError\('header'\)"):
        result.get(timeout=TIMEOUT)  # once the body has failed, its own error is the answer
    assert _wait_for_lines(ledger, 1) == [f"old {result.id}"]
    header = result.parent.get(timeout=TIMEOUT, propagate=False)
    assert header[0] == 2 and isinstance(header[1], ValueError) and header[2] == 4


def test_a_big_chord(canvas):
    t = canvas.t
    result = chord([t.identity.s(i) for i in range(600)], t.xsum.s())()
    assert result.get(timeout=60) == sum(range(600))


# ---- nesting -------------------------------------------------------------------------------------
def test_a_chain_inside_a_group(canvas):
    t = canvas.t
    g = group(t.add.s(1, 1) | t.mul.s(10), t.add.s(2, 2))()
    assert g.get(timeout=TIMEOUT) == [20, 4]


def test_a_group_inside_a_chain_becomes_a_chord(canvas):
    t = canvas.t
    result = (t.add.s(1, 1) | group(t.add.s(10), t.add.s(20)) | t.xsum.s())()
    assert result.get(timeout=TIMEOUT) == 12 + 22
    # a group as the chain's last step: the chain's result is the group's
    tail = (t.add.s(1, 1) | group(t.add.s(1), t.add.s(2)))()
    assert tail.get(timeout=TIMEOUT) == [3, 4]


def test_a_group_after_a_step_or_first_in_a_chain(canvas):
    t = canvas.t
    built = chain(t.identity.s(3), group(t.add.s(1), t.add.s(2)), t.xsum.s())  # not through |
    assert built().get(timeout=TIMEOUT) == 4 + 5
    assert chain(group(t.identity.s(1), t.identity.s(2)), t.xsum.s())().get(timeout=TIMEOUT) == 3


def test_a_chord_inside_a_chain(canvas):
    t = canvas.t
    result = (t.add.s(1, 1) | chord([t.add.s(1), t.add.s(2)], t.xsum.s()) | t.mul.s(10))()
    assert result.get(timeout=TIMEOUT) == 70


def test_chords_and_groups_inside_a_chord_header(canvas):
    t = canvas.t
    inner = chord([t.add.s(1, 1), t.add.s(2, 2)], t.xsum.s())
    assert chord([inner, t.add.s(10, 10)], t.collect.s())().get(timeout=TIMEOUT) == [6, 20]
    flattened = chord([group(t.identity.s(1), t.identity.s(2)), t.identity.s(3)], t.collect.s())
    assert flattened().get(timeout=TIMEOUT) == [1, 2, 3]
    with_chain = chord([t.add.s(1, 1) | t.mul.s(3), t.identity.s(7)], t.collect.s())
    assert with_chain().get(timeout=TIMEOUT) == [6, 7]
    # a chain that ends in a group: its members count for the outer chord, nested in the result
    ending_in_group = chord([t.identity.s(1), chain(t.identity.s(2), group(t.identity.s(),
                                                                             t.identity.s()))],
                            t.collect.s())
    assert ending_in_group().get(timeout=TIMEOUT) == [1, [2, 2]]
    # an inner chord whose body is a chain, or a group
    chained_body = chord([t.identity.s(1), t.identity.s(2)], t.xsum.s() | t.add.s(1))
    assert chord([chained_body, t.identity.s(10)], t.xsum.s())().get(timeout=TIMEOUT) == 14
    group_body = chord([t.identity.s(1), t.identity.s(2)],
                       group(t.identity.s(), t.identity.s()))
    assert chord([group_body, t.identity.s(10)], t.collect.s())().get(timeout=TIMEOUT) == [
        [[1, 2], [1, 2]], 10]


# ---- map, starmap, chunks ------------------------------------------------------------------------
def test_map_starmap_and_chunks(canvas):
    t = canvas.t
    assert t.identity.map([1, 2, 3]).delay().get(timeout=TIMEOUT) == [1, 2, 3]
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=TIMEOUT) == [3, 7]
    chunked = t.add.chunks(zip(range(10), range(10)), 4)()
    assert chunked.get(timeout=TIMEOUT) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    as_group = t.add.chunks(zip(range(4), range(4)), 2).group()
    assert len(as_group) == 2
    assert as_group.apply_async().get(timeout=TIMEOUT) == [[0, 2], [4, 6]]


# ---- failures in a chain -------------------------------------------------------------------------
def test_a_failure_stops_the_chain_and_reaches_its_errbacks_and_its_result(canvas, tmp_path):
    t = canvas.t
    ledger = tmp_path / "errbacks"
    steps = chain(t.add.s(1, 1), t.fail.s(message="midway"), t.add.s(5), t.add.s(6))
    steps.link_error(t.record.s(path=str(ledger)))
    steps.link_error(t.record_new_style.s(path=str(ledger)))
    last = steps.apply_async()
    with pytest.raises(ValueError, match="midway"):
        last.get(timeout=TIMEOUT)
    never_ran, failed, first = last.parent, last.parent.parent, last.parent.parent.parent
    # get() raises a failed parent's error at once (as Celery's does), which can be a moment
    # before the worker has marked the steps after it failed too
    wait_for(lambda: [last.state, never_ran.state, failed.state] == [states.FAILURE] * 3,
             TIMEOUT, message="the steps after the failure were not all marked failed")
    assert first.get(timeout=TIMEOUT) == 2
    lines = sorted(_wait_for_lines(ledger, 2))
    assert lines == [f"new {failed.id} ValueError", f"old {failed.id}"]


def test_a_step_that_cannot_be_sent_fails_the_rest_but_not_its_parent(canvas):
    t = canvas.t
    last = (t.add.s(1, 2) | t.no_arguments.s() | t.add.s(1))()  # the 3 does not fit
    with pytest.raises(TypeError, match="too many positional arguments"):
        last.get(timeout=TIMEOUT)
    assert last.parent.parent.get(timeout=TIMEOUT) == 3
    assert last.parent.state == states.FAILURE


def test_a_revoked_step_revokes_the_rest_of_its_chain(canvas):
    t = canvas.t
    # the middle step has expired by the time it is sent: the worker revokes it (RabbitMQ: a TTL
    # of 0 ms, handed over because the idle worker's consumer has prefetch room, else dropped)
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    last = chain(t.identity.s(1), t.identity.s().set(expires=past), t.identity.s())()
    with pytest.raises(TaskRevokedError):
        last.get(timeout=TIMEOUT)  # may raise from the revoked step before the last is stored
    wait_for(lambda: [last.state, last.parent.state] == [states.REVOKED] * 2, TIMEOUT,
             message=lambda: f"states: {last.state}, {last.parent.state}")


def test_a_failure_stops_waiting_for_the_rest_of_a_group(canvas):
    t = canvas.t
    g = group(t.slow_identity.s("slow", 3.0), t.fail.s(message="fast"))()
    with pytest.raises(ValueError, match="fast"):
        g.get(timeout=TIMEOUT)
    assert not g.results[0].ready()  # raised as soon as the failure was known


def test_a_failure_before_a_chord_fails_the_chord_body(canvas):
    t = canvas.t
    last = (t.fail.s(message="first") | chord([t.add.s(1), t.add.s(2)], t.xsum.s()))()
    with pytest.raises(ValueError, match="first"):
        last.get(timeout=TIMEOUT)


# ---- Celery 2's TaskSet --------------------------------------------------------------------------
def test_taskset_and_the_subtask_callback_pattern(canvas):
    t = canvas.t
    result = TaskSet(tasks=[t.add.s(i, i) for i in range(4)]).apply_async()
    assert isinstance(result, TaskSetResult) and result.total == 4
    assert result.join(timeout=TIMEOUT) == [0, 2, 4, 6]
    assert result.successful() and result.ready() and not result.failed()
    assert not result.waiting() and result.completed_count() == 4
    assert sorted(result.iterate(timeout=TIMEOUT)) == [0, 2, 4, 6]
    assert [r.id for r in result.subtasks] == [r.id for r in result.itersubtasks()]
    assert result.taskset_id == result.id
    callback = dict(t.xsum.s())  # as Celery 2 code kept callbacks: plain dicts
    assert subtask(callback).delay(result.join()).get(timeout=TIMEOUT) == 12
