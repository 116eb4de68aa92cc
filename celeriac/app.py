"""The ``Celery`` app: settings, the task registry, and the lazily built transport and result store.

Layer: core. The app wires the layers together but does no I/O until something is sent or read:
creating an app (even many, in tests) is cheap, and nothing connects at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import _context
from .config import Settings, settings_from_object, validate
from .exceptions import ImproperlyConfigured
from .result import AsyncResult as _AsyncResult  # every send_task makes one
from .task import Task, _register_shared_with, build_task_class
from .task import Task as BaseTask  # for annotations in Celery, where ``Task`` is its attribute
from .utils.clock import LamportClock
from .utils.forks import PidGuard
from .utils.sqlite import DEFAULT_SQLITE_URL

if TYPE_CHECKING:
    from .backends.base import ResultBackend
    from .control import Control
    from .events import Events
    from .locks import Lock
    from .producer import Producer
    from .result import AsyncResult
    from .transport.base import Transport

#: every live app, so ``shared_task`` can register with apps created before and after it
_all_apps: "weakref.WeakSet[Celery]" = weakref.WeakSet()

#: the embedded broker's lease when the user sets none: short enough that a killed worker's tasks
#: come back within a minute, long compared to the worker's lease renewal interval
SQLITE_DEFAULT_VISIBILITY_TIMEOUT = 60.0


class TaskRegistry(dict):
    """name -> Task. A KeyError names the missing task (``NotRegistered``)."""

    def __missing__(self, name: str) -> Task:
        from .exceptions import NotRegistered

        raise NotRegistered(name)

    def regular(self) -> dict[str, Task]:
        return {k: v for k, v in self.items() if not k.startswith("celery.")}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # ``@app.tasks`` (a slip found in older notes) would otherwise fail with a bare
        # "'TaskRegistry' object is not callable"
        raise TypeError("app.tasks is the task registry, not a decorator: did you mean @app.task?")


class Celery:
    """A celeriac application: ``Celery(main, broker=..., backend=...)``, as in Celery."""

    Task: type[Task] = Task

    def __init__(self, main: str | None = None, broker: str | None = None,
                 backend: str | None = None, *, include: Iterable[str] | None = None,
                 config_source: Any = None, set_as_current: bool = True,
                 task_cls: type[BaseTask] | str | None = None, autofinalize: bool = True,
                 **settings: Any) -> None:
        self.main = main
        self.conf = Settings()
        if config_source is not None:
            self.config_from_object(config_source)
        if broker:
            self.conf["broker_url"] = broker
        if backend:
            self.conf["result_backend"] = backend
        if include:
            self.conf["include"] = list(include)
        if settings:
            self.conf.update(settings)
        if task_cls is not None:
            self.Task = _symbol(task_cls) if isinstance(task_cls, str) else task_cls
        self.tasks = TaskRegistry()
        self._lock = threading.RLock()
        self._transport: Transport | None = None
        self._backend: ResultBackend | None = None
        self._producer: Producer | None = None
        self._control: Control | None = None
        self._events: Events | None = None
        #: this node's Lamport clock: ticked by each event sent, moved past the clocks heard
        #: from other nodes (Celery's ``app.clock``)
        self.clock = LamportClock()
        self._finalized = False
        #: features on the worker's extension points (``celeriac.worker.extensions``), added
        #: after the built-in ones by every worker this app starts
        self.worker_extensions: list[Any] = []
        self._forks = PidGuard()
        from .signals import Signal

        #: Celery's app signals: sent once, with ``sender=app``, when the app is finalized (its
        #: first real use: a worker or beat starting, a task sent): the place for
        #: ``sender.add_periodic_task(...)``
        self.on_configure = Signal("app.on_configure")
        self.on_after_configure = Signal("app.on_after_configure", providing_args={"source"})
        self.on_after_finalize = Signal("app.on_after_finalize")
        self._register_builtins()
        _all_apps.add(self)
        _register_shared_with(self)
        if set_as_current:
            self.set_current()
            _context.set_default_app(self)

    # ---- configuration -------------------------------------------------------------------------
    def config_from_object(self, obj: Any, silent: bool = False, force: bool = False,
                           namespace: str | None = None) -> None:
        """Load settings from a module, a dotted module name, or an object (Celery's rules)."""
        try:
            values = settings_from_object(obj, namespace=namespace)
        except ImportError:
            if silent:
                return
            raise
        self.conf.update(values)
        self._reset_connections()

    def config_from_envvar(self, variable_name: str, silent: bool = False,
                           force: bool = False) -> None:
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return
            raise ImproperlyConfigured(f"environment variable {variable_name!r} is not set")
        self.config_from_object(module_name, silent=silent, force=force)

    def finalize(self) -> None:
        """Validate settings and import ``imports``/``include`` modules; done once, on first use."""
        if self._finalized:
            return
        with self._lock:
            if self._finalized:
                return
            validate(self.conf)
            if self.conf.get("tracing_enabled"):  # spans from this process's first use on
                from .metrics.tracing import instrument

                instrument()
            from . import signals

            if signals.import_modules.receivers:
                signals.import_modules.send(sender=self)
            modules = [*(self.conf.get("imports") or ()), *(self.conf.get("include") or ())]
            for module in modules:
                importlib.import_module(module)
            self._finalized = True
        # after the flag: a handler may send tasks or read ``app.backend`` (which finalize)
        self.on_configure.send(sender=self)
        self.on_after_configure.send(sender=self, source=self.conf)
        self.on_after_finalize.send(sender=self)

    @property
    def broker_url(self) -> str:
        return (self.conf.get("broker_url") or os.environ.get("CELERIAC_BROKER_URL")
                or DEFAULT_SQLITE_URL)

    @property
    def result_backend_url(self) -> str:
        return (self.conf.get("result_backend") or os.environ.get("CELERIAC_RESULT_BACKEND")
                or self._default_backend_url())

    def _default_backend_url(self) -> str:
        # With the embedded broker, results live in the same file (one thing to find and back up).
        # With Redis as broker, results go to the same server, where every machine can read them.
        broker = self.broker_url
        if broker.startswith(("sqlite://", "memory://", "redis://", "rediss://")):
            return broker
        return DEFAULT_SQLITE_URL

    # ---- connections ---------------------------------------------------------------------------
    @property
    def transport(self) -> "Transport":
        self._check_fork()
        if self._transport is None:
            self.finalize()  # first: its signal handlers may send tasks, building this
            with self._lock:
                if self._transport is None:
                    from .transport import transport_from_url

                    url = self.broker_url
                    options = dict(self.conf.get("broker_transport_options") or {})
                    if url.startswith("sqlite") and "visibility_timeout" not in options:
                        options["visibility_timeout"] = SQLITE_DEFAULT_VISIBILITY_TIMEOUT
                    use_ssl = self.conf.get("broker_use_ssl")
                    if isinstance(use_ssl, dict) and url.startswith("rediss"):
                        options = {**use_ssl, **options}  # Celery's TLS setting for the broker
                    if url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"):
                        options = {**_amqp_options(self.conf), **options}
                    self._transport = transport_from_url(url, **options)
        return self._transport

    @property
    def backend(self) -> "ResultBackend":
        self._check_fork()
        if self._backend is None:
            self.finalize()  # first: its signal handlers may send tasks, building this
            with self._lock:
                if self._backend is None:
                    from .backends import backend_from_url

                    self._backend = backend_from_url(self.result_backend_url, app=self)
        return self._backend

    @property
    def producer(self) -> "Producer":
        self._check_fork()
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    from .producer import Producer

                    self._producer = Producer(self)
        return self._producer

    @property
    def control(self) -> "Control":
        if self._control is None:
            from .control import Control

            self._control = Control(self)
        return self._control

    @property
    def events(self) -> "Events":
        """Celery's ``app.events``: ``Receiver``, ``Dispatcher`` and ``State`` for monitors
        (celeriac/events/)."""
        if self._events is None:
            from .events import Events

            self._events = Events(self)
        return self._events

    def connection(self, *args: Any, **kwargs: Any) -> "contextlib.nullcontext[Celery]":
        """Celery's ``app.connection()`` for code written against Celery (``with
        app.connection() as conn: app.events.Receiver(conn, ...)``): celeriac's app keeps its
        broker connections itself, so this stands in for one and opens nothing."""
        return contextlib.nullcontext(self)

    connection_for_read = connection_for_write = connection

    def _check_fork(self) -> None:
        # Connections must never be shared across fork: a child starts its own.
        if self._forks.forked():
            self._after_fork()

    def _after_fork(self) -> None:
        # The parent's connection objects are abandoned, not closed: closing a SQLite or socket
        # handle inherited through fork can disturb the parent's use of it.
        _fork_leftovers.extend(x for x in (self._transport, self._backend, self._producer) if x)
        self._transport = self._backend = self._producer = None
        self._lock = threading.RLock()
        self._forks.adopt()

    def _reset_connections(self) -> None:
        with self._lock:
            for thing in (self._transport, self._backend):
                if thing is not None:
                    thing.close()
            self._transport = self._backend = self._producer = None
            self._finalized = False

    def close(self) -> None:
        """Close the broker and result-store connections this app opened."""
        self._reset_connections()

    def __enter__(self) -> "Celery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_current(self) -> None:
        _context.current_app_var.set(self)

    def set_default(self) -> None:
        _context.set_default_app(self)

    # ---- tasks ---------------------------------------------------------------------------------
    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task`` and ``@app.task(name=..., bind=True, ...)``."""
        if len(args) == 1 and callable(args[0]) and not options:
            return self._task_from_fun(args[0])
        if args:
            raise TypeError("app.task() takes keyword options only, e.g. @app.task(bind=True)")

        def decorate(fun: Callable[..., Any]) -> Task:
            return self._task_from_fun(fun, **options)

        return decorate

    def _task_from_fun(self, fun: Callable[..., Any], *, name: str | None = None,
                       base: type[BaseTask] | None = None, bind: bool = False,
                       shared: bool = True, **options: Any) -> BaseTask:
        task = build_task_class(fun, self, base=base, bind=bind, name=name, **options)
        existing = self.tasks.get(task.name)
        if existing is not None and getattr(existing, "__wrapped__", None) is fun:
            return existing
        self.tasks[task.name] = task
        return task

    def register_task(self, task: BaseTask | type[BaseTask]) -> BaseTask:
        """Register a class-based task (``class MyTask(app.Task)``)."""
        if isinstance(task, type):
            task = task()
        if not task.name:
            task.name = f"{type(task).__module__}.{type(task).__name__}"
        if task.app is None:
            task.app = self
        self.tasks[task.name] = task
        return task

    def _register_builtins(self) -> None:
        from .builtins import register_builtins

        register_builtins(self)

    def autodiscover_tasks(self, packages: Iterable[str] | Callable[[], Iterable[str]],
                           related_name: str = "tasks", force: bool = False) -> None:
        """Import ``<package>.<related_name>`` for each package that has one."""
        names = packages() if callable(packages) else packages
        for package in names:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name not in (f"{package}.{related_name}", package):
                    raise

    # ---- sending and results ------------------------------------------------------------------
    def send_task(self, name: str, args: Iterable[Any] | None = None,
                  kwargs: dict[str, Any] | None = None, **options: Any) -> "AsyncResult":
        """Send a task by name (it need not be registered here), returning its AsyncResult."""
        add_to_parent = options.pop("add_to_parent", True)
        task_id = self.producer.send(name, args, kwargs, **options)
        result = _AsyncResult(task_id, app=self, task_name=name)
        if add_to_parent:
            _context.add_to_current_parent(result)
        return result

    def _send_plain(self, task: Any, args: Any, kwargs: Any) -> "AsyncResult | None":
        """``send_task`` of a call to ``task`` with no option (``delay()``), when the producer
        sends it like the call before it (``Producer.send_like``: never from inside a running
        task, so there is no parent to add it to); None: send it with ``send_task``, as
        always when that is overridden or patched (on the class or the app)."""
        if type(self).send_task is not _SEND_TASK or "send_task" in self.__dict__:
            return None
        producer = self.producer  # checks for a fork: ``_transport`` is this process's then
        task_id = producer.send_like(task.name, args, kwargs, task, self._transport)
        return None if task_id is None else _AsyncResult._drawn(task_id, self, task.name)

    def lock(self, lock_id: str, expire: float = 60.0) -> "Lock":
        """A lock in the result store: ``with app.lock(lock_id, expire=60) as acquired:`` is
        True for the one holder, False at once for everyone else (docs/locks.md)."""
        from .locks import Lock, lock_store

        return Lock(lock_store(self), lock_id, expire)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> "AsyncResult":  # noqa: N802
        from .result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        from .result import GroupResult

        return GroupResult(*args, app=self, **kwargs)  # type: ignore[misc]  # args never hold app

    def TaskSetResult(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        """Celery 2's ``app.TaskSetResult(taskset_id, results)``: a GroupResult with that id."""
        from .result import TaskSetResult

        return TaskSetResult(*args, app=self, **kwargs)  # type: ignore[misc]  # args never hold app

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        from .canvas import Signature

        return Signature(*args, app=self, **kwargs)  # type: ignore[misc]  # args never hold app

    @property
    def oid(self) -> str:
        """This app's reply address (a UUID), which Celery puts in ``reply_to``: frozen workflow
        signatures carry it, as Celery's do."""
        oid = self.__dict__.get("_oid")
        if oid is None:
            import uuid

            oid = self.__dict__["_oid"] = str(uuid.uuid4())
        return oid

    def now(self) -> Any:
        """The time now, aware, in the app's time zone (``timezone``)."""
        from .task import utcnow

        return utcnow().astimezone(self.timezone)

    @property
    def timezone(self) -> Any:
        """``timezone`` as a tzinfo; without it, UTC (``enable_utc``, the default) or the
        machine's local zone. Periodic schedules (crontab) are read in it."""
        from datetime import timezone as _tz

        from .schedules import local_zone, zone_named

        name = self.conf.get("timezone")
        if name:
            return zone_named(name)
        return _tz.utc if self.conf.get("enable_utc", True) else local_zone()

    # ---- periodic tasks ------------------------------------------------------------------------
    def add_periodic_task(self, schedule: Any, sig: Any, args: Iterable[Any] = (),
                          kwargs: dict[str, Any] | None = None, name: str | None = None,
                          **options: Any) -> str:
        """Add an entry to ``beat_schedule`` (Celery's API, usually called from an
        ``on_after_configure`` handler): ``schedule`` is seconds, a timedelta or a schedule
        object such as ``crontab(...)``; ``sig`` a signature (``task.s(...)``) or a task.
        Returns the entry's name (``name``, else the signature's repr)."""
        from .canvas import Signature

        if isinstance(sig, Signature):
            if args or kwargs:
                sig = sig.clone(args=tuple(args), kwargs=dict(kwargs or {}))
        else:
            task_name = sig if isinstance(sig, str) else getattr(sig, "name", None)
            if not task_name:
                raise TypeError(f"add_periodic_task needs a signature or a task, not {sig!r}: "
                                f"pass task.s(...)")
            sig = self.signature(task_name, args=tuple(args), kwargs=dict(kwargs or {}))
        key = name or repr(sig)
        schedule_table = self.conf.get("beat_schedule")
        if not isinstance(schedule_table, dict):
            schedule_table = self.conf["beat_schedule"] = dict(schedule_table or {})
        if name is None and key in schedule_table:
            import logging

            logging.getLogger("celeriac.beat").warning(
                "add_periodic_task: an unnamed entry %r replaced an earlier one with the same "
                "signature: give each a name=", key)
        schedule_table[key] = {"schedule": schedule, "task": sig.name, "args": tuple(sig.args),
                               "kwargs": dict(sig.kwargs),
                               "options": {**dict(sig.options), **options}}
        return key

    @property
    def periodic_tasks(self) -> Any:
        """The schedule every beat of this app fires from, kept in the result store: list, add,
        change, pause, resume and remove entries while beats run (docs/periodic-tasks.md)."""
        from .beat.book import ScheduleBook

        return ScheduleBook(self)

    # ---- worker --------------------------------------------------------------------------------
    def Worker(self, **kwargs: Any) -> Any:  # noqa: N802
        from .worker.worker import Worker

        return Worker(self, **kwargs)

    def worker_main(self, argv: list[str] | None = None) -> None:
        from .cli.main import main

        main(["worker", *(argv or [])[1 if argv and argv[0] == "worker" else 0:]], app=self)

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'} at {id(self):#x}>"

    def __reduce__(self) -> Any:
        raise TypeError("a Celery app is not picklable; send task names and arguments instead")


#: ``Celery.send_task`` as defined here: one patched on the class later (a test's mock) is not it
_SEND_TASK = Celery.send_task
_fork_leftovers: list[Any] = []


def _symbol(path: str) -> Any:
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


#: Celery's broker settings the AMQP transport takes as options, where the user set them (unset,
#: the URL's query or the transport's defaults apply)
_AMQP_SETTINGS = {"broker_use_ssl": "ssl", "broker_heartbeat": "heartbeat",
                  "broker_connection_timeout": "connect_timeout",
                  "broker_login_method": "login_method", "task_queue_max_priority": "max_priority"}


def _amqp_options(conf: Any) -> dict[str, Any]:
    changed = conf.changes
    return {option: changed[setting] for setting, option in _AMQP_SETTINGS.items()
            if changed.get(setting) is not None}
