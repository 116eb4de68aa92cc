"""Unit tests for backends/meta.py: Celery's meta layout and the safe exception rebuild."""

from __future__ import annotations

import base64
import builtins
import json
import os
import subprocess
import sys
import types
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from celeriac import exceptions as cexc
from celeriac import states
from celeriac.backends import meta
from celeriac.protocol import serialization
from tests.vectors import CELERY_VECTORS

VECTORS = CELERY_VECTORS

_BASE = ["status", "result", "traceback", "children", "date_done"]
_EXTENDED = ["name", "args", "kwargs", "worker", "retries", "queue"]

#: Metas as Celery 5.7 stored them (shared/vectors/celery/redis/worker*/, tracebacks shortened).
_FAILURE = {"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["boom"],
                                            "exc_module": "builtins"},
            "traceback": "Traceback (most recent call last):\nValueError: boom\n",
            "children": [], "date_done": "2026-11-23T08:43:56.166362+00:00",
            "task_id": "bf08fd16-d7d9-4369-bc04-c47caf3283b6"}
_REVOKED = {"status": "REVOKED", "result": {"exc_type": "TaskRevokedError",
                                            "exc_message": ["revoked"],
                                            "exc_module": "celery.exceptions"},
            "traceback": None, "children": [], "date_done": "2026-11-23T08:44:06.802764+00:00",
            "task_id": "b8aae30a-61b0-42da-a896-54ddbf4d4bf2"}
_CHORD_BODY = {"status": "SUCCESS", "result": 6, "traceback": None, "children": [],
               "date_done": "2026-11-23T08:43:56.758009+00:00",
               "group_id": "199fca52-6fbe-4e51-8793-d9088143e560",
               "parent_id": "d133c8c2-d355-4896-893d-17bf1c226f13",
               "task_id": "f5818e95-1455-483f-89f0-1e93a1da1653"}
_RETRY_EXTENDED = {"status": "RETRY", "result": {"exc_type": "RuntimeError",
                                                 "exc_message": ["try again"],
                                                 "exc_module": "builtins"},
                   "traceback": "Traceback ...",
                   "children": [[["45034596-55a2-4843-867e-219971359c4a", None], None]],
                   "date_done": None, "name": "tasks.retry_once", "args": [7], "kwargs": {},
                   "worker": "w1@capture", "retries": 0, "queue": "celery",
                   "task_id": "45034596-55a2-4843-867e-219971359c4a"}


def request_for(celery_meta: dict) -> SimpleNamespace:
    """The worker request (duck-typed, as build_meta reads it) behind a stored meta."""
    return SimpleNamespace(
        id=celery_meta["task_id"], group=celery_meta.get("group_id"),
        parent_id=celery_meta.get("parent_id"), task=celery_meta.get("name"),
        args=celery_meta.get("args"), kwargs=celery_meta.get("kwargs"),
        hostname=celery_meta.get("worker"), retries=celery_meta.get("retries"),
        delivery_info={"routing_key": celery_meta.get("queue")})


def _vector_metas() -> list[tuple[str, bytes]]:
    """Every task meta (raw bytes) Celery 5.7 stored in the captured worker runs, if present."""
    found = []
    for run in ("worker", "worker-extended"):
        path = VECTORS / "redis" / run / "result_backend_final.json"
        if not path.exists():
            continue
        for role, value in json.loads(path.read_text())["task_meta_by_role"].items():
            for n, entry in enumerate(value if isinstance(value, list) else [value]):
                found.append((f"{run}/{role}[{n}]", base64.b64decode(entry["raw"]["b64"])))
    return found


def _rebuild(celery_meta: dict) -> dict:
    return meta.build_meta(celery_meta["task_id"], celery_meta["status"], celery_meta["result"],
                           traceback=celery_meta["traceback"], request=request_for(celery_meta),
                           children=celery_meta["children"], extended="name" in celery_meta)


