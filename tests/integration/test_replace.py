"""``Task.replace`` and ``Task.add_to_chord`` in every canvas position, and ``delivery_info``,
run by a real prefork worker on the embedded SQLite broker and on a real Redis (cases modelled
on Celery's t/integration/test_canvas.py). One worker per broker serves the module."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from celeriac import chain, chord, group, states
from celeriac.exceptions import ImproperlyConfigured
from tests.conftest import WorkerProcess
from tests.integration.conftest import WORKER_DBS, open_broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def rt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[SimpleNamespace]:
    """The client app, the tasks module and a running ``-P prefork -c 2`` worker."""
    from tests.integration import replace_tasks

    tmp = tmp_path_factory.mktemp(f"replace-{request.param}")
    with open_broker(request.param, tmp, WORKER_DBS) as broker:
        app = replace_tasks.app
        app.conf.update(broker_url=broker.url, result_backend=broker.backend)
        app.close()
        worker = WorkerProcess("tests.integration.replace_tasks", broker.url, tmp / "worker.log",
                               "-P", "prefork", "-c", "2", env=broker.worker_env())
        try:
            worker.wait_ready()
            yield SimpleNamespace(app=app, t=replace_tasks, tmp=tmp, broker=broker.name)
        finally:
            worker.stop()
            app.close()
            app.conf.update(broker_url=None, result_backend=None)


def _lines(path: Path, count: int) -> list[str]:
    def enough() -> list[str] | None:
        got = path.read_text().splitlines() if path.exists() else []
        return got if len(got) >= count else None

    return wait_for(enough, TIMEOUT, interval=0.05, message=lambda: f"{path}: too few lines")


# ---- a plain call --------------------------------------------------------------------------
def test_a_task_replaced_by_a_signature_chain_group_or_chord_returns_its_result(rt):
    t = rt.t
    replaced = t.add_replaced.delay(1, 2)
    assert replaced.get(timeout=TIMEOUT) == 3
    assert replaced.state == states.SUCCESS  # the replacement stored it under the same id
    assert t.replace_with_chain.delay(5).get(timeout=TIMEOUT) == 5
    assert t.add_to_all.delay([1, 2], 1).get(timeout=TIMEOUT) == [2, 3]
    assert t.replace_with_chord.delay([1, 2]).get(timeout=TIMEOUT) == 5
    assert t.replace_with_chain_ending_in_group.delay().get(timeout=TIMEOUT) == [4, 4]


def test_the_replacement_keeps_the_replaced_tasks_id_root_and_counts_its_nesting(rt):
    result = rt.t.replace_with_lineage.delay()
    seen = result.get(timeout=TIMEOUT)
    # Celery's lineage: the replacement's parent is the task it replaced, whose id it took
    assert (seen["id"], seen["root_id"], seen["parent_id"]) == (result.id,) * 3
    assert seen["nesting"] == 1
    assert rt.t.record_nesting.delay(2).get(timeout=TIMEOUT) == [0, 1, 2]


def test_replacing_with_an_empty_chain_fails_the_task_with_the_reason(rt):
    with pytest.raises(ImproperlyConfigured, match="empty chain"):
        rt.t.replace_with_empty_chain.delay().get(timeout=TIMEOUT)


def test_callbacks_and_errbacks_of_a_replaced_task_follow_its_replacement(rt):
    t = rt.t
    called, erred = rt.tmp / "callback.txt", rt.tmp / "errback.txt"
    ok = t.add_replaced.apply_async((1, 2), link=t.record.s(str(called)))
    assert ok.get(timeout=TIMEOUT) == 3
    assert _lines(called, 1) == ["3"]
    failed = t.fail_replaced.apply_async((7,), link_error=t.record.s(str(erred)))
    with pytest.raises(ValueError, match=r"failed with \(7,\)"):
        failed.get(timeout=TIMEOUT)
    assert _lines(erred, 1) == [failed.id]  # an old-style errback gets the failed task's id


# ---- inside a chain ------------------------------------------------------------------------
def test_a_chain_continues_after_a_step_replaced_in_the_middle(rt):
    t = rt.t
    assert chain(t.add.s(1, 1), t.add_replaced.s(10), t.add.s(100))().get(timeout=TIMEOUT) == 112
    assert chain(t.identity.s(1), t.replace_with_chain.s(), t.add.s(5))().get(
        timeout=TIMEOUT) == 6
    assert chain(t.identity.s([1, 2]), t.add_to_all.s(10), t.tsum.s())().get(
        timeout=TIMEOUT) == 23
    assert chain(t.identity.s([1]), t.replace_with_chord.s(), t.add.s(1))().get(
        timeout=TIMEOUT) == 3  # sum([1 + 1]) + 1


def test_the_last_step_of_a_chain_replaced_gives_the_chain_its_result(rt):
    t = rt.t
    assert chain(t.identity.s([1, 2]), t.add_to_all.s(10))().get(timeout=TIMEOUT) == [11, 12]
    last = chain(t.add.s(1, 1), t.replace_with_lineage.s())()
    seen = last.get(timeout=TIMEOUT)
    assert (seen["id"], seen["root_id"]) == (last.id, last.parent.id)


# ---- as a group member ---------------------------------------------------------------------
def test_group_members_replaced_keep_their_place(rt):
    t = rt.t
    g = group(t.identity.s(42), t.replace_with_chain.s(1337), t.add_to_all.s([1, 2], 1),
              t.replace_with_chord.s([1, 2]), t.add_replaced.s(2, 2))()
    assert g.get(timeout=TIMEOUT) == [42, 1337, [2, 3], 5, 4]
    ordered = group([t.add_to_all.s([2, 1], 1), t.add_to_all.s([4, 3], 1)] * 4)()
    assert ordered.get(timeout=TIMEOUT) == [[3, 2], [5, 4]] * 4


# ---- as a chord header member and as a chord body --------------------------------------------
def test_chord_header_members_replaced_are_counted_once_in_order(rt):
    t = rt.t
    c = chord([t.add.s(1, 2), t.add_replaced.s(3, 4), t.replace_with_chain.s(5),
               t.add_to_all.s([1], 1), t.replace_with_chord.s([1, 2])], t.collect.s())
    assert c().get(timeout=TIMEOUT) == [3, 7, 5, [2], 5]


def test_a_chord_body_replaced(rt):
    t = rt.t
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.add_to_all.s(10))().get(
        timeout=TIMEOUT) == [12, 14]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.replace_with_chain.s())().get(
        timeout=TIMEOUT) == [2, 4]
    nested = chord([
        chord([t.add.s(1, 2), t.add_replaced.s(3, 4)], t.add_to_all.s(5)) | t.tsum.s(),
        chord([t.add_replaced.s(6, 7), t.add.s(0, 0)], t.add_to_all.s(8)) | t.tsum.s(),
    ], t.add_to_all.s(9))
    assert nested().get(timeout=TIMEOUT) == [29, 38]  # Celery's test_replaced_nested_chord


# ---- add_to_chord --------------------------------------------------------------------------
def test_add_to_chord_grows_the_chord_and_its_body_gets_every_result(rt):
    t = rt.t
    grown = chord([t.add_to_all_to_chord.s([1, 2, 3], 4), t.add.s(1, 1)], t.collect.s())()
    assert sorted(grown.get(timeout=TIMEOUT)) == [0, 2, 5, 6, 7]
    with_chord = chord([t.add_chord_to_chord.s([1, 2, 3], 4)], t.collect.s())()
    assert sorted(with_chord.get(timeout=TIMEOUT)) == [0, 18]


def test_add_to_chord_outside_a_chord_fails_the_task(rt):
    with pytest.raises(ValueError, match="not member of any chord"):
        rt.t.add_to_chord_outside_a_chord.delay().get(timeout=TIMEOUT)


# ---- delivery_info -------------------------------------------------------------------------
def test_delivery_info_has_celerys_keys(rt):
    t = rt.t
    assert t.delivery.delay().get(timeout=TIMEOUT) == {
        "exchange": "", "routing_key": "celery", "priority": 0, "redelivered": False}
    assert t.delivery.apply_async(priority=3).get(timeout=TIMEOUT)["priority"] == 3
