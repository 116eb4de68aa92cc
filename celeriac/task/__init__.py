"""Tasks: the ``Task`` base class, the request context, ``shared_task`` and Celery 2/3's ``task``.

Layer: core. A task object is a class instance created per app by the ``@app.task`` decorator; it
knows how to call itself in-process, how to send itself (through the app's producer) and how to
ask for a retry. Execution inside a worker lives in ``worker/executor.py``. ``sets.py`` keeps
Celery 2's ``celery.task.sets`` import path working.
"""

from __future__ import annotations

import inspect
import random
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, ParamSpec, TypeVar, cast

from .. import _context
from ..exceptions import (
    Ignore,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    Retry,
)

if TYPE_CHECKING:
    from ..app import Celery
    from ..canvas import Signature
    from ..result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")


class Context:
    """What a running task knows about its own call (``self.request``).

    Attribute names follow Celery's ``Context`` so task code written for Celery reads the same
    fields. Unknown headers sent by the client are copied in as attributes too.
    """

    id: str | None = None
    task: str | None = None
    args: Any = None
    kwargs: Any = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    hostname: str | None = None
    delivery_info: dict | None = None
    is_eager: bool = False
    eta: Any = None
    expires: Any = None
    callbacks: Any = None
    errbacks: Any = None
    chain: Any = None
    chord: Any = None
    headers: dict | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    origin: str | None = None
    timelimit: tuple | None = None
    #: the limits this run has: the message's, else the task's own (Celery 5.7's fields)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    shadow: str | None = None
    called_directly: bool = True
    #: how many ``Task.replace`` calls led to this task (Celery's header of that name)
    replaced_task_nesting: int = 0
    #: set by the executor so the next ``Task.__call__`` adopts this context instead of pushing one
    _adopt: bool = False

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def add_child(self, result: Any) -> None:
        """Record work this task started (its stored result lists it in ``children``)."""
        children = self.__dict__.get("children")
        if children is None:
            children = self.__dict__["children"] = []
        children.append(result)

    def children_tuples(self) -> list:
        return [child.as_tuple() for child in self.__dict__.get("children") or ()]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"<Context: {self.as_dict()!r}>"


_EMPTY_CONTEXT = Context()