# ---- build_meta -----------------------------------------------------------------------------
@pytest.mark.parametrize(("celery_meta", "keys"), [
    (_FAILURE, [*_BASE, "task_id"]),
    (_REVOKED, [*_BASE, "task_id"]),
    (_CHORD_BODY, [*_BASE, "group_id", "parent_id", "task_id"]),
    (_RETRY_EXTENDED, [*_BASE, *_EXTENDED, "task_id"]),
], ids=["failure", "revoked", "chord-body", "extended-retry"])
def test_build_meta_matches_celerys_documents(celery_meta: dict, keys: list[str]) -> None:
    built = _rebuild(celery_meta)
    assert list(built) == keys
    assert {**built, "date_done": None} == {**celery_meta, "date_done": None}


def test_build_meta_matches_every_captured_vector() -> None:
    vectors = _vector_metas()
    assert vectors, f"no captured vectors under {VECTORS} (shared/ goes beside the repo)"
    for where, raw in vectors:
        celery_meta = json.loads(raw)
        built = _rebuild(celery_meta)
        assert list(built) == list(celery_meta), where
        # with Celery's timestamp in place, the stored bytes are Celery's bytes
        assert serialization.dumps({**built, "date_done": celery_meta["date_done"]},
                                   "json")[2] == raw, where


@pytest.mark.parametrize("state", sorted(states.READY_STATES))
def test_ready_states_get_an_aware_utc_date_done(state: str) -> None:
    done = meta.build_meta("t", state, None)["date_done"]
    assert done.endswith("+00:00")
    assert abs(datetime.now(timezone.utc) - datetime.fromisoformat(done)) < timedelta(seconds=5)


@pytest.mark.parametrize("state", [states.STARTED, states.RETRY, states.RECEIVED, "PROGRESS"])
def test_unready_states_have_no_date_done(state: str) -> None:
    assert meta.build_meta("t", state, {"pid": 1})["date_done"] is None


def test_build_meta_copies_children_and_defaults_them() -> None:
    children = [[["c1", None], None]]
    built = meta.build_meta("t", states.SUCCESS, 1, children=children)
    children.append("later")
    assert built["children"] == [[["c1", None], None]]
    assert meta.build_meta("t", states.SUCCESS, 1)["children"] == []


def test_request_without_group_or_parent_adds_nothing() -> None:
    request = SimpleNamespace(id="t", group=None, parent_id="")
    assert list(meta.build_meta("t", states.SUCCESS, 1, request=request)) == [*_BASE, "task_id"]


def test_extended_fields_come_from_the_request_and_tolerate_gaps() -> None:
    request = SimpleNamespace(id="t", group="g", parent_id="p", task="tasks.add", args=(1, 2),
                              kwargs={"x": 1}, hostname="w1@h", retries=2,
                              delivery_info={"routing_key": "feed"})
    built = meta.build_meta("t", states.SUCCESS, 3, request=request, extended=True)
    assert list(built) == [*_BASE, "group_id", "parent_id", *_EXTENDED, "task_id"]
    assert (built["name"], built["args"], built["worker"], built["retries"], built["queue"]) == (
        "tasks.add", (1, 2), "w1@h", 2, "feed")
    sparse = meta.build_meta("t", states.SUCCESS, 3, request=SimpleNamespace(delivery_info=None),
                             extended=True)
    assert [sparse[k] for k in _EXTENDED] == [None] * 6
    assert "name" not in meta.build_meta("t", states.SUCCESS, 3, extended=True)


def test_pending_meta() -> None:
    assert meta.pending_meta("abc") == {"status": "PENDING", "result": None, "traceback": None,
                                        "children": [], "date_done": None, "task_id": "abc"}


# ---- exception_to_dict ------------------------------------------------------------------------
class _Outer:
    class Inner(Exception):
        pass


