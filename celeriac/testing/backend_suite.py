"""The result-store conformance suite: every store (memory, sqlite, redis...) must pass it.

Layer: testing (imports pytest). Subclass ``BackendContract`` in a test module (as ``TestXxx``)
and override the ``make_backend`` fixture; for a store other processes can open, subclass
``SharedBackendContract`` instead and override ``process_url`` too, to add the multi-process
checks. The suite uses the public ``ResultBackend`` API,
plus the ``_wait_change`` primitive for the missed-wake-up check.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from .. import states
from ..backends import backend_from_url
from ..backends.base import (
    AppendLog,
    ChordPart,
    KeyListing,
    Locks,
    RateLimits,
    ResultBackend,
)
from ..exceptions import BackendError, TaskRevokedError
from ..exceptions import TimeoutError as CeleriacTimeoutError

MakeBackend = Callable[..., ResultBackend]

#: Meta documents as Celery 5.7 stored them (from shared/vectors/celery/redis/worker*/; only the
#: long tracebacks are shortened). What matters is which keys appear and in what order.
CELERY_META_SAMPLES: dict[str, str] = {
    "success": '{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], '
               '"date_done": "2026-11-23T08:43:56.150843+00:00", '
               '"task_id": "3de8d9c5-a1f4-46c0-a204-ace164e5b64f"}',
    "success_with_link": '{"status": "SUCCESS", "result": 4, "traceback": null, "children": '
                         '[[["ec057d9d-692a-431f-8f70-c07abea04144", null], null]], '
                         '"date_done": "2026-11-23T08:43:56.175879+00:00", '
                         '"task_id": "444f1125-4cbd-4d9c-8835-d835625e7d04"}',
    "failure": '{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": '
               '["boom"], "exc_module": "builtins"}, "traceback": "Traceback (most recent call '
               'last):\\nValueError: boom\\n", "children": [], '
               '"date_done": "2026-11-23T08:43:56.166362+00:00", '
               '"task_id": "bf08fd16-d7d9-4369-bc04-c47caf3283b6"}',
    "retry": '{"status": "RETRY", "result": {"exc_type": "RuntimeError", "exc_message": '
             '["try again"], "exc_module": "builtins"}, "traceback": "Traceback (most recent '
             'call last):\\ncelery.exceptions.Retry: Retry in 1s: RuntimeError(\'try again\')\\n",'
             ' "children": [[["9d4cc21a-e41f-44dc-a754-93e5d1fde6fd", null], null]], '
             '"date_done": null, "task_id": "9d4cc21a-e41f-44dc-a754-93e5d1fde6fd"}',
    "revoked": '{"status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": '
               '["revoked"], "exc_module": "celery.exceptions"}, "traceback": null, '
               '"children": [], "date_done": "2026-11-23T08:44:06.802764+00:00", '
               '"task_id": "b8aae30a-61b0-42da-a896-54ddbf4d4bf2"}',
    "chain_step": '{"status": "SUCCESS", "result": 8, "traceback": null, "children": '
                  '[[["33cb3beb-f316-4f94-a324-361d252c7b92", null], null]], '
                  '"date_done": "2026-11-23T08:43:56.197388+00:00", '
                  '"parent_id": "37a568bd-30fd-45f6-93f6-0502758a3337", '
                  '"task_id": "b932c012-c7f6-4eec-b691-4f110363c500"}',
    "group_member": '{"status": "SUCCESS", "result": 0, "traceback": null, "children": [], '
                    '"date_done": "2026-11-23T08:43:56.204173+00:00", '
                    '"group_id": "990b70a7-d900-48d8-a4ea-3400b684e41f", '
                    '"task_id": "f45ad88d-f8d0-4a59-b9f7-d06219c90294"}',
    "chord_body": '{"status": "SUCCESS", "result": 6, "traceback": null, "children": [], '
                  '"date_done": "2026-11-23T08:43:56.758009+00:00", '
                  '"group_id": "199fca52-6fbe-4e51-8793-d9088143e560", '
                  '"parent_id": "d133c8c2-d355-4896-893d-17bf1c226f13", '
                  '"task_id": "f5818e95-1455-483f-89f0-1e93a1da1653"}',
    "extended_started": '{"status": "STARTED", "result": {"pid": 17423, "hostname": '
                        '"w1@capture"}, "traceback": null, "children": [], "date_done": null, '
                        '"name": "tasks.slow", "args": [2], "kwargs": {}, "worker": '
                        '"w1@capture", "retries": 0, "queue": "celery", '
                        '"task_id": "bfd5ac01-4bc8-42aa-8e56-2eda4811586c"}',
    "extended_retried_success": '{"status": "SUCCESS", "result": 7, "traceback": null, '
                                '"children": [], "date_done": "2026-11-23T08:44:30.735371+00:00",'
                                ' "parent_id": "45034596-55a2-4843-867e-219971359c4a", '
                                '"name": "tasks.retry_once", "args": [7], "kwargs": {}, '
                                '"worker": "w1@capture", "retries": 1, "queue": "celery", '
                                '"task_id": "45034596-55a2-4843-867e-219971359c4a"}',
}

#: A saved group as Celery wrote it (``celery-taskset-meta-<gid>`` holds ``{"result": this}``).
CELERY_GROUP_TUPLE: list[Any] = [["990b70a7-d900-48d8-a4ea-3400b684e41f", None], [
    [["f45ad88d-f8d0-4a59-b9f7-d06219c90294", None], None],
    [["149945e9-b556-4b05-bf3b-0075748df20a", None], None],
    [["7497ed09-d410-494b-852c-ebc17fe7a667", None], None],
]]

#: Generous bounds for "promptly": a missed wake-up shows as the base class's 1 s re-check.
_PROMPT = 0.5
_CHILD_TIMEOUT = 60.0


def _request_for(meta: dict) -> SimpleNamespace:
    """A worker request (duck-typed, as build_meta reads it) that would produce ``meta``."""
    return SimpleNamespace(
        id=meta["task_id"], group=meta.get("group_id"), parent_id=meta.get("parent_id"),
        task=meta.get("name"), args=meta.get("args"), kwargs=meta.get("kwargs"),
        hostname=meta.get("worker"), retries=meta.get("retries"),
        delivery_info={"routing_key": meta.get("queue")})


def _new_id() -> str:
    return str(uuid.uuid4())


def _assert_recent_iso(value: Any) -> None:
    assert isinstance(value, str) and value.endswith("+00:00"), value
    assert abs(datetime.now(timezone.utc) - datetime.fromisoformat(value)) < timedelta(minutes=1)


def _store_later(backend: ResultBackend, task_id: str, delay: float, state: str = states.SUCCESS,
                 result: Any = "done") -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        backend.store_result(task_id, result, state)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ---- child-process bodies (module level so the spawn start method can import them) -------------
def _incr_in_child(url: str, key: str, count: int, barrier: Any, out: str) -> None:
    backend = backend_from_url(url)
    try:
        barrier.wait(_CHILD_TIMEOUT)
        values = [backend.incr(key) for _ in range(count)]
    finally:
        backend.close()
    Path(out).write_text(json.dumps(values))


def _store_in_child(url: str, task_id: str, delay: float) -> None:
    backend = backend_from_url(url)
    try:
        time.sleep(delay)
        backend.mark_as_done(task_id, time.time())
    finally:
        backend.close()


def _chord_parts_in_child(url: str, group_id: str, indexes: list[int], barrier: Any,
                          out: str) -> None:
    backend = backend_from_url(url)
    try:
        barrier.wait(_CHILD_TIMEOUT)
        claims = [backend.chord_part_return(group_id, f"t{i}", i, _entry(f"t{i}", i),
                                            claim_token=f"token-{i}", claim_ttl=30).claimed
                  for i in indexes]
    finally:
        backend.close()
    Path(out).write_text(json.dumps(claims))


def _log_append_in_child(url: str, key: str, delay: float) -> None:
    """Append two entries in one call: ``b"first"``, then the time of the append."""
    backend = backend_from_url(url)
    try:
        time.sleep(delay)
        _log(backend).log_append(key, [b"first", repr(time.time()).encode()], 60)
    finally:
        backend.close()


def _lock_in_child(url: str, keys: list[str], token: str, barrier: Any, out: str) -> None:
    """Try each lock once, all children together; record which ones this child won."""
    backend = backend_from_url(url)
    try:
        barrier.wait(_CHILD_TIMEOUT)
        won = [key for key in keys if _locks(backend).lock_acquire(key, token, 60)]
    finally:
        backend.close()
    Path(out).write_text(json.dumps(won))


def _rate_in_child(url: str, bucket: str, tickets: list[str], interval: float, barrier: Any,
                   out: str) -> None:
    """Take a block of two slots per ticket, all children together; record each grant."""
    backend = backend_from_url(url)
    try:
        barrier.wait(_CHILD_TIMEOUT)
        grants = [_rates(backend).rate_take(bucket, interval, ticket, 2) for ticket in tickets]
    finally:
        backend.close()
    Path(out).write_text(json.dumps(grants))


def _rates(backend: ResultBackend) -> RateLimits:
    """``backend`` as the rate-limit state it must also hold (``rate_limit=``)."""
    assert isinstance(backend, RateLimits), f"{type(backend).__name__} keeps no rate limits"
    return backend


def _slots(grants: list[Any], interval: float) -> list[int]:
    """Which slots the ``(wait, slots)`` grants stand for (0: now), for an ``interval`` far
    longer than the test: a reservation its one slot, a block the first ``slots`` ones (only
    a fresh bucket's first take can get a block when slots are that far apart)."""
    taken: list[int] = []
    for wait, slots in grants:
        taken.extend(range(slots) if slots else [round(wait / interval)])
    return sorted(taken)


def _locks(backend: ResultBackend) -> Locks:
    """``backend`` as the lock holder it must also be (``app.lock()``, ``lock=``, ``unique=``)."""
    assert isinstance(backend, Locks), f"{type(backend).__name__} holds no locks"
    return backend


def _log(backend: ResultBackend) -> AppendLog:
    """``backend`` as the append-only log it must also be (dispatch keeps its inboxes there)."""
    assert isinstance(backend, AppendLog), f"{type(backend).__name__} keeps no append-only logs"
    return backend


def _entry(task_id: str, value: Any, state: str = states.SUCCESS) -> bytes:
    """A join entry as Celery writes it: ``[1, id, state, result]`` in JSON."""
    return json.dumps([1, task_id, state, value]).encode()


def _run_children(targets: list[tuple[Callable[..., None], tuple]]) -> Callable[[], None]:
    """Start one spawned process per target (spawn: no fork-with-threads hazards); return a
    callable that joins them all and checks they exited cleanly."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=fn, args=args, daemon=True) for fn, args in targets]
    for proc in procs:
        proc.start()

    def join() -> None:
        deadline = time.monotonic() + _CHILD_TIMEOUT
        failed = []
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            if proc.exitcode != 0:
                failed.append(proc.exitcode)
            proc.close()
        assert not failed, f"child processes failed with exit codes {failed}"

    return join


class BackendContract:
    """Behaviour every result store shares. Override ``make_backend``."""

    @pytest.fixture
    def make_backend(self) -> Iterator[MakeBackend]:
        """Yield a factory: ``make(**options)`` returns a new backend on this test's own store
        (every call on the same store), closed at teardown."""
        raise NotImplementedError("a BackendContract subclass must override make_backend")

    @pytest.fixture
    def backend(self, make_backend: MakeBackend) -> ResultBackend:
        return make_backend()

    # ---- the meta layout -----------------------------------------------------------------------
    def test_unknown_id_reads_as_pending(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        meta = backend.get_task_meta(task_id)
        assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
        assert (meta["status"], meta["result"], meta["task_id"]) == (states.PENDING, None, task_id)

    @pytest.mark.parametrize("role", sorted(CELERY_META_SAMPLES))
    def test_stored_meta_has_celerys_layout(self, make_backend: MakeBackend,
                                            role: str) -> None:
        celery_meta = json.loads(CELERY_META_SAMPLES[role])
        backend = make_backend(extended="name" in celery_meta)
        task_id = celery_meta["task_id"]
        backend.store_result(task_id, celery_meta["result"], celery_meta["status"],
                             traceback=celery_meta["traceback"], request=_request_for(celery_meta),
                             children=celery_meta["children"])
        meta = backend.get_task_meta(task_id)
        assert list(meta) == list(celery_meta)
        if celery_meta["date_done"] is None:
            assert meta["date_done"] is None
        else:
            _assert_recent_iso(meta["date_done"])
        assert {**meta, "date_done": None} == {**celery_meta, "date_done": None}

    def test_failure_round_trips_to_the_exception(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        backend.mark_as_failure(task_id, KeyError("missing"), traceback="Traceback ...")
        meta = backend.get_task_meta(task_id)
        assert meta["status"] == states.FAILURE
        assert meta["result"] == {"exc_type": "KeyError", "exc_message": ["missing"],
                                  "exc_module": "builtins"}
        assert meta["traceback"] == "Traceback ..."
        _assert_recent_iso(meta["date_done"])
        exc = backend.exception_from_meta(meta)
        assert type(exc) is KeyError and exc.args == ("missing",)

    def test_revoked_is_written_as_celery_writes_it(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        backend.mark_as_revoked(task_id)
        meta = backend.get_task_meta(task_id)
        assert meta["result"] == json.loads(CELERY_META_SAMPLES["revoked"])["result"]
        assert isinstance(backend.exception_from_meta(meta), TaskRevokedError)

    def test_started_and_retry_have_no_date_done(self, backend: ResultBackend) -> None:
        started, retried = _new_id(), _new_id()
        backend.mark_as_started(started, pid=42, hostname="w1@host")
        backend.mark_as_retry(retried, RuntimeError("again"), traceback="tb")
        meta = backend.get_task_meta(started)
        assert (meta["status"], meta["result"], meta["date_done"]) == (
            states.STARTED, {"pid": 42, "hostname": "w1@host"}, None)
        meta = backend.get_task_meta(retried)
        assert (meta["status"], meta["date_done"]) == (states.RETRY, None)
        assert meta["result"]["exc_type"] == "RuntimeError"

    def test_readers_get_copies(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        backend.mark_as_done(task_id, {"items": [1, 2]})
        backend.get_task_meta(task_id)["result"]["items"].append(3)
        assert backend.get_task_meta(task_id)["result"] == {"items": [1, 2]}

    def test_forget(self, backend: ResultBackend) -> None:
        kept, forgotten = _new_id(), _new_id()
        backend.mark_as_done(kept, 1)
        backend.mark_as_done(forgotten, 2)
        backend.forget(forgotten)
        assert backend.get_task_meta(forgotten)["status"] == states.PENDING
        assert backend.get_task_meta(kept)["result"] == 1

    def test_instances_on_one_store_share_results(self, make_backend: MakeBackend
                                                  ) -> None:
        writer, reader = make_backend(), make_backend()
        task_id = _new_id()
        writer.mark_as_done(task_id, "shared")
        assert reader.get_task_meta(task_id)["result"] == "shared"

    # ---- expiry --------------------------------------------------------------------------------
    def test_results_expire(self, make_backend: MakeBackend) -> None:
        backend = make_backend(expires=0.05)
        task_id = _new_id()
        backend.mark_as_done(task_id, 1)
        assert backend.get_task_meta(task_id)["status"] == states.SUCCESS
        time.sleep(0.12)
        assert backend.get_task_meta(task_id)["status"] == states.PENDING
        assert backend.get_many_meta([task_id])[task_id]["status"] == states.PENDING

    def test_expires_zero_means_never(self, make_backend: MakeBackend) -> None:
        backend = make_backend(expires=0)
        task_id = _new_id()
        backend.mark_as_done(task_id, 1)
        assert backend.get_task_meta(task_id)["status"] == states.SUCCESS

    def test_values_and_counters_expire(self, backend: ResultBackend) -> None:
        backend.set_value("v", [1], ttl=0.05)
        assert backend.incr("c", ttl=0.05) == 1
        assert backend.get_value("v") == [1]
        time.sleep(0.12)
        assert backend.get_value("v") is None
        assert backend.incr("c") == 1  # an expired counter starts again from zero

    # ---- counters ------------------------------------------------------------------------------
    def test_incr(self, backend: ResultBackend) -> None:
        assert [backend.incr("n"), backend.incr("n"), backend.incr("n", 5),
                backend.incr("n", -3)] == [1, 2, 7, 4]
        assert backend.incr("other", 3) == 3
        assert backend.get_value("n") == 4  # as on Redis: the counter reads as its decimal text

    def test_incr_continues_a_stored_integer_and_refuses_other_values(
            self, backend: ResultBackend) -> None:
        backend.set_value("int", 41)
        assert backend.incr("int") == 42
        backend.set_value("text", "forty")
        with pytest.raises(BackendError):
            backend.incr("text")
        assert backend.get_value("text") == "forty"

    def test_incr_is_atomic_across_threads(self, make_backend: MakeBackend
                                           ) -> None:
        threads_n, per_thread = 8, 250
        seen: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(threads_n)

        backend = make_backend()  # one instance: each thread must get its own safe access

        def work() -> None:
            start.wait(10)
            values = [backend.incr("hits") for _ in range(per_thread)]
            with lock:
                seen.extend(values)

        threads = [threading.Thread(target=work) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(seen) == list(range(1, threads_n * per_thread + 1))

    # ---- plain values and groups ---------------------------------------------------------------
    def test_set_and_get_value(self, backend: ResultBackend) -> None:
        assert backend.get_value("k") is None
        backend.set_value("k", {"a": [1, "two", None]})
        assert backend.get_value("k") == {"a": [1, "two", None]}
        backend.set_value("k", 3)
        assert backend.get_value("k") == 3

    def test_delete_keys(self, backend: ResultBackend) -> None:
        for key in ("a", "b", "c"):
            backend.set_value(key, key)
        backend.delete_keys(["a", "c", "never-set"])
        assert [backend.get_value(k) for k in ("a", "b", "c")] == [None, "b", None]

    def test_groups(self, backend: ResultBackend) -> None:
        group_id = CELERY_GROUP_TUPLE[0][0]
        assert backend.restore_group(group_id) is None
        backend.save_group(group_id, CELERY_GROUP_TUPLE)
        assert backend.restore_group(group_id) == CELERY_GROUP_TUPLE
        assert backend.get_value("celery-taskset-meta-" + group_id) == {
            "result": CELERY_GROUP_TUPLE}
        backend.delete_group(group_id)
        assert backend.restore_group(group_id) is None

    def test_write_results_then_mget_reads_after_the_writes(self, backend: ResultBackend
                                                            ) -> None:
        """The read sees the writes sent with it (a worker's kept results, then its revoke
        check)."""
        first, second = _new_id(), _new_id()
        backend.set_value("marker", {"kept": True})
        writes = [backend.result_write(first, 1, states.SUCCESS),
                  backend.result_write(second, 2, states.SUCCESS)]
        raws = backend.write_results_then_mget(writes, [writes[0].key, "marker", "never-set"])
        assert raws[0] is not None and backend.decode(raws[0])["result"] == 1
        assert raws[1] is not None and backend.decode(raws[1]) == {"kept": True}
        assert raws[2] is None
        assert backend.get_task_meta(second)["result"] == 2
        assert backend.write_results_then_mget([], ["marker"]) == [raws[1]]

    def test_get_many_meta(self, backend: ResultBackend) -> None:
        ids = [_new_id() for _ in range(1100)]  # more than one batch for stores that chunk
        for n, task_id in enumerate(ids[::2]):
            backend.mark_as_done(task_id, n)
        metas = backend.get_many_meta(ids)
        assert list(metas) == ids
        assert [metas[t]["result"] for t in ids[::2]] == list(range(len(ids[::2])))
        assert {metas[t]["status"] for t in ids[1::2]} == {states.PENDING}
        assert metas[ids[1]]["task_id"] == ids[1]
        stored = backend.stored_metas(ids)
        assert list(stored) == ids[::2], "only what is stored, in the order asked"
        assert [stored[t]["result"] for t in ids[::2]] == list(range(len(ids[::2])))

    # ---- waiting -------------------------------------------------------------------------------
    def test_wait_for_returns_a_ready_result_at_once(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        backend.mark_as_done(task_id, 5)
        started = time.monotonic()
        assert backend.wait_for(task_id, timeout=5)["result"] == 5
        assert time.monotonic() - started < _PROMPT

    @pytest.mark.parametrize("writer", ["same instance", "other instance"])
    def test_wait_for_wakes_when_a_thread_stores(self, make_backend: MakeBackend,
                                                 writer: str) -> None:
        backend = make_backend()
        task_id = _new_id()
        thread = _store_later(backend if writer == "same instance" else make_backend(),
                              task_id, 0.1)
        started = time.monotonic()
        meta = backend.wait_for(task_id, timeout=10)
        elapsed = time.monotonic() - started
        thread.join()
        assert meta["result"] == "done"
        assert 0.09 < elapsed < 0.1 + _PROMPT

    def test_wait_for_other_states(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        thread = _store_later(backend, task_id, 0.05, state=states.STARTED, result={"pid": 1})
        meta = backend.wait_for(task_id, timeout=10, states_wanted=frozenset({states.STARTED}))
        thread.join()
        assert meta["status"] == states.STARTED

    def test_wait_for_times_out(self, backend: ResultBackend) -> None:
        task_id = _new_id()
        backend.mark_as_started(task_id)
        started = time.monotonic()
        with pytest.raises(CeleriacTimeoutError):
            backend.wait_for(task_id, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.2 + _PROMPT

    def test_wait_for_many(self, make_backend: MakeBackend) -> None:
        backend, writer = make_backend(), make_backend()
        ids = [_new_id() for _ in range(3)]
        threads = [_store_later(writer, t, 0.05 * (n + 1), result=n) for n, t in enumerate(ids)]
        started = time.monotonic()
        metas = backend.wait_for_many(ids, timeout=10)
        elapsed = time.monotonic() - started
        for thread in threads:
            thread.join()
        assert {t: m["result"] for t, m in metas.items()} == dict(zip(ids, range(3)))
        assert elapsed < 0.15 + _PROMPT

    def test_a_write_between_read_and_wait_is_not_missed(
            self, make_backend: MakeBackend) -> None:
        backend, writer = make_backend(), make_backend()
        task_id = _new_id()
        assert backend.get_task_meta(task_id)["status"] == states.PENDING
        _store_later(writer, task_id, 0).join()
        started = time.monotonic()
        backend._wait_change([backend.task_key(task_id)], 3.0)  # noqa: SLF001 - the primitive
        assert time.monotonic() - started < _PROMPT

    # ---- chord joins ---------------------------------------------------------------------------
    def test_chord_join_counts_each_header_task_once_and_claims_once(
            self, backend: ResultBackend) -> None:
        group_id = _new_id()
        backend.set_chord_size(group_id, 3)

        def part(task_id: str, index: int, token: str = "tok") -> Any:
            return backend.chord_part_return(group_id, task_id, index, _entry(task_id, index),
                                             claim_token=token, claim_ttl=30)

        assert part("t2", 2) == ChordPart(1, 3, False)
        assert part("t2", 2) == ChordPart(1, 3, False)  # a redelivered copy counts nothing
        assert part("t0", 0) == ChordPart(2, 3, False)
        assert part("t1", 1, "winner") == ChordPart(3, 3, True)
        assert part("t1", 1, "late") == ChordPart(3, 3, False)  # the claim is taken
        # results come back in header order, whatever order they arrived in
        assert [json.loads(raw) for raw in backend.chord_results(group_id)] == [
            [1, "t0", "SUCCESS", 0], [1, "t1", "SUCCESS", 1], [1, "t2", "SUCCESS", 2]]
        assert backend.chord_cleanup(group_id, "not-the-token", 60) is False
        assert backend.chord_cleanup(group_id, "winner", 60) is True
        assert backend.chord_results(group_id) == []
        # after the body was sent, a late copy of a header task changes nothing
        assert part("t0", 0, "again") == ChordPart(-1, None, False)
        assert backend.chord_results(group_id) == []

    def test_chord_join_without_a_size_never_claims(self, backend: ResultBackend) -> None:
        group_id = _new_id()
        first = backend.chord_part_return(group_id, "a", 0, _entry("a", 0), claim_token="x",
                                          claim_ttl=30)
        assert first == ChordPart(1, None, False)
        backend.set_chord_size(group_id, 2)
        second = backend.chord_part_return(group_id, "b", 1, _entry("b", 1), claim_token="y",
                                           claim_ttl=30)
        assert second == ChordPart(2, 2, True)

    def test_chord_join_counts_add_to_chord_extras(self, backend: ResultBackend) -> None:
        group_id = _new_id()
        backend.set_chord_size(group_id, 1)
        backend.add_to_chord(group_id)
        parts = [backend.chord_part_return(group_id, t, i, _entry(t, i), claim_token=t,
                                           claim_ttl=30) for i, t in enumerate(("a", "b"))]
        assert parts == [ChordPart(1, 2, False), ChordPart(2, 2, True)]

    def test_chord_join_keeps_failures_with_their_state(self, backend: ResultBackend) -> None:
        group_id = _new_id()
        backend.set_chord_size(group_id, 1)
        failure = {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}
        backend.chord_part_return(group_id, "f", 0, _entry("f", failure, states.FAILURE),
                                  claim_token="t", claim_ttl=30)
        assert [json.loads(raw) for raw in backend.chord_results(group_id)] == [
            [1, "f", "FAILURE", failure]]

    def test_chord_claim_expires_so_a_redelivery_can_take_it(self, backend: ResultBackend
                                                            ) -> None:
        group_id = _new_id()
        backend.set_chord_size(group_id, 1)
        assert backend.chord_part_return(group_id, "a", 0, _entry("a", 0), claim_token="dead",
                                         claim_ttl=1).claimed
        time.sleep(1.2)  # the claimer "crashed" before sending the body; its claim runs out
        again = backend.chord_part_return(group_id, "a", 0, _entry("a", 0),
                                          claim_token="redelivered", claim_ttl=30)
        assert again == ChordPart(1, 1, True)
        assert backend.chord_cleanup(group_id, "dead", 60) is False
        assert backend.chord_cleanup(group_id, "redelivered", 60) is True

    def test_re_applied_chord_starts_over(self, backend: ResultBackend) -> None:
        group_id = _new_id()
        backend.set_chord_size(group_id, 1)
        backend.chord_part_return(group_id, "a", 0, _entry("a", 0), claim_token="t1",
                                  claim_ttl=30)
        backend.chord_cleanup(group_id, "t1", 60)
        backend.set_chord_size(group_id, 1)  # the same frozen chord, applied again
        assert backend.chord_part_return(group_id, "a", 0, _entry("a", 0), claim_token="t2",
                                         claim_ttl=30) == ChordPart(1, 1, True)

    def test_chord_join_claims_once_across_threads(self, make_backend: MakeBackend) -> None:
        threads_n, per_thread = 8, 50
        group_id = _new_id()
        backend = make_backend()
        backend.set_chord_size(group_id, threads_n * per_thread)
        claims: list[bool] = []
        lock = threading.Lock()
        start = threading.Barrier(threads_n)

        def work(first: int) -> None:
            start.wait(10)
            mine = [backend.chord_part_return(group_id, f"t{i}", i, _entry(f"t{i}", i),
                                              claim_token=f"k{i}", claim_ttl=30).claimed
                    for i in range(first, first + per_thread)]
            with lock:
                claims.extend(mine)

        threads = [threading.Thread(target=work, args=(n * per_thread,))
                   for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(claims) == threads_n * per_thread and claims.count(True) == 1
        values = [json.loads(raw)[3] for raw in backend.chord_results(group_id)]
        assert values == list(range(threads_n * per_thread))

    # ---- append-only logs (AppendLog: dispatch's inboxes) ------------------------------------
    def test_log_reads_entries_in_append_order_from_a_cursor(self, backend: ResultBackend
                                                             ) -> None:
        log = _log(backend)
        log.log_append("inbox", [b"a", b"b"], 60)
        log.log_append("inbox", [b"c"], 60)
        first, cursor = log.log_read("inbox", "", 2, 0)
        assert first == [b"a", b"b"]
        rest, end = log.log_read("inbox", cursor, 10, 0)
        assert rest == [b"c"]
        assert log.log_read("inbox", end, 10, 0) == ([], end)
        log.log_append("inbox", [b"d"], 60)
        assert log.log_read("inbox", end, 10, 0)[0] == [b"d"]
        assert log.log_read("inbox", "", 10, 0)[0] == [b"a", b"b", b"c", b"d"], \
            "reading does not consume: a reader that comes back re-reads from its cursor"

    def test_log_entries_are_bytes_kept_exactly(self, backend: ResultBackend) -> None:
        log = _log(backend)
        entries = [b"7\n{\"status\": \"SUCCESS\"}", b"\x00\xff\n\r\n", b""]
        log.log_append("inbox", entries, 60)
        assert log.log_read("inbox", "", 10, 0)[0] == entries

    def test_logs_are_separate_and_shared_by_instances_on_one_store(
            self, make_backend: MakeBackend) -> None:
        writer, reader = _log(make_backend()), _log(make_backend())
        writer.log_append("one", [b"1"], 60)
        writer.log_append("two", [b"2"], 60)
        assert reader.log_read("one", "", 10, 0)[0] == [b"1"]
        assert reader.log_read("two", "", 10, 0)[0] == [b"2"]
        assert reader.log_read("never-written", "", 10, 0) == ([], "")

    def test_log_read_times_out_with_nothing_and_the_same_cursor(
            self, backend: ResultBackend) -> None:
        log = _log(backend)
        assert log.log_read("inbox", "", 10, 0.2) == ([], "")
        log.log_append("inbox", [b"a"], 60)
        _, cursor = log.log_read("inbox", "", 10, 0)
        started = time.monotonic()
        assert log.log_read("inbox", cursor, 10, 0.2) == ([], cursor)
        assert time.monotonic() - started >= 0.15, "it waited for an entry first"

    @pytest.mark.parametrize("writer", ["same instance", "other instance"])
    def test_blocking_log_read_wakes_when_a_thread_appends(self, make_backend: MakeBackend,
                                                           writer: str) -> None:
        reader = _log(make_backend())
        appender = reader if writer == "same instance" else _log(make_backend())
        reader.log_append("inbox", [b"old"], 60)
        _, cursor = reader.log_read("inbox", "", 10, 0)

        def append_later() -> None:
            time.sleep(0.1)
            appender.log_append("inbox", [b"new"], 60)

        thread = threading.Thread(target=append_later, daemon=True)
        thread.start()
        started = time.monotonic()
        entries, after = reader.log_read("inbox", cursor, 10, 10)
        elapsed = time.monotonic() - started
        thread.join()
        assert entries == [b"new"] and after != cursor
        assert elapsed < 0.1 + _PROMPT

    def test_log_appends_from_many_threads_are_each_kept_once_in_each_writers_order(
            self, make_backend: MakeBackend) -> None:
        threads_n, per_thread = 4, 25
        start = threading.Barrier(threads_n)

        def work(n: int) -> None:
            log = _log(make_backend())
            start.wait(10)
            for i in range(per_thread):
                log.log_append("inbox", [b"%d:%d" % (n, i)], 60)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        entries = _log(make_backend()).log_read("inbox", "", 1000, 0)[0]
        assert sorted(entries) == sorted(b"%d:%d" % (n, i) for n in range(threads_n)
                                         for i in range(per_thread))
        for n in range(threads_n):
            mine = [int(e.split(b":")[1]) for e in entries if e.startswith(b"%d:" % n)]
            assert mine == list(range(per_thread))

    def test_log_trim_drops_entries_up_to_the_cursor(self, backend: ResultBackend) -> None:
        log = _log(backend)
        log.log_append("inbox", [b"a", b"b", b"c"], 60)
        log.log_trim("inbox", "")  # nothing handled yet: nothing dropped
        assert log.log_read("inbox", "", 10, 0)[0] == [b"a", b"b", b"c"]
        _, handled = log.log_read("inbox", "", 2, 0)
        log.log_trim("inbox", handled)
        assert log.log_read("inbox", "", 10, 0)[0] == [b"c"]
        assert log.log_read("inbox", handled, 10, 0)[0] == [b"c"]
        log.log_append("inbox", [b"d"], 60)
        assert log.log_read("inbox", handled, 10, 0)[0] == [b"c", b"d"]

    def test_log_delete_drops_the_whole_log_only(self, backend: ResultBackend) -> None:
        log = _log(backend)
        log.log_append("inbox", [b"a", b"b"], 60)
        log.log_append("other", [b"kept"], 60)
        log.log_delete("inbox")
        assert log.log_read("inbox", "", 10, 0)[0] == []
        assert log.log_read("other", "", 10, 0)[0] == [b"kept"]
        log.log_delete("inbox")  # twice, or never written: no error
        log.log_delete("never-written")
        log.log_append("inbox", [b"again"], 60)
        assert log.log_read("inbox", "", 10, 0)[0] == [b"again"]

    # ---- listing (KeyListing: the dashboard's heartbeat records) --------------------------------
    def test_keys_with_prefix_lists_live_keys_of_that_prefix_only(self, backend: ResultBackend
                                                                  ) -> None:
        assert isinstance(backend, KeyListing), f"{type(backend).__name__} cannot list keys"
        backend.set_value("beat-b", {"n": 2})
        backend.set_value("beat-a", {"n": 1})
        backend.set_value("beat*[?]", 3)  # glob characters are matched literally
        backend.set_value("beatz", 4)  # the prefix's upper neighbour is not in its range
        backend.set_value("beat-gone", 5, ttl=0.05)
        backend.set_value("other-beat-c", 6)
        time.sleep(0.2)
        assert backend.keys_with_prefix("beat-") == ["beat-a", "beat-b"]
        assert backend.keys_with_prefix("beat*") == ["beat*[?]"]
        assert backend.keys_with_prefix("nothing-") == []

    # ---- locks (Locks: app.lock(), the task options lock and unique) ----------------------------
    def test_lock_is_exclusive_and_released_only_by_its_holder(self, make_backend: MakeBackend
                                                               ) -> None:
        mine, theirs = _locks(make_backend()), _locks(make_backend())
        assert mine.lock_owner("job") is None
        assert mine.lock_acquire("job", "me", 60)
        assert not theirs.lock_acquire("job", "you", 60), "held: nobody else gets it"
        assert theirs.lock_owner("job") == "me"
        assert not theirs.lock_release("job", "you"), "only the holder's token releases it"
        assert not theirs.lock_extend("job", "you", 60)
        assert theirs.lock_owner("job") == "me"
        assert theirs.lock_acquire("other-job", "you", 60), "each key is a lock of its own"
        assert mine.lock_release("job", "me")
        assert not mine.lock_release("job", "me"), "released once"
        assert mine.lock_owner("job") is None
        assert theirs.lock_acquire("job", "you", 60)
        assert theirs.lock_owner("job") == "you"

    def test_lock_acquired_again_by_its_holder_stays_held(self, backend: ResultBackend) -> None:
        locks = _locks(backend)
        assert locks.lock_acquire("job", "me", 60)
        assert locks.lock_acquire("job", "me", 60), "a retried acquire by the holder succeeds"
        assert not locks.lock_acquire("job", "you", 60)
        assert locks.lock_release("job", "me")
        assert locks.lock_owner("job") is None

    def test_lock_expires_so_another_can_take_it(self, make_backend: MakeBackend) -> None:
        dead, next_one = _locks(make_backend()), _locks(make_backend())
        assert dead.lock_acquire("job", "dead", 0.2)  # a holder that never releases
        deadline = time.monotonic() + 30
        while not next_one.lock_acquire("job", "next", 60):
            assert time.monotonic() < deadline, "the expired lock was never freed"
            time.sleep(0.05)
        assert next_one.lock_owner("job") == "next"
        assert not dead.lock_release("job", "dead"), "a late release frees nothing"
        assert not dead.lock_extend("job", "dead", 60)
        assert next_one.lock_owner("job") == "next"

    def test_lock_extend_keeps_it_held(self, make_backend: MakeBackend) -> None:
        holder, other = _locks(make_backend()), _locks(make_backend())
        assert holder.lock_acquire("job", "me", 2)
        assert holder.lock_extend("job", "me", 60)
        assert holder.lock_acquire("gauge", "me", 2)  # taken later, for the same 2 s
        deadline = time.monotonic() + 30
        while not other.lock_acquire("gauge", "you", 60):  # the first ttl is over once it is
            assert time.monotonic() < deadline, "the gauge lock was never freed"
            time.sleep(0.05)
        assert not other.lock_acquire("job", "you", 60), "the extension keeps it held"
        assert other.lock_owner("job") == "me"

    def test_lock_is_won_by_one_of_many_threads(self, make_backend: MakeBackend) -> None:
        threads_n, keys = 6, [f"job-{n}" for n in range(20)]
        start = threading.Barrier(threads_n)
        won: dict[str, list[str]] = {key: [] for key in keys}

        def work(n: int) -> None:
            locks = _locks(make_backend())
            start.wait(10)
            for key in keys:
                if locks.lock_acquire(key, f"thread-{n}", 60):
                    won[key].append(f"thread-{n}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(len(winners) == 1 for winners in won.values()), won
        check = _locks(make_backend())
        assert all(check.lock_owner(key) == winners[0] for key, winners in won.items())

    # ---- rate limits (RateLimits: rate_limit=, app.control.rate_limit) --------------------------
    def test_rate_grants_one_call_then_spaces_the_rest_one_interval_apart(
            self, make_backend: MakeBackend) -> None:
        rates, other = _rates(make_backend()), _rates(make_backend())
        interval = 100.0  # far longer than the test: each wait names its slot
        grants = [rates.rate_take("api", interval, f"call-{n}") for n in range(3)]
        grants.append(other.rate_take("api", interval, "call-3"))  # one bucket per store
        assert grants[0] == (0.0, 1), "a fresh bucket lets the first call run at once"
        for n, (wait, slots) in enumerate(grants[1:], 1):
            assert slots == 0 and abs(wait - n * interval) < 5, (n, grants)

    def test_rate_reserved_slot_is_kept_and_used_once(self, make_backend: MakeBackend) -> None:
        rates = _rates(make_backend())
        interval = 0.3
        assert rates.rate_take("api", interval, "first") == (0.0, 1)
        wait = rates.rate_take("api", interval, "second").wait
        assert 0 < wait <= interval
        again = rates.rate_take("api", interval, "second").wait
        assert 0 <= again <= wait, "asking again finds the same slot, not a later one"
        later = rates.rate_take("api", interval, "third").wait
        assert later > interval, "the next call is reserved after the second one's slot"
        deadline = time.monotonic() + 10
        while (grant := rates.rate_take("api", interval, "second", 5)).wait > 0:
            assert time.monotonic() < deadline, "the reserved slot never came"
            time.sleep(min(grant.wait, 0.05))
        assert grant.slots == 1, "a reserved slot is granted alone, whatever the count"
        assert rates.rate_take("api", interval, "second").wait > 0, \
            "a used slot is gone: the same ticket contends again, behind the third call"

    def test_rate_allows_a_burst_of_one_after_idling(self, make_backend: MakeBackend) -> None:
        rates = _rates(make_backend())
        interval = 0.1
        assert rates.rate_take("api", interval, "a").wait == 0.0
        time.sleep(5 * interval)  # idle for five intervals: no credit piles up
        assert rates.rate_take("api", interval, "b").wait == 0.0
        assert rates.rate_take("api", interval, "c").wait > interval / 2

    def test_rate_buckets_are_separate(self, make_backend: MakeBackend) -> None:
        rates = _rates(make_backend())
        assert rates.rate_take("fetch", 100.0, "t1").wait == 0.0
        assert rates.rate_take("send", 100.0, "t1").wait == 0.0, "same ticket, other bucket"
        assert rates.rate_take("fetch", 100.0, "t2").wait > 50

    def test_rate_grants_a_block_of_the_free_slots_within_its_horizon(
            self, make_backend: MakeBackend) -> None:
        rates, other = _rates(make_backend()), _rates(make_backend())
        interval = 100.0  # far longer than the test: slot n is at n * interval
        assert rates.rate_take("api", interval, "a", 3) == (0.0, 3), \
            "a fresh bucket: the first three slots (now, +1 and +2 intervals)"
        wait, slots = other.rate_take("api", interval, "b", 3)
        assert slots == 0 and abs(wait - 3 * interval) < 5, \
            "slot 3 lies beyond the horizon (+2 intervals): reserved for the call, not granted"
        assert abs(rates.rate_take("api", interval, "c").wait - 4 * interval) < 5

    def test_rate_block_takes_only_the_slots_left_within_its_horizon(
            self, make_backend: MakeBackend) -> None:
        rates = _rates(make_backend())
        interval = 100.0
        assert rates.rate_take("api", interval, "a") == (0.0, 1)
        assert rates.rate_take("api", interval, "b", 3) == (0.0, 2), \
            "slot 0 is gone; slots 1 and 2 fall within the horizon of +2 intervals"
        wait, slots = rates.rate_take("api", interval, "c", 3)
        assert slots == 0 and abs(wait - 3 * interval) < 5

    def test_rate_slots_are_unique_across_threads(self, make_backend: MakeBackend) -> None:
        threads_n, per_thread, interval = 6, 10, 1000.0
        start = threading.Barrier(threads_n)
        grants: list[Any] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            rates = _rates(make_backend())
            start.wait(10)
            mine = [rates.rate_take("api", interval, f"t{n}-{i}", 2) for i in range(per_thread)]
            with lock:
                grants.extend(mine)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert _slots(grants, interval) == list(range(threads_n * per_thread + 1)), \
            "the first call got a block of two, every other call a slot of its own after it"

    def test_close_twice(self, backend: ResultBackend) -> None:
        backend.mark_as_done(_new_id(), 1)
        backend.close()
        backend.close()


class SharedBackendContract(BackendContract):
    """For stores that several processes open at once (SQLite, Redis): the same, plus checks
    that run in child processes. Override ``process_url`` with a URL naming the test's store."""

    @pytest.fixture
    def process_url(self) -> str:
        raise NotImplementedError("a SharedBackendContract subclass must override process_url")

    def test_incr_is_atomic_across_processes(self, process_url: str, tmp_path: Path,
                                             make_backend: MakeBackend) -> None:
        procs_n, per_proc = 4, 250
        barrier = multiprocessing.get_context("spawn").Barrier(procs_n)
        outs = [tmp_path / f"incr-{i}.json" for i in range(procs_n)]
        join = _run_children([(_incr_in_child, (process_url, "hits", per_proc, barrier, str(out)))
                              for out in outs])
        join()
        seen = [v for out in outs for v in json.loads(out.read_text())]
        assert sorted(seen) == list(range(1, procs_n * per_proc + 1))
        assert make_backend().get_value("hits") == procs_n * per_proc

    def test_wait_for_wakes_when_another_process_stores(
            self, process_url: str, make_backend: MakeBackend) -> None:
        backend = make_backend()
        task_id = _new_id()
        join = _run_children([(_store_in_child, (process_url, task_id, 0.2))])
        try:
            meta = backend.wait_for(task_id, timeout=_CHILD_TIMEOUT)
            woke_after = time.time() - meta["result"]
        finally:
            join()
        assert woke_after < _PROMPT

    def test_chord_join_claims_once_across_processes(self, process_url: str,
                                                     tmp_path: Path) -> None:
        procs_n, per_proc = 4, 50
        group_id = _new_id()
        setup = backend_from_url(process_url)
        try:
            setup.set_chord_size(group_id, procs_n * per_proc)
        finally:
            setup.close()
        barrier = multiprocessing.get_context("spawn").Barrier(procs_n)
        outs = [tmp_path / f"chord-{i}.json" for i in range(procs_n)]
        join = _run_children([
            (_chord_parts_in_child, (process_url, group_id,
                                     list(range(n * per_proc, (n + 1) * per_proc)), barrier,
                                     str(out)))
            for n, out in enumerate(outs)])
        join()
        claims = [c for out in outs for c in json.loads(out.read_text())]
        assert len(claims) == procs_n * per_proc and claims.count(True) == 1


    def test_lock_is_won_by_one_of_many_processes(self, process_url: str, tmp_path: Path,
                                                  make_backend: MakeBackend) -> None:
        procs_n, keys = 4, [f"job-{n}" for n in range(25)]
        barrier = multiprocessing.get_context("spawn").Barrier(procs_n)
        outs = [tmp_path / f"lock-{i}.json" for i in range(procs_n)]
        join = _run_children([(_lock_in_child, (process_url, keys, f"proc-{i}", barrier,
                                                str(out))) for i, out in enumerate(outs)])
        join()
        won = {i: json.loads(out.read_text()) for i, out in enumerate(outs)}
        assert sorted(key for keys_won in won.values() for key in keys_won) == sorted(keys), \
            "each lock went to exactly one process"
        check = _locks(make_backend())
        for i, keys_won in won.items():
            assert all(check.lock_owner(key) == f"proc-{i}" for key in keys_won)

    def test_rate_slots_are_unique_across_processes(self, process_url: str,
                                                    tmp_path: Path) -> None:
        procs_n, per_proc, interval = 4, 15, 1000.0
        barrier = multiprocessing.get_context("spawn").Barrier(procs_n)
        outs = [tmp_path / f"rate-{i}.json" for i in range(procs_n)]
        join = _run_children([(_rate_in_child, (process_url, "api",
                                                [f"p{i}-{n}" for n in range(per_proc)],
                                                interval, barrier, str(out)))
                              for i, out in enumerate(outs)])
        join()
        grants = [g for out in outs for g in json.loads(out.read_text())]
        assert _slots(grants, interval) == list(range(procs_n * per_proc + 1))

    def test_blocking_log_read_wakes_when_another_process_appends(
            self, process_url: str, make_backend: MakeBackend) -> None:
        log = _log(make_backend())
        join = _run_children([(_log_append_in_child, (process_url, "inbox", 0.2))])
        try:
            entries, _ = log.log_read("inbox", "", 10, _CHILD_TIMEOUT)
            woke_after = time.time() - float(entries[-1]) if entries else None
        finally:
            join()
        assert len(entries) == 2 and entries[0] == b"first", \
            "the entries of one append arrive together"
        assert woke_after is not None and woke_after < _PROMPT