class Task(Generic[P, R]):
    """Base class of every task. Class attributes are the per-task defaults Celery users know."""

    name: str = None  # type: ignore[assignment]
    app: "Celery" = None  # type: ignore[assignment]
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    rate_limit: str | None = None
    #: None: follow the ``task_ignore_result`` setting
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool = False
    serializer: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool = True
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    queue: str | None = None
    priority: int | None = None
    expires: float | datetime | None = None
    throws: tuple[type[BaseException], ...] = ()
    #: True for ``async def`` tasks; they run on the worker's event loop
    is_coroutine: bool = False
    #: a task that spends its run waiting on tasks it sent (a dispatch main task): the worker
    #: runs it on a thread of its own (``async def``: on its event loop), outside the pool and
    #: the prefetch window, so its waiting never takes a slot the tasks it waits on need
    runs_outside_pool: bool = False
    #: the worker buffers this task's requests and calls it once with a list of them
    #: (celeriac.batches.Batches)
    collects_requests: bool = False
    #: at most one call running at a time per key: True (the same name and arguments), a key
    #: template filled with the call's arguments (``"feed:{url}"``) or a callable returning the
    #: key; a worker finding the key held defers the call (celeriac/locks.py, docs/locks.md)
    lock: Any = None
    #: seconds a dead worker's ``lock`` outlives it (renewed while the task runs)
    lock_expire: float | None = None
    #: no second call queued while one with the same key waits to start (keys as for ``lock``)
    unique: Any = None
    #: seconds a queued call keeps its ``unique`` key if it never starts
    unique_expire: float | None = None
    #: the wrapped function, for tasks made by the decorator
    __wrapped__: Callable[..., Any] | None = None
    _bound: bool = False

    def resolved_ignore_result(self) -> bool:
        """The task's own ``ignore_result``, else the app's ``task_ignore_result``."""
        if self.ignore_result is not None:
            return bool(self.ignore_result)
        return bool(self._get_app().conf["task_ignore_result"])  # by key: the cheaper read

    # ---- calling in-process ------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _context.current_request_var.get()
        if ctx is not None and ctx._adopt:
            ctx._adopt = False  # the executor set this context up for exactly this call
            return self.run(*args, **kwargs)
        token = _context.current_request_var.set(
            Context(args=args, kwargs=kwargs, task=self.name, called_directly=True))
        task_token = _context.current_task_var.set(self)
        try:
            return self.run(*args, **kwargs)
        finally:
            _context.current_task_var.reset(task_token)
            _context.current_request_var.reset(token)

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError(f"task {self.name!r} does not define run()")

    @property
    def request(self) -> Context:
        ctx = _context.current_request_var.get()
        return ctx if ctx is not None else _EMPTY_CONTEXT

    # ---- sending --------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> "AsyncResult":
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    task_id: str | None = None, link: Any = None, link_error: Any = None,
                    shadow: str | None = None, **options: Any) -> "AsyncResult":
        """Send the task (or run it eagerly when ``task_always_eager`` is set)."""
        app = self._get_app()
        if app.conf["task_always_eager"]:  # by key: the cheaper read, on every call
            return self.apply(args, kwargs, task_id=task_id, link=link, link_error=link_error,
                              **options)
        if self.typing:
            self._check_arguments(args or (), kwargs or {})
        if self.lock or self.unique:
            from ..locks import send_task_with_locks

            return send_task_with_locks(self, args, kwargs, dict(
                task_id=task_id, link=link, link_error=link_error, shadow=shadow, **options))
        if (task_id is None and link is None and link_error is None and shadow is None
                and not options):  # delay(): maybe sent like the call before it
            result = app._send_plain(self, args, kwargs)
            if result is not None:
                return result
        return app.send_task(self.name, args, kwargs, task_id=task_id, link=link,
                             link_error=link_error, shadow=shadow, _task=self, **options)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              task_id: str | None = None, link: Any = None, link_error: Any = None,
              throw: bool | None = None, retries: int = 0, **options: Any) -> "EagerResult":
        """Run the task here and now, the way a worker would (retries, callbacks), returning its
        result."""
        from ..worker.executor import apply_eagerly

        return apply_eagerly(self, tuple(args or ()), dict(kwargs or {}), task_id=task_id,
                             link=link, link_error=link_error, throw=throw, retries=retries,
                             options=options)

    def _check_arguments(self, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
        fun = self.__wrapped__ or self.run
        if not kwargs and type(args) is tuple:  # delay(...) with positional arguments only
            arity = _arities.get(fun)
            if arity is not None and arity[0] <= len(args) + self._bound <= arity[1]:
                return
        try:
            sig = _signature_of(fun)
        except (TypeError, ValueError):
            return
        try:
            if self._bound:
                sig.bind(None, *args, **kwargs)
            else:
                sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    # ---- retries -----------------------------------------------------------------------------
    def retry(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              exc: BaseException | None = None, throw: bool = True, eta: datetime | None = None,
              countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Retry:
        """Schedule a new run of this task with ``retries + 1``, then raise ``Retry``.

        Past ``max_retries`` the original exception is re-raised (or MaxRetriesExceededError).
        """
        request = self.request
        if request.called_directly and not request.is_eager:
            # Called like a function, outside any worker: nothing to re-send; surface the error.
            if exc is not None:
                raise exc
            raise Retry("Task can be retried", None)
        retries = request.retries or 0
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] "
                f"args:{request.args} kwargs:{request.kwargs}",
                task_args=request.args, task_kwargs=request.kwargs)
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        when: Any = eta if eta is not None else countdown
        ret = Retry(exc=exc, when=when)
        # The executor (worker or eager apply) re-sends this with retries + 1.
        ret.resend = self._retry_signature(request, args, kwargs, eta, countdown, options)  # type: ignore[attr-defined]
        if throw:
            raise ret
        return ret

    def _retry_signature(self, request: Context, args: Any, kwargs: Any, eta: Any,
                         countdown: Any, options: dict) -> dict:
        args, kwargs = self._retry_arguments(request, args, kwargs)
        return {"args": args, "kwargs": kwargs, "eta": eta, "countdown": countdown,
                "options": options}

    def _retry_arguments(self, request: Context, args: Any, kwargs: Any) -> tuple[tuple, dict]:
        """The retry's arguments (Celery 5.7's rules): what is not given is the first call's,
        but one value never reaches a parameter twice. New positional arguments displace the
        old keywords they now fill (``retry(args=(2,))`` of ``f(foo=1)``), and new keywords
        take the place of the old positional arguments they name (``retry(kwargs={"foo": 2})``
        of ``f(1, 2)`` runs ``f(2, 2)``)."""
        old_args, old_kwargs = tuple(request.args or ()), dict(request.kwargs or {})
        if args is None and kwargs is None:
            return old_args, old_kwargs
        if args is not None and kwargs is not None:
            return tuple(args), dict(kwargs)
        slots = self._positional_slots()
        if args is not None:  # new positionals, the old keywords kept where no slot clashes
            filled = {name for name in slots[:len(tuple(args))] if name is not None}
            return tuple(args), {k: v for k, v in old_kwargs.items() if k not in filled}
        kwargs, merged = dict(kwargs), list(old_args)  # new keywords, the old positionals kept
        for index, name in enumerate(slots[:len(merged)]):
            if name is not None and name in kwargs:
                merged[index] = kwargs.pop(name)
        return tuple(merged), kwargs

    def _positional_slots(self) -> list[str | None]:
        """The names of ``run``'s positional parameters in order (None for one that cannot be
        passed by keyword); empty when the signature cannot be read."""
        try:
            parameters = _signature_of(self.run).parameters.values()
        except (TypeError, ValueError):
            return []
        return [p.name if p.kind is p.POSITIONAL_OR_KEYWORD else None for p in parameters
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def retry_countdown(self, retries: int) -> float:
        """Delay before autoretry number ``retries + 1`` (exponential backoff with optional
        jitter)."""
        if not self.retry_backoff:
            return float(self.retry_kwargs.get("countdown", self.default_retry_delay))
        factor = 1 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(factor * (2 ** retries), float(self.retry_backoff_max))
        if self.retry_jitter:
            delay = random.randrange(int(delay) + 1) if delay >= 1 else random.random() * delay
        return float(delay)

    # ---- results and canvas ------------------------------------------------------------------
    def AsyncResult(self, task_id: str, **kwargs: Any) -> "AsyncResult":  # noqa: N802 - Celery's name
        from ..result import AsyncResult

        return AsyncResult(task_id, app=self._get_app(), task_name=self.name, **kwargs)

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None, **kwargs: Any) -> None:
        task_id = task_id or self.request.id
        if task_id is None:
            raise ValueError("update_state needs a task_id outside a running task")
        self._get_app().backend.store_result(task_id, meta, state or "PENDING",
                                             request=self.request)

    def signature(self, args: Iterable[Any] | None = None, kwargs: dict | None = None,
                  options: dict | None = None, **extra: Any) -> "Signature":
        """``add.signature((2, 2), {}, countdown=10)``; ``immutable=True`` makes it ignore the
        result of the task before it (what ``si`` does)."""
        return _signature_class()(self.name, args, kwargs, options, app=self._get_app(),
                                  **extra)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> "Signature":
        if kwargs or self.__class__.signature is not _TASK_SIGNATURE:
            return self.signature(args, kwargs)
        # The usual ``task.s()`` / ``task.s(*args)``: what ``signature`` makes, built here item
        # by item (same keys, same order as ``Signature.__init__``) without its four calls: a
        # group of 10,000 members calls this 10,000 times.
        name = self.name
        if name.__class__ is not str:  # (no name: ``signature`` says what is wrong)
            return self.signature(args, kwargs)
        app = self.app
        if app is None:
            app = self._get_app()
        sig = _new_dict(_signature_type or _signature_class())
        sig["task"] = name
        sig["args"] = args
        sig["kwargs"] = {}
        sig["options"] = {}
        sig["subtask_type"] = None
        sig["immutable"] = False
        sig._app = app
        return sig

    def si(self, *args: Any, **kwargs: Any) -> "Signature":
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> Any:
        """One message that calls this task once per item (``celery.map``)."""
        from ..canvas import xmap

        return xmap(self.s(), it, app=self._get_app())

    def starmap(self, it: Iterable[Any]) -> Any:
        """One message that calls this task once per argument tuple (``celery.starmap``)."""
        from ..canvas import xstarmap

        return xstarmap(self.s(), it, app=self._get_app())

    def chunks(self, it: Iterable[Any], n: int) -> Any:
        """The argument tuples split into messages of ``n`` calls each (a group of starmaps)."""
        from ..canvas import chunks

        return chunks(self.s(), it, n, app=self._get_app())

    # ---- replacing ---------------------------------------------------------------------------
    def replace(self, sig: "Signature") -> Any:
        """End this task and let ``sig`` (a signature, chain, group or chord) take its place:
        the replacement's result becomes this task's result (same id), counts in this task's
        group or chord, and this task's callbacks, errbacks and chain continue after it.

        Raises ``Ignore`` once the replacement is sent (write ``return self.replace(...)``); in
        an eager run the replacement runs here and its value is returned instead.
        """
        from ..canvas import replacing

        sig = replacing.prepare(self._get_app(), self.request, sig)
        return self.on_replace(sig)

    def on_replace(self, sig: "Signature") -> Any:
        """Send the prepared replacement (override and call ``super().on_replace(sig)`` to
        change it first, as on Celery)."""
        if self.request.is_eager:
            return sig.apply().get()
        sig.delay()
        raise Ignore("Replaced by new task")

    def add_to_chord(self, sig: "Signature", lazy: bool = False) -> Any:
        """Make the chord this task is a header member of wait for one more result, ``sig``'s
        (its body then gets it too); ``sig`` is sent unless ``lazy`` (then send it yourself,
        ``sig.delay()``, and the signature is returned). ValueError outside a chord."""
        from ..canvas import replacing

        app = self._get_app()
        request = self.request
        sig, result = replacing.addition(app, request, sig)
        app.backend.add_to_chord(cast(str, request.group), result)
        return sig if lazy else sig.delay()

    # ---- hooks (override in a custom base) -------------------------------------------------
    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None: ...

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None: ...

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: Any) -> None: ...

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: Any) -> None: ...

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple, kwargs: dict,
                     einfo: Any) -> None: ...

    # ---- plumbing ------------------------------------------------------------------------------
    def _get_app(self) -> "Celery":
        if self.app is not None:
            return self.app
        app = _context.get_current_app()
        if app is None:
            raise ImproperlyConfigured(_NO_APP % self.name)
        return app

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main if self.app else '?'}>"