class _NeedsTwo(Exception):
    def __init__(self, first: Any, second: Any) -> None:
        super().__init__(first, second)


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_builtin_exception_to_dict() -> None:
    assert meta.exception_to_dict(ValueError("boom", 3)) == {
        "exc_type": "ValueError", "exc_message": ["boom", 3], "exc_module": "builtins"}


def test_nested_class_uses_its_qualified_name_and_round_trips() -> None:
    data = meta.exception_to_dict(_Outer.Inner("x"))
    assert data == {"exc_type": "_Outer.Inner", "exc_message": ["x"], "exc_module": __name__}
    rebuilt = meta.exception_from_dict(data)
    assert type(rebuilt) is _Outer.Inner and rebuilt.args == ("x",)


def test_unserializable_args_become_their_repr() -> None:
    data = meta.exception_to_dict(RuntimeError(b"raw", {1, 2}, {"ok": [1]}, _BadRepr()))
    assert data["exc_message"] == ["b'raw'", "{1, 2}", {"ok": [1]}, "<unrepresentable _BadRepr>"]
    json.dumps(data)


@pytest.mark.parametrize(("exc", "module"), [
    (cexc.TaskRevokedError("revoked"), "celery.exceptions"),
    (cexc.NotRegistered("tasks.nope"), "celery.exceptions"),
    (cexc.MaxRetriesExceededError("too many"), "celery.exceptions"),
    (cexc.ChordError("Dependency x raised"), "celery.exceptions"),
    (cexc.Retry("Retry in 1s"), "celery.exceptions"),
    (cexc.TimeLimitExceeded(30), "billiard.exceptions"),
    (cexc.SoftTimeLimitExceeded(), "billiard.exceptions"),
    (cexc.WorkerLostError("died"), "billiard.exceptions"),
    (cexc.ContentDisallowed("pickle"), "kombu.exceptions"),
    (cexc.EncodeError("set is not JSON serializable"), "kombu.exceptions"),
    (cexc.AlreadyRunning("lock"), "celeriac.exceptions"),
])
def test_own_exceptions_are_written_where_celery_keeps_them(exc: BaseException, module: str
                                                            ) -> None:
    data = meta.exception_to_dict(exc)
    assert (data["exc_type"], data["exc_module"]) == (type(exc).__name__, module)
    rebuilt = meta.exception_from_dict(data)
    assert type(rebuilt) is type(exc) and rebuilt.args == exc.args


def test_exception_to_dict_passes_maps_through_and_refuses_other_things() -> None:
    data = {"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"}
    assert meta.exception_to_dict(data) is data
    assert meta.exception_to_dict(types.MappingProxyType(data)) == data
    with pytest.raises(TypeError):
        meta.exception_to_dict("not an exception")  # type: ignore[arg-type]


# ---- exception_from_dict ------------------------------------------------------------------------
def test_rebuilds_builtins_and_celery_names() -> None:
    exc = meta.exception_from_dict(_FAILURE["result"])
    assert type(exc) is ValueError and exc.args == ("boom",)
    exc = meta.exception_from_dict(_REVOKED["result"])
    assert type(exc) is cexc.TaskRevokedError and exc.args == ("revoked",)
    exc = meta.exception_from_dict({"exc_type": "RetryTaskError", "exc_message": ["r"],
                                    "exc_module": "celery.exceptions"})
    assert type(exc) is cexc.Retry


def test_message_that_is_not_a_list_is_passed_whole() -> None:
    exc = meta.exception_from_dict({"exc_type": "KeyError", "exc_message": "k",
                                    "exc_module": "builtins"})
    assert type(exc) is KeyError and exc.args == ("k",)


