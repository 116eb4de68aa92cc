"""The worker process: startup, OS signals, warm and cold shutdown.

Layer: worker. Ties the consumer (fetch/ack/leases) to a pool and handles the process lifecycle
the way Celery users expect: SIGTERM or Ctrl-C is a warm shutdown (stop fetching, give unstarted
messages back, let running tasks finish); a second one, or SIGQUIT, is a cold shutdown.

At start it prints its banner to stdout (whatever the log level, as Celery does), warns once about
each setting that has no effect yet (``config.ineffective_settings``), and connects to the broker,
retrying with backoff while it is unreachable (``broker_connection_retry_on_startup``,
``broker_connection_max_retries``).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .. import signals
from .._version import __version__
from ..config import WORKER_OPTION_SETTINGS as OPTION_SETTINGS
from ..config import ineffective_settings
from ..exceptions import ImproperlyConfigured, MissingDependency
from ..protocol import serialization
from ..routing import Queue, Router
from ..utils.text import one_line
from ..utils.urls import display_url, redact_url
from .autoscale import SCALABLE_POOLS, Autoscaler, autoscaler_class, parse_autoscale
from .batching import BatchMessages, run_batch
from .consumer import Consumer
from .events import TaskEvents
from .executor import execute_async
from .extensions import Expiry, Heartbeat, WorkerExtension
from .limits import limits_for
from .locking import TaskLocks
from .metrics import WorkerMetrics
from .pidbox import remote_control_for
from .pools import create_pool
from .rate_limits import RateLimiting, check_rate_limits
from .request import run_message
from .settlement import choose as choose_settlement
from .subtasks import DispatchSupport

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.worker")

#: seconds between the main thread's looks for a signal handler to run while the worker runs
SIGNAL_CHECK_INTERVAL = 0.5

DEFAULT_ASYNC_CONCURRENCY = 100
#: dispatch main tasks one worker runs at once (``dispatcher_concurrency``)
DEFAULT_WAITING_CONCURRENCY = 16

#: Pauses between attempts to reach the broker at startup: kombu's ``ensure_connection``
#: defaults, which Celery's worker uses (2 s, then 2 s more each time, at most 30 s).
CONNECT_INTERVAL_START = 2.0
CONNECT_INTERVAL_STEP = 2.0
CONNECT_INTERVAL_MAX = 30.0


#: the cyclic collector's first threshold in a worker process (CPython's default is 700)
WORKER_GC_THRESHOLD = 10_000


def tune_collector() -> None:
    """The cyclic garbage collector, set for a worker process (forked pool children inherit it).

    What start-up made (modules, the app, its tasks) lives as long as the process: frozen, full
    collections stop walking it (they cost a tenth of a busy solo worker's CPU). A worker keeps
    hundreds of containers alive per batch it holds, so CPython's default first threshold (700
    allocations) ran young collections twice per batch of 100 that freed next to nothing (500
    objects in 100,000 requests): 10,000 instead, unless the program chose its own threshold.
    Only for the ``celeriac worker`` command, which owns its process: a program that starts a
    ``Worker`` itself keeps its collector as it set it."""
    gc.freeze()
    first, *rest = gc.get_threshold()
    if first == 700:
        gc.set_threshold(WORKER_GC_THRESHOLD, *rest)
    else:
        logger.info("the garbage collector's threshold %d was set by the program: kept", first)


def startup_connection_policy(conf: Mapping[str, Any]) -> tuple[bool, float | None]:
    """(retry at all?, how many retries at most: None for forever) at worker startup.

    As Celery: ``broker_connection_retry_on_startup`` decides, and when it is None (the default)
    ``broker_connection_retry`` does (True by default). ``broker_connection_max_retries`` None
    retries forever; 0 does not retry (Celery's docs once said 0 meant forever, but kombu has
    always raised at the first error then; celery/celery#8626 fixed the docs).
    """
    on_startup = conf.get("broker_connection_retry_on_startup")
    retry = bool(conf.get("broker_connection_retry", True) if on_startup is None else on_startup)
    max_retries = conf.get("broker_connection_max_retries", 100)
    if max_retries is not None:
        max_retries = max(float(max_retries), 0.0)
    return retry, max_retries


def connection_retry_pauses(start: float = CONNECT_INTERVAL_START,
                            step: float = CONNECT_INTERVAL_STEP,
                            cap: float = CONNECT_INTERVAL_MAX) -> Iterator[float]:
    """The pause before each retry: ``start``, growing by ``step``, then ``cap`` for ever."""
    pause = start
    while True:
        yield min(pause, cap)
        pause += step


#: what a broker's driver says of a broker that waiting will not make reachable (a SQLite file
#: that cannot be opened), though its error class is one of the transport's transient errors
_NOT_TRANSIENT = ("unable to open database file",)


def _retriable(exc: BaseException, transient: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc``, raised while first reaching the broker, may go away by waiting (not a
    TLS certificate the client refuses: an OSError, but only a change of settings fixes it)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, transient) and not any(text in str(exc) for text in _NOT_TRANSIENT)


#: the settings naming serializers a worker decodes or encodes with
SERIALIZER_SETTINGS = ("task_serializer", "result_serializer", "accept_content",
                       "result_accept_content", "event_serializer")


def check_serializers(conf: Mapping[str, Any]) -> None:
    """Refuse to start, in one line naming the setting and the ``pip install`` to run, when a
    serializer the worker is configured to use needs a package this interpreter lacks: otherwise
    every task using it would fail and its caller would wait for a result never stored."""
    for setting in SERIALIZER_SETTINGS:
        value = conf.get(setting)
        if not value:
            continue
        try:
            serialization.check_available(value)
        except MissingDependency as exc:
            raise MissingDependency(f"{setting}={_listed(value)}: {exc} "
                                    "(the worker cannot start without it)") from None


def _listed(value: Any) -> str:
    return repr(value) if isinstance(value, str) else repr(list(value))


class Pidfile:
    """``--pidfile``: this process's pid in a file while it runs, removed at exit. As Celery,
    a file holding the pid of a live process refuses the start (another worker has it); a
    stale one (its process gone) is replaced."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def acquire(self) -> None:
        other = self._read()
        if other is not None and other != os.getpid() and _alive(other):
            raise ImproperlyConfigured(
                f"pidfile {self.path} holds pid {other}, a running process: is a worker already "
                f"running? Stop it, or remove the file if that process is not a worker")
        try:
            with open(self.path, "w") as file:
                file.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise ImproperlyConfigured(f"cannot write the pidfile {self.path}: "
                                       f"{exc.strerror or exc}") from None

    def release(self) -> None:
        if self._read() == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _read(self) -> int | None:
        try:
            with open(self.path) as file:
                return int(file.read().strip() or "0") or None
        except (OSError, ValueError):  # no file, or not a pid: nothing to respect
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def expand_hostname(name: str | None, default_name: str = "celeriac") -> str:
    """Celery's node-name templates: ``%h`` host, ``%n`` host without domain, ``%d`` domain."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    if not name:
        name = f"{default_name}@%h"
    elif "@" not in name:
        name = f"{name}@%h"
    return name.replace("%h", host).replace("%n", short).replace("%d", domain).replace("%%", "%")


class Runner:
    """What a pool calls to run one message; picklable by reference through fork."""

    def __init__(self, app: "Celery", hostname: str, *, app_spec: str | None = None,
                 overrides: dict | None = None, collect_writes: bool = False) -> None:
        self.app = app
        self.hostname = hostname
        #: a success's writes come back in the Outcome for the consumer to send (inline settling)
        self.collect_writes = collect_writes
        self.accept = serialization.normalize_accept(app.conf.accept_content)
        self.app_spec = app_spec
        self.overrides = overrides or {}
        if app.conf.get("tracing_enabled"):  # a replacement child too, before its first task
            from ..metrics.tracing import instrument

            instrument()

    def respawn_args(self) -> tuple | None:
        """What a fresh interpreter needs to rebuild this runner (None: only fork can)."""
        if not self.app_spec:
            return None
        return (self.app_spec, self.overrides, self.hostname)

    def __call__(self, message: Any, delivery_info: dict) -> Any:
        if isinstance(message, BatchMessages):
            return run_batch(self.app, message, self.hostname, self.accept,
                             collect_writes=self.collect_writes)
        return run_message(self.app, message, delivery_info, self.hostname, self.accept,
                           collect_writes=self.collect_writes)

    def limits(self, message: Any) -> tuple[float | None, float | None]:
        """(hard, soft) time limits for this message, in seconds (None: no limit)."""
        return limits_for(self.app, self.app.tasks.get(message.headers.get("task")),
                          message.headers)

    async def run_async(self, message: Any, delivery_info: dict) -> Any:
        task = self.app.tasks.get(message.headers.get("task"))
        if task is None or not task.is_coroutine:
            return await asyncio.to_thread(self, message, delivery_info)
        from ..exceptions import ContentDisallowed, DecodeError, InvalidTaskError
        from ..protocol import v2
        from .executor import context_from_body
        from .outcome import Outcome
        from .request import undecodable_failure

        try:
            body = v2.decode_task(message, self.accept)
        except (ContentDisallowed, DecodeError, InvalidTaskError) as exc:
            return Outcome.undecodable(message.headers.get("id") or "?",
                                       f"{type(exc).__name__}: {exc}",
                                       undecodable_failure(message, exc))
        ctx = context_from_body(body, hostname=self.hostname, delivery_info=delivery_info,
                                properties=message.properties)
        hard, soft = self.limits(message)
        return await execute_async(task, ctx, soft=soft, hard=hard)


class Worker:
    """``celeriac -A proj worker``: one node consuming some queues with one pool."""

    def __init__(self, app: "Celery", *, hostname: str | None = None,
                 concurrency: int | None = None, pool: str | None = None,
                 queues: list[str] | str | None = None, prefetch_multiplier: int | None = None,
                 exclude_queues: list[str] | str | None = None, **options: Any) -> None:
        self.app = app
        app.finalize()
        conf = app.conf
        check_serializers(conf)  # before anything connects: a missing package ends it here
        for option, setting in OPTION_SETTINGS.items():
            if options.get(option) is not None:  # the command line wins over the app's config
                conf[setting] = options[option]
        check_rate_limits(app)  # a bad rate, or a store that cannot keep it: one line, now
        self.hostname = expand_hostname(hostname or conf.get("worker_hostname"))
        self.pool_kind = pool or conf.get("worker_pool") or "prefork"
        if self.pool_kind == "prefork" and sys.platform == "win32":  # pragma: no cover
            self.pool_kind = "threads"
        default_concurrency = 1 if self.pool_kind == "solo" else (
            DEFAULT_ASYNC_CONCURRENCY if self.pool_kind == "asyncio" else (os.cpu_count() or 1))
        self.concurrency = int(concurrency or conf.get("worker_concurrency") or default_concurrency)
        #: --autoscale's (max, min): the pool starts at min and follows its demand
        self.autoscale = parse_autoscale(options.get("autoscale"))
        self.autoscaler: Autoscaler | None = None
        if self.autoscale is not None:
            if self.pool_kind not in SCALABLE_POOLS:
                raise ImproperlyConfigured(
                    f"--autoscale works with the prefork and threads pools, not -P "
                    f"{self.pool_kind}: use -P threads or -P prefork, or drop --autoscale")
            self._autoscaler_class = autoscaler_class(conf)
            self.concurrency = self.autoscale[1]
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        if isinstance(exclude_queues, str):
            exclude_queues = [q.strip() for q in exclude_queues.split(",") if q.strip()]
        # Without -Q: every queue in task_queues (as Celery does), else the default queue; -Q
        # names queues (or a Broadcast queue's alias); -X leaves some out.
        self.queues = [q.name for q in Router(conf).consume_from(queues, exclude_queues)]
        if not self.queues:
            raise ImproperlyConfigured(
                f"No queue left to consume: -X {','.join(exclude_queues or [])} excludes every "
                f"queue of {','.join(queues or Router.queue_names(conf))}")
        self.prefetch_multiplier = int(prefetch_multiplier if prefetch_multiplier is not None
                                       else conf.worker_prefetch_multiplier)
        self.options = options
        self.consumer: Consumer | None = None
        self.pool: Any = None
        self.async_pool: Any = None
        self.waiting_pool: Any = None
        self.waiting_async_pool: Any = None
        self._embedded_beat: WorkerExtension | None = None  # -B
        self._shutdown = threading.Event()
        self._shutdown_how: str | None = None
        self._pool_started = False
        self.exitcode = 0

    # ---- startup -----------------------------------------------------------------------------
    def start(self) -> int:
        """Run until shut down; returns the process exit code."""
        pidfile = Pidfile(self.options["pidfile"]) if self.options.get("pidfile") else None
        if pidfile is not None:
            pidfile.acquire()
        try:
            return self._start()
        finally:
            if pidfile is not None:
                pidfile.release()

    def _start(self) -> int:
        app = self.app
        if signals.celeryd_init.receivers:
            signals.celeryd_init.send(sender=self.hostname, instance=self, conf=app.conf,
                                      options=self.options)
        overrides = {k: app.conf.get(k) for k in ("broker_url", "result_backend")
                     if app.conf.get(k)}
        # what the command line set reaches a respawned pool process too
        overrides.update({setting: app.conf.get(setting) for option, setting
                          in OPTION_SETTINGS.items() if self.options.get(option) is not None})
        runner = Runner(app, self.hostname, app_spec=self.options.get("app_spec"),
                        overrides=overrides)
        # How messages are settled, decided once from what the broker declares (see
        # worker/settlement.py): inline in the solo and thread pools when the broker shares each
        # thread's connection with the result store; then the pool's runner hands a success's
        # writes back to the consumer instead of sending them itself.
        settlement = choose_settlement(app.transport, app.backend,
                                       in_process=self.pool_kind in ("solo", "threads"),
                                       in_dispatcher=self.pool_kind == "solo")
        pool_runner = Runner(app, self.hostname, app_spec=runner.app_spec, overrides=overrides,
                             collect_writes=True) if settlement.collects_writes else runner
        self.pool = create_pool(self.pool_kind, pool_runner, self.concurrency, self._on_done)
        if self.pool_kind != "asyncio":
            limit = int(app.conf.get("worker_async_concurrency") or DEFAULT_ASYNC_CONCURRENCY)
            self.async_pool = create_pool("asyncio", runner, limit, self._on_done)
        if any(t.runs_outside_pool and not t.is_coroutine for t in app.tasks.values()):
            # dispatch main tasks: threads of this process, never a pool slot
            limit = int(app.conf.get("dispatcher_concurrency") or DEFAULT_WAITING_CONCURRENCY)
            self.waiting_pool = create_pool("threads", runner, limit, self._on_done,
                                            hard_limits=False)
        if any(t.runs_outside_pool and t.is_coroutine for t in app.tasks.values()):
            # async def main tasks: a loop of their own, never a slot of the pool (-P asyncio)
            # nor of the loop that runs async subtasks
            limit = int(app.conf.get("dispatcher_concurrency") or DEFAULT_WAITING_CONCURRENCY)
            self.waiting_async_pool = create_pool("asyncio", runner, limit, self._on_done)
        if signals.worker_init.receivers:
            signals.worker_init.send(sender=self)
        # From here on SIGTERM and Ctrl-C mean a warm shutdown, whatever start-up step they
        # arrive in (pool children fork with these handlers and put their own in at once).
        self._catch_shutdown_signals()
        # The banner is for a worker process (the CLI, or start() in a script's main thread), not
        # for one embedded in a thread of a test run (celeriac.testing.start_worker).
        if threading.current_thread() is threading.main_thread():
            self._print_banner()
        for line in ineffective_settings(app.conf, app.tasks.regular(), self.options):
            logger.warning("%s", line)
        if self.options.get("beat"):  # before the pool forks: a bad schedule stops it here
            from .beat import EmbeddedBeat

            if self.options.get("schedule_filename"):
                logger.info("-s %s is not used: the beat keeps its state in the result store",
                            self.options["schedule_filename"])
            self._embedded_beat = EmbeddedBeat(app, self.hostname)
        router = Router(app.conf)
        if not self._connect([router.resolve(queue) for queue in self.queues]):
            return self.exitcode
        if self._shutdown.is_set():  # asked to stop while connecting: nothing to finish yet
            return self.exitcode
        if self.options.get("purge"):
            self._purge()
        if self.options.get("owns_process"):  # the CLI's worker: the process is ours to tune
            tune_collector()
        # Fork the pool before any of our threads exist, so children start clean.
        self.pool.start()
        self._pool_started = True
        if self.async_pool is not None:
            self.async_pool.start()
        if self.waiting_pool is not None:
            self.waiting_pool.start()
        if self.waiting_async_pool is not None:
            self.waiting_async_pool.start()
        self.consumer = Consumer(app, queues=self.queues, pool=self.pool,
                                 hostname=self.hostname,
                                 prefetch_multiplier=self.prefetch_multiplier,
                                 async_pool=self.async_pool, waiting_pool=self.waiting_pool,
                                 waiting_async_pool=self.waiting_async_pool,
                                 settlement=settlement,
                                 extensions=self.extensions(),
                                 app_spec=self.options.get("app_spec"))
        if signals.celeryd_after_setup.receivers:
            signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=app.conf)
        self._install_signal_handlers()
        try:
            self.consumer.start()  # the extensions' on_worker_start run here
        except BaseException:
            # e.g. a feature that finds the result store cannot serve it: stop what started
            # (the pool's processes, the consumer's threads) so the error ends the process
            self._shutdown_how = "Cold"
            self._finish()
            raise
        if self.autoscale is not None:
            self.autoscaler = self._autoscaler_class(self.pool, self.consumer, *self.autoscale)
            self.autoscaler.start()
        self._log_banner()
        if self.pool_kind not in ("prefork", "processes", "process"):
            for key in ("worker_max_tasks_per_child", "worker_max_memory_per_child"):
                if self.app.conf.get(key):
                    logger.warning("%s=%s is set but only the prefork pool replaces its "
                                   "processes: the %s pool ignores it", key,
                                   self.app.conf.get(key), self.pool_kind)
        logger.info("%s ready.", self.hostname)
        if signals.worker_ready.receivers:
            signals.worker_ready.send(sender=self.consumer)
        # Wake now and then: a SIGTERM the kernel hands to another of our threads only sets a
        # flag, and Python runs the handler in the main thread when it next runs bytecode; an
        # untimed wait here never does (seen: a worker deaf to SIGTERM after a hard time limit).
        while not self._shutdown.wait(SIGNAL_CHECK_INTERVAL):
            pass
        self._finish()
        return self.exitcode

    def extensions(self) -> list[WorkerExtension]:
        """The built-in features on the consumer's extension points, then the app's own
        (``app.worker_extensions``), in that order."""
        # rate limits before locks: a call that waits for its rate slot holds no lock meanwhile
        built_in: list[WorkerExtension] = [Expiry(), DispatchSupport(), RateLimiting(self.app),
                                           TaskLocks()]
        if self._embedded_beat is not None:
            built_in.append(self._embedded_beat)
        # always there, so enable_events can switch task events on at run time (-E: from start)
        conf = self.app.conf
        built_in.append(TaskEvents(
            self.app, self.hostname,
            task_events=bool(self.options.get("task_events")
                             or conf.get("worker_send_task_events")),
            heartbeat=not self.options.get("without_heartbeat"),
            freq=float(conf.get("worker_heartbeat_interval") or 2.0)))
        if self.app.conf.get("worker_metrics_port") is not None:  # --metrics-port
            built_in.append(WorkerMetrics(self.app, self.hostname))
        if self.app.conf.get("worker_enable_remote_control", True):  # inspect, control
            built_in.append(remote_control_for(self))
        if self.app.backend.persistent:
            built_in.append(Heartbeat(float(self.app.conf.get("worker_heartbeat_interval")
                                            or 2.0)))
        return [*built_in, *self.app.worker_extensions]

    def _on_done(self, job_id: int, outcome: Any) -> None:
        assert self.consumer is not None
        self.consumer.on_done(job_id, outcome)

    def _log_banner(self) -> None:
        logger.info(
            "celeriac worker %s: broker %s, results %s, pool %s (concurrency %s), queues %s, "
            "registered tasks: %s", self.hostname, display_url(self.app.broker_url),
            display_url(self.app.result_backend_url), self.pool_kind, self.concurrency_label,
            ",".join(self.queues), ", ".join(sorted(self.app.tasks.regular())) or "(none)")

    @property
    def concurrency_label(self) -> str:
        """The pool's size as the banner shows it: ``4``, or ``{min=1, max=4}`` (Celery's form)
        with --autoscale."""
        if self.autoscale is None:
            return str(self.concurrency)
        return f"{{min={self.autoscale[1]}, max={self.autoscale[0]}}}"

    def banner(self) -> str:
        """What the worker prints at start: where it reads and writes, and what it runs."""
        app = self.app
        tasks = sorted(app.tasks.regular())
        lines = [
            f"celeriac {__version__} worker {self.hostname}",
            f"  app:      {app.main or '__main__'}",
            f"  broker:   {display_url(app.broker_url)}",
            f"  results:  {display_url(app.result_backend_url)}",
            f"  pool:     {self.pool_kind} (concurrency {self.concurrency_label})",
            f"  queues:   {', '.join(self.queues)}",
            "  tasks:" + ("" if tasks else "    (none registered)"),
            *(f"    . {name}" for name in tasks),
        ]
        return "\n".join(lines)

    def _print_banner(self) -> None:
        # stdout, not the log: the banner shows at every log level, as Celery's does.
        try:
            print(self.banner() + "\n", file=sys.stdout, flush=True)
        except (OSError, ValueError):  # stdout closed or gone: the banner is not worth failing
            pass

    def _purge(self) -> None:
        """``--purge``: empty the queues this worker consumes before it starts (Celery's)."""
        counts = {queue: self.app.transport.purge(queue) for queue in self.queues}
        each = ", ".join(f"{queue} ({count})" for queue, count in counts.items())
        line = (f"Purged {sum(counts.values())} message(s) from {len(counts)} queue(s): "
                f"{each}")
        logger.info("%s", line)
        if threading.current_thread() is threading.main_thread():  # as the banner: stdout
            try:
                print(line, file=sys.stdout, flush=True)
            except (OSError, ValueError):
                pass

    # ---- connecting to the broker ----------------------------------------------------------------
    def _connect(self, queues: list[Queue]) -> bool:
        """Declare the queues, the worker's first broker round trip, retrying with backoff while
        the broker is unreachable. False: gave up (``exitcode`` 1) or shut down while waiting.

        Which errors mean "unreachable" is the transport's to say (``transient_errors``), plus
        ConnectionError and TimeoutError. Any other OSError (a SQLite path that cannot be a
        file, a permission denied) ends the worker in one line: waiting would not fix it.
        Anything else is a bug and propagates.
        """
        transport = self.app.transport
        transient: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError,
                                                      *transport.transient_errors)
        unreachable: tuple[type[BaseException], ...] = (OSError, *transient)
        retry, max_retries = startup_connection_policy(self.app.conf)
        url = redact_url(self.app.broker_url)
        pauses = connection_retry_pauses()
        retries = 0
        while True:
            try:
                for queue in queues:
                    transport.declare(queue)
            except unreachable as exc:
                reason = one_line(exc).rstrip(".")  # the sentence ends below
                if not _retriable(exc, transient):
                    check = ("the host name in the URL and broker_use_ssl's ca_certs"
                             if isinstance(exc, ssl.SSLCertVerificationError)
                             else "the URL, the path and its permissions")
                    return self._give_up(
                        f"Cannot use the broker at {url}: {reason}. Not retrying: waiting "
                        f"will not fix this (check {check}).")
                if not retry:
                    return self._give_up(
                        f"Cannot connect to {url}: {reason}. Not retrying "
                        "(broker_connection_retry_on_startup is False).")
                if max_retries is not None and retries >= max_retries:
                    return self._give_up(
                        f"Cannot connect to {url}: {reason}. Gave up after {retries} "
                        f"retr{'y' if retries == 1 else 'ies'} "
                        f"(broker_connection_max_retries={max_retries:g}).")
                retries += 1
                pause = next(pauses)
                limit = "unlimited" if max_retries is None else f"{max_retries:g}"
                logger.error("Cannot connect to %s: %s. Trying again in %.2f seconds... "
                             "(%d/%s)", url, reason, pause, retries, limit)
                if self._shutdown.wait(pause):
                    logger.warning("%s shutdown while waiting for the broker at %s",
                                   self._shutdown_how or "Warm", url)
                    return False
                continue
            if retries:
                logger.warning("Connected to %s after %d retr%s.", url, retries,
                               "y" if retries == 1 else "ies")
            return True

    def _give_up(self, line: str) -> bool:
        logger.critical("%s", line)
        self.exitcode = 1
        return False

    def _catch_shutdown_signals(self) -> None:
        """SIGTERM and Ctrl-C from the first start-up step: a wait for the broker ends at once,
        and one arriving while the pool forks is a warm shutdown, not a kill. (SIGQUIT and the
        stack dump come with the rest, once the pool's children exist.)"""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_term)

    # ---- shutdown ------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # `kill -USR2 <pid>` prints every thread's stack to stderr: a stuck worker explains itself.
        faulthandler.register(signal.SIGUSR2, all_threads=True)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def _on_term(self, signum: int, frame: Any) -> None:
        if self._shutdown_how is None:
            self.stop(warm=True, signum=signum)
        else:
            self.stop(warm=False, signum=signum)

    def _on_quit(self, signum: int, frame: Any) -> None:
        self.stop(warm=False, signum=signum)

    def stop(self, warm: bool = True, signum: int | None = None) -> None:
        """Ask the worker to shut down (from a signal handler or another thread)."""
        how = "Warm" if warm else "Cold"
        if self._shutdown_how == "Cold":
            return
        first = self._shutdown_how is None
        self._shutdown_how = how
        if signals.worker_shutting_down.receivers and first:
            signals.worker_shutting_down.send(sender=self.hostname, sig=signal.Signals(signum).name
                                              if signum else None, how=how,
                                              exitcode=self.exitcode)
        if not warm:
            # Cold: don't wait for running tasks. Their leases (acks_late) lapse and they come back.
            self.exitcode = 1  # EX_FAILURE, as Celery ends a cold shutdown
            logger.warning("Cold shutdown: terminating running tasks")
            if self.pool is not None and self._pool_started:
                threading.Thread(target=self.pool.stop, kwargs={"wait": False}, daemon=True).start()
        self._shutdown.set()

    def _finish(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        cold = self._shutdown_how == "Cold"
        logger.info("%s shutdown (%s): finishing", self._shutdown_how or "Warm", self.hostname)
        if self.autoscaler is not None:  # the pool keeps its size from here on
            self.autoscaler.stop()
        consumer.stop_consuming()
        if not cold:
            while not consumer.wait_idle(timeout=0.5):
                if self._shutdown_how == "Cold":
                    cold = True
                    break
        self.pool.stop(wait=not cold)
        if self.async_pool is not None:
            self.async_pool.stop(wait=not cold)
        if self.waiting_pool is not None:
            self.waiting_pool.stop(wait=not cold)
        if self.waiting_async_pool is not None:
            self.waiting_async_pool.stop(wait=not cold)
        consumer.join()
        if signals.worker_shutdown.receivers:
            signals.worker_shutdown.send(sender=self)
        self.app.close()