_NO_APP = ("task %r has no Celery app: create one with celeriac.Celery(...) before sending or "
           "running it (shared_task never invents an app with a default broker)")

_signature_cache: dict[Any, inspect.Signature] = {}
_signature_lock = threading.Lock()


#: function -> (fewest, most) positional arguments it takes, for functions whose parameters
#: are all plain (positional or keyword, no ``*args``, ``**kwargs`` or keyword-only): a call
#: with that many positional arguments and no keywords binds, without ``Signature.bind``
_arities: dict[Any, tuple[int, int]] = {}


def _signature_of(fun: Callable[..., Any]) -> inspect.Signature:
    sig = _signature_cache.get(fun)
    if sig is None:
        sig = inspect.signature(fun)
        params = sig.parameters.values()
        with _signature_lock:
            _signature_cache[fun] = sig
            if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
                _arities[fun] = (sum(p.default is p.empty for p in params), len(params))
    return sig


def task_name_for(fun: Callable[..., Any], app: "Celery | None") -> str:
    """``module.function``, as Celery names tasks (``__main__`` becomes the app's main name)."""
    module = fun.__module__
    if module == "__main__" and app is not None and app.main:
        module = app.main
    return f"{module}.{fun.__qualname__}" if "<locals>" not in fun.__qualname__ else \
        f"{module}.{fun.__name__}"