@pytest.mark.parametrize(("module", "name"), [
    ("no_such_module_anywhere", "CustomError"),
    (__name__, "NotDefinedHere"),
    ("celery.exceptions", "Terminated"),
    (None, "os.system"),
])
def test_missing_names_get_a_cached_stand_in(module: str | None, name: str) -> None:
    data = {"exc_type": name, "exc_message": ["why", 2], "exc_module": module}
    exc = meta.exception_from_dict(data)
    assert isinstance(exc, Exception) and exc.args == ("why", 2)
    assert type(exc).__name__ == name.rpartition(".")[2]
    assert type(exc).__module__ == module
    assert type(meta.exception_from_dict(data)) is type(exc)
    assert meta.exception_to_dict(exc) == data


def test_stand_in_when_the_constructor_rejects_its_args() -> None:
    exc = meta.exception_from_dict({"exc_type": "_NeedsTwo", "exc_message": ["only one"],
                                    "exc_module": __name__})
    assert type(exc) is not _NeedsTwo and type(exc).__name__ == "_NeedsTwo"
    assert exc.args == ("only one",)


def test_stand_in_cache_is_bounded() -> None:
    for n in range(meta._STAND_IN_LIMIT + 50):  # noqa: SLF001
        meta.exception_from_dict({"exc_type": f"Flood{n}", "exc_module": "flood.mod"})
    assert len(meta._stand_ins) <= meta._STAND_IN_LIMIT  # noqa: SLF001


@pytest.mark.parametrize("data", [
    {}, {"exc_type": 5, "exc_module": ["x"]}, {"exc_type": "", "exc_message": None},
    {"exc_type": "A..B", "exc_module": "builtins", "exc_message": {"a": 1}},
])
def test_malformed_maps_still_give_an_exception(data: dict) -> None:
    assert isinstance(meta.exception_from_dict(data), Exception)


def test_non_maps_become_plain_exceptions() -> None:
    exc = meta.exception_from_dict("boom")
    assert type(exc) is Exception and exc.args == ("boom",)
    original = ValueError("x")
    assert meta.exception_from_dict(original) is original


# ---- hostile meta -------------------------------------------------------------------------------
@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Replace dangerous callables with recorders; any call at all is a failure."""
    recorded: list[str] = []

    def recorder(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            recorded.append(name)
        return record

    class RecordingPopen:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            recorded.append("subprocess.Popen")

    hooked = types.ModuleType("hostile_hooked")
    hooked.__getattr__ = recorder("module __getattr__")  # type: ignore[attr-defined]
    monkeypatch.setattr(os, "system", recorder("os.system"))
    monkeypatch.setattr(builtins, "eval", recorder("builtins.eval"))
    monkeypatch.setattr(builtins, "exec", recorder("builtins.exec"))
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    monkeypatch.setitem(sys.modules, "hostile_hooked", hooked)
    yield recorded


@pytest.mark.parametrize(("module", "name"), [
    ("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"),
    ("os", "system.__call__"), ("builtins", "os.system"), (None, "os.system"),
    ("celery.exceptions", "os.system"), ("celeriac.exceptions", "Any"), ("os", "path.join"),
    ("hostile_hooked", "anything"), ("builtins", "__import__"), ("sys", "modules"),
])
def test_hostile_meta_never_calls_anything_but_exception_classes(
        calls: list[str], module: str | None, name: str) -> None:
    data = {"exc_type": name, "exc_message": ["echo pwned"], "exc_module": module}
    exc = meta.exception_from_dict(data)
    assert calls == []
    assert isinstance(exc, BaseException)
    if isinstance(exc, cexc.SecurityError):
        assert name in str(exc)
    else:  # a stand-in: not a real class of any of those modules
        assert type(exc).__qualname__ == name and type(exc).__bases__ == (Exception,)


@pytest.mark.parametrize(("module", "name"), [
    ("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("celeriac.exceptions", "Any"),
])
def test_non_exception_names_yield_a_security_error(calls: list[str], module: str, name: str
                                                    ) -> None:
    exc = meta.exception_from_dict({"exc_type": name, "exc_message": [], "exc_module": module})
    assert isinstance(exc, cexc.SecurityError)
    assert calls == []
