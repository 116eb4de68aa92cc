"""Reading task outcomes: ``AsyncResult``, ``EagerResult``, ``ResultSet`` and ``GroupResult``.

Layer: results (client side). Reads go through the app's result store; waiting uses the store's
change notification, not a fixed polling interval. Exceptions are rebuilt by backends/meta.py,
which never calls anything that is not an exception class.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import _context, states
from .exceptions import ImproperlyConfigured, TaskRevokedError
from .exceptions import TimeoutError as CeleriacTimeoutError

if TYPE_CHECKING:
    from .app import Celery
    from .backends.base import ResultBackend


def _resolve_app(app: "Celery | None") -> "Celery":
    app = app or _context.get_current_app()
    if app is None:
        raise ImproperlyConfigured(
            "AsyncResult needs an app: pass app= or create a Celery app first")
    return app


def _in_worker_task() -> bool:
    """True while a worker runs a task in this context (not for eager runs or plain calls)."""
    request = _context.current_request_var.get()
    return request is not None and not request.is_eager and not request.called_directly


def _refuse_to_wait() -> RuntimeError:
    """Celery's error for a ``get()`` in a task, raised only when the result is not ready yet:
    a ready one is returned at once (nothing to wait for, so nothing can deadlock)."""
    return RuntimeError(
        "Never call result.get() within a task! The result is not ready, and waiting on another "
        "task from inside a task can deadlock the worker: use a chain, a chord or a link "
        "callback instead (or pass disable_sync_subtasks=False to wait anyway).")


class AsyncResult:
    """The outcome of a task that was sent, looked up by id."""

    # What a result starts with, on the class: ``_drawn`` (a group's 10,000 members) sets only
    # the id, app and name of each.
    _backend: "ResultBackend | None" = None
    parent: "AsyncResult | None" = None
    _cache: dict | None = None

    def __init__(self, id: str, backend: "ResultBackend | None" = None,  # noqa: A002
                 task_name: str | None = None, app: "Celery | None" = None,
                 parent: "AsyncResult | None" = None) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"AsyncResult needs a task id string, got {id!r}")
        self.id = id
        self.app = _resolve_app(app) if backend is None else app
        self._backend = backend
        self.name = task_name
        self.parent = parent
        self._cache = None

    @classmethod
    def _drawn(cls, id: str, app: "Celery", task_name: str | None) -> "AsyncResult":  # noqa: A002
        """The result of a task this process just sent with an id it drew itself (a group's
        member): what ``AsyncResult(id, app=app, task_name=...)`` makes, without its checks."""
        result = cls.__new__(cls)
        result.id = id
        result.app = app
        result.name = task_name
        return result

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def backend(self) -> "ResultBackend":
        return self._backend if self._backend is not None else self.app.backend  # type: ignore[union-attr]

    # ---- reading -------------------------------------------------------------------------------
    def _get_task_meta(self) -> dict:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_task_meta(self.id)
        if meta.get("status") in states.READY_STATES:
            self._cache = meta  # a ready result never changes
        return meta

    def _set_cache(self, meta: dict) -> None:
        if meta.get("status") in states.READY_STATES:
            self._cache = meta

    def _known_meta(self) -> dict | None:
        """The meta if it is known without asking the store (ready results never change)."""
        return self._cache

    @property
    def state(self) -> str:
        return self._get_task_meta()["status"]

    status = state

    @property
    def info(self) -> Any:
        meta = self._get_task_meta()
        if meta["status"] in states.EXCEPTION_STATES:
            return self.backend.exception_from_meta(meta)
        return meta.get("result")

    result = info

    @property
    def traceback(self) -> str | None:
        return self._get_task_meta().get("traceback")

    @property
    def date_done(self) -> datetime | None:
        value = self._get_task_meta().get("date_done")
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed
        return value

    @property
    def children(self) -> list["AsyncResult"]:
        from .canvas import result_from_tuple

        return [result_from_tuple(c, self.app) for c in self._get_task_meta().get("children") or []]

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            no_ack: bool = True, follow_parents: bool = True, disable_sync_subtasks: bool = True,
            on_message: Callable[[dict], None] | None = None, **kwargs: Any) -> Any:
        """Wait for the task to finish and return its value (or raise its exception).

        While it is not finished, a failed parent (an earlier step of its chain, a task of its
        chord's header) is raised at once instead of waiting, as on Celery. Once it has
        finished its own outcome is the answer, so a finished chord body never walks its header.
        """
        meta = self._cache
        if disable_sync_subtasks and meta is None and _in_worker_task():
            # inside a task: answer from the store if the result is ready, never wait
            meta = self.backend.get_task_meta(self.id)
            if meta["status"] not in states.READY_STATES:
                raise _refuse_to_wait()
        if meta is None and follow_parents and propagate and self.parent is not None:
            meta = self.backend.get_task_meta(self.id)
            if meta["status"] not in states.READY_STATES:
                self.parent._raise_if_failed()
                meta = None
        if meta is None:
            meta = self.backend.wait_for(self.id, timeout=timeout)
        self._set_cache(meta)
        if on_message is not None:
            on_message(meta)
        return self._value_from(meta, propagate)

    wait = get

    def _value_from(self, meta: dict, propagate: bool) -> Any:
        status = meta["status"]
        if status == states.SUCCESS:
            return meta.get("result")
        exc = self.backend.exception_from_meta(meta)
        if status == states.REVOKED and not isinstance(exc, TaskRevokedError):
            exc = TaskRevokedError(*getattr(exc, "args", ("revoked",)))
        if propagate:
            raise exc
        return exc

    def _raise_if_failed(self) -> None:
        if self.parent is not None:
            self.parent._raise_if_failed()
        meta = self._get_task_meta()
        if meta["status"] in states.PROPAGATE_STATES:
            self._value_from(meta, propagate=True)

    def maybe_throw(self, propagate: bool = True) -> None:
        meta = self._get_task_meta()
        if meta["status"] in states.PROPAGATE_STATES and propagate:
            self._value_from(meta, propagate=True)

    def throw(self, *args: Any) -> None:
        self.maybe_throw()

    def forget(self) -> None:
        self._cache = None
        self.backend.forget(self.id)

    def revoke(self, connection: Any = None, terminate: bool = False, signal: Any = None,
               wait: bool = False, timeout: float | None = None) -> None:
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)  # type: ignore[union-attr]

    def as_tuple(self) -> list:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], None]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __reduce__(self) -> Any:
        return (_rebuild_async_result, (self.id, self.name))


def _rebuild_async_result(task_id: str, name: str | None) -> AsyncResult:
    return AsyncResult(task_id, task_name=name)


class EagerResult(AsyncResult):
    """The outcome of ``task.apply()``: already known, nothing stored anywhere."""

    def __init__(self, id: str, ret_value: Any, state: str, traceback: str | None = None,  # noqa: A002
                 name: str | None = None, app: "Celery | None" = None) -> None:
        self.id = id
        self.app = app
        self._backend = None
        self.name = name
        self.parent = None
        self._result = ret_value
        self._state = state
        self._traceback = traceback
        self._cache = None

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def info(self) -> Any:
        return self._result

    result = info

    @property
    def traceback(self) -> str | None:
        return self._traceback

    @property
    def children(self) -> list[AsyncResult]:
        return []

    @property
    def date_done(self) -> None:
        return None

    def get(self, timeout: float | None = None, propagate: bool = True,  # type: ignore[override]
            disable_sync_subtasks: bool = True, **kwargs: Any) -> Any:
        if self._state == states.SUCCESS:
            return self._result
        if propagate and self._state in states.PROPAGATE_STATES:
            raise self._result
        return self._result

    wait = get  # type: ignore[assignment]  # the same narrower signature as get

    def forget(self) -> None:
        pass

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        self._state = states.REVOKED

    def ready(self) -> bool:
        return self._state in states.READY_STATES

    def _known_meta(self) -> dict | None:
        return {"status": self._state, "result": self._result, "task_id": self.id}

    def _set_cache(self, meta: dict) -> None:
        pass

    def _value_from(self, meta: dict, propagate: bool) -> Any:
        return self.get(propagate=propagate)

    def __reduce__(self) -> Any:
        return (EagerResult, (self.id, self._result, self._state, self._traceback, self.name))


class ResultSet:
    """Several results read together, in the order they were given.

    Reads go to the store in one batch (one MGET on Redis) for all members, nested groups
    included; waiting uses the store's change notification for all of them at once.
    """

    def __init__(self, results: Iterable[Any], app: "Celery | None" = None,
                 **kwargs: Any) -> None:
        self.results = list(results)
        self._app = app

    @property
    def app(self) -> "Celery":
        return _resolve_app(self._app or next(
            (r.app for r in self.results if getattr(r, "app", None) is not None), None))

    @property
    def children(self) -> list[Any]:
        return self.results

    @property
    def supports_native_join(self) -> bool:
        return True

    # ---- membership ------------------------------------------------------------------------
    def add(self, result: Any) -> None:
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Any) -> None:
        if isinstance(result, str):
            result = AsyncResult(result, app=self._app)
        self.results.remove(result)

    def discard(self, result: Any) -> None:
        try:
            self.remove(result)
        except ValueError:
            pass

    def update(self, results: Iterable[Any]) -> None:
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        self.results[:] = []

    def _leaves(self) -> Iterator[AsyncResult]:
        """Every single-task result, nested groups flattened, in call order."""
        for result in self.results:
            if isinstance(result, ResultSet):
                yield from result._leaves()
            else:
                yield result

    # ---- reading -------------------------------------------------------------------------------
    def _metas(self) -> dict[str, dict]:
        """id -> meta for every leaf; results already known (ready, or eager) cost nothing."""
        metas: dict[str, dict] = {}
        unknown: list[str] = []
        for leaf in self._leaves():
            known = leaf._known_meta()
            if known is not None:
                metas[leaf.id] = known
            else:
                unknown.append(leaf.id)
        if unknown:
            metas.update(self.app.backend.get_many_meta(unknown))
        return metas

    def ready(self) -> bool:
        return all(m["status"] in states.READY_STATES for m in self._metas().values())

    def successful(self) -> bool:
        return all(m["status"] == states.SUCCESS for m in self._metas().values())

    def failed(self) -> bool:
        return any(m["status"] == states.FAILURE for m in self._metas().values())

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(m["status"] == states.SUCCESS for m in self._metas().values())

    def maybe_throw(self, propagate: bool = True, callback: Any = None) -> None:
        """Raise the first failure (in call order) among the results that are ready."""
        if not propagate:
            return
        metas = self._metas()
        for leaf in self._leaves():
            meta = metas[leaf.id]
            if meta["status"] in states.PROPAGATE_STATES:
                leaf._value_from(meta, propagate=True)

    maybe_reraise = maybe_throw

    def _raise_if_failed(self) -> None:
        parent = getattr(self, "parent", None)
        if parent is not None:
            parent._raise_if_failed()
        self.maybe_throw()

    def revoke(self, connection: Any = None, terminate: bool = False, signal: Any = None,
               wait: bool = False, timeout: float | None = None) -> None:
        self.app.control.revoke([r.id for r in self._leaves()], terminate=terminate,
                                signal=signal)

    def forget(self) -> None:
        leaves = list(self._leaves())
        for leaf in leaves:
            leaf._cache = None
        self.app.backend.delete_keys([self.app.backend.task_key(r.id) for r in leaves
                                      if not isinstance(r, EagerResult)])

    # ---- waiting -------------------------------------------------------------------------------
    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> list:
        return self.join(timeout=timeout, propagate=propagate, **kwargs)

    def join(self, timeout: float | None = None, propagate: bool = True,
             interval: float = 0.5, callback: Callable[[str, Any], None] | None = None,
             no_ack: bool = True, on_message: Any = None, on_interval: Any = None,
             disable_sync_subtasks: bool = True, **kwargs: Any) -> list:
        """Wait for every result; values in call order (nested groups as nested lists).

        With ``callback``, each ``callback(task_id, value)`` is called in call order instead and
        the returned list is empty, as on Celery.
        """
        if disable_sync_subtasks and _in_worker_task():
            self._refuse_unless_ready()
        self._wait_all(timeout, stop_on_failure=propagate)
        if propagate:
            self.maybe_throw()  # a failure is raised as soon as it is known, as on Celery
        values: list = []
        for result in self.results:
            if isinstance(result, ResultSet):
                value: Any = result.join(propagate=propagate, disable_sync_subtasks=False)
            else:
                value = result._value_from(result._known_meta(), propagate)
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    join_native = join

    def _refuse_unless_ready(self) -> None:
        """Inside a task: one read of every member; all ready -> cached for the join that
        follows, else Celery's "Never call result.get() within a task!"."""
        metas = self._metas()
        for leaf in self._leaves():
            leaf._set_cache(metas[leaf.id])
        if any(m["status"] not in states.READY_STATES for m in metas.values()):
            raise _refuse_to_wait()

    def _wait_all(self, timeout: float | None, stop_on_failure: bool = False) -> None:
        pending = [leaf for leaf in self._leaves() if leaf._known_meta() is None]
        if not pending:
            return
        metas = self.app.backend.wait_for_many(list(dict.fromkeys(r.id for r in pending)),
                                               timeout=timeout, until_failure=stop_on_failure)
        for leaf in pending:
            meta = metas.get(leaf.id)
            if meta is not None:
                leaf._set_cache(meta)

    def iterate(self, timeout: float | None = None, propagate: bool = True,
                interval: float = 0.5) -> Iterator[Any]:
        """Yield values as results finish (completion order, not call order)."""
        pending: dict[str, AsyncResult] = {}
        for leaf in self._leaves():
            meta = leaf._known_meta()
            if meta is not None:
                yield leaf._value_from(meta, propagate)
            else:
                pending[leaf.id] = leaf
        if not pending:
            return
        backend = self.app.backend
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            for tid, meta in backend.get_many_meta(list(pending)).items():
                if meta["status"] in states.READY_STATES:
                    result = pending.pop(tid)
                    result._set_cache(meta)
                    yield result._value_from(meta, propagate)
            if pending:
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise CeleriacTimeoutError("the operation timed out")
                backend._wait_change([backend.task_key(t) for t in pending], min(remaining, 1.0))

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"


class GroupResult(ResultSet):
    """The results of a group, with the group's id (saved with ``save()``, found by ``restore``)."""

    def __init__(self, id: str | None = None, results: Iterable[Any] | None = None,  # noqa: A002
                 parent: AsyncResult | None = None, app: "Celery | None" = None,
                 **kwargs: Any) -> None:
        super().__init__(results or [], app=app)
        self.id = id
        self.parent = parent

    def as_tuple(self) -> list:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], [r.as_tuple() for r in self.results]]

    def save(self, backend: "ResultBackend | None" = None) -> "GroupResult":
        (backend or self.app.backend).save_group(self._stored_id(), self.as_tuple())
        return self

    def delete(self, backend: "ResultBackend | None" = None) -> None:
        (backend or self.app.backend).delete_group(self._stored_id())

    def _stored_id(self) -> str:
        if self.id is None:
            raise ValueError("a GroupResult without an id cannot be saved or deleted")
        return self.id

    @classmethod
    def restore(cls, id: str, backend: "ResultBackend | None" = None,  # noqa: A002
                app: "Celery | None" = None) -> "GroupResult | None":
        app = _resolve_app(app)
        stored = (backend or app.backend).restore_group(id)
        if stored is None:
            return None
        from .canvas import result_from_tuple

        restored = result_from_tuple(stored, app)
        if cls is not GroupResult and isinstance(restored, GroupResult):
            restored = cls(restored.id, restored.results, parent=restored.parent, app=app)
        return restored

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    __hash__ = None

    def __reduce__(self) -> Any:
        return (_rebuild_group_result, (type(self), self.id, self.results, self.parent))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id} [{', '.join(r.id for r in self.results)}]>"


def _rebuild_group_result(cls: type, group_id: str, results: list, parent: Any) -> "GroupResult":
    return cls(group_id, results, parent=parent)


class TaskSetResult(GroupResult):
    """Celery 2's name for a group's results (``TaskSet(...).apply_async()`` returns one)."""

    def __init__(self, taskset_id: str | None = None, subtasks: Iterable[Any] | None = None,
                 app: "Celery | None" = None, **kwargs: Any) -> None:
        results = kwargs.pop("results", None)
        super().__init__(taskset_id or kwargs.pop("id", None),
                         subtasks if subtasks is not None else results, app=app, **kwargs)

    @property
    def taskset_id(self) -> str | None:
        return self.id

    @property
    def subtasks(self) -> list[Any]:
        return self.results

    @property
    def total(self) -> int:
        return len(self.results)

    def itersubtasks(self) -> Iterator[Any]:
        return iter(self.results)