def build_task_class(fun: Callable[..., Any], app: "Celery", *, base: type[Task] | None = None,
                     bind: bool = False, name: str | None = None, **options: Any) -> Task:
    """Make a Task subclass whose ``run`` is ``fun`` and return its one instance for ``app``."""
    base = base or app.Task
    task_name = name or task_name_for(fun, app)
    # a function may bring defaults of its own (a dispatch main task: acks_late, outside the
    # pool); what the decorator was given wins
    options = {**getattr(fun, "__celeriac_task_options__", {}), **options}
    body = fun
    if options.get("pydantic"):  # Celery 5.5's option: see task/pydantic_args.py
        from .pydantic_args import wrap

        body = wrap(fun, task_name, strict=bool(options.get("pydantic_strict", False)),
                    context=options.get("pydantic_context"),
                    dump_kwargs=options.get("pydantic_dump_kwargs"))
    run = body if bind else staticmethod(body)
    attrs: dict[str, Any] = {
        "app": app,
        "name": task_name,
        "run": run,
        "_bound": bind,
        "__wrapped__": staticmethod(fun),
        "__doc__": fun.__doc__,
        "__module__": fun.__module__,
        "__qualname__": fun.__qualname__,
        "is_coroutine": inspect.iscoroutinefunction(fun),
    }
    for key, value in options.items():
        if key in ("autoretry_for", "dont_autoretry_for", "throws") and value is not None:
            value = tuple(value)
        attrs[key] = value
    cls = type(fun.__name__, (base,), attrs)
    return cls()


# ---- shared_task --------------------------------------------------------------------------
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_shared_lock = threading.Lock()


def _register_shared_with(app: "Celery") -> None:
    with _shared_lock:
        pending = list(_shared_tasks)
    for fun, opts in pending:
        app._task_from_fun(fun, **opts)


class SharedTaskProxy:
    """What ``@shared_task`` returns: the same task on whichever app is current when used."""

    def __init__(self, fun: Callable[..., Any], options: dict[str, Any]) -> None:
        self.__wrapped__ = fun
        self._options = options
        self.__doc__ = fun.__doc__
        self.__name__ = fun.__name__
        self.__module__ = fun.__module__

    def _resolve(self) -> Task:
        app = _context.get_current_app()
        name = self._options.get("name") or task_name_for(self.__wrapped__, app)
        if app is None:
            raise ImproperlyConfigured(_NO_APP % name)
        try:
            return app.tasks[name]
        except KeyError:
            app._task_from_fun(self.__wrapped__, **self._options)
            return app.tasks[name]

    @property
    def name(self) -> str:
        app = _context.get_current_app()
        return self._options.get("name") or task_name_for(self.__wrapped__, app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _context.get_current_app() is None and not self._options.get("bind"):
            return self.__wrapped__(*args, **kwargs)  # a plain call needs no app
        return self._resolve()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._resolve(), attr)

    def __repr__(self) -> str:
        return f"<@shared_task: {self.name}>"


def replace_shared_function(proxy: SharedTaskProxy, fun: Callable[..., Any]) -> None:
    """``@dispatch`` above ``@shared_task``: the task becomes ``fun`` on every app, those
    made already and those to come (the name stays the original function's)."""
    old = proxy.__wrapped__
    options = dict(proxy._options)
    with _shared_lock:
        for position, (shared_fun, opts) in enumerate(_shared_tasks):
            if shared_fun is old:
                _shared_tasks[position] = (fun, opts)
    proxy.__wrapped__ = fun
    from ..app import _all_apps

    for app in list(_all_apps):
        app._task_from_fun(fun, **options)


def shared_task(*args: Any, **options: Any) -> Any:
    """Define a task for every app, bound to the current app at use time (never a default one)."""

    def decorate(fun: Callable[..., Any]) -> SharedTaskProxy:
        with _shared_lock:
            _shared_tasks.append((fun, options))
        from ..app import _all_apps

        for app in list(_all_apps):
            app._task_from_fun(fun, **options)
        return SharedTaskProxy(fun, options)

    return _decorator("shared_task", decorate, args, options)


def _decorator(what: str, decorate: Callable[[Callable[..., Any]], Any], args: tuple,
               options: dict[str, Any]) -> Any:
    """``@what`` (the function decorated) and ``@what(**options)`` (the decorator); positional
    arguments other than the function are a mistake."""
    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    if args:
        raise TypeError(f"{what} takes keyword options only, e.g. @{what}(bind=True)")
    return decorate


def task(*args: Any, **options: Any) -> Any:
    """Celery 2/3's ``from celery.task import task``: ``@task`` and ``@task(name=..., ...)``.

    The task is registered on every app, the current one included (Celery 3's ``@task`` was
    shared the same way), and used through whichever app is current: it is ``shared_task``.
    """
    return _decorator("task", shared_task(**options), args, options)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


#: ``canvas.Signature`` once ``_signature_class`` has imported it
_signature_type: Any = None
_new_dict = dict.__new__


def _signature_class() -> type["Signature"]:
    """``canvas.Signature``, imported once (canvas imports this module): a group of 10,000
    members calls ``task.s()`` 10,000 times, and an import statement per call was a third of it."""
    global _signature_type
    if _signature_type is None:
        from ..canvas import Signature

        _signature_type = Signature
    return _signature_type


#: ``Task.s`` builds the signature itself only while ``signature`` is this one (not overridden)
_TASK_SIGNATURE = Task.signature
