"""The worker process: startup, OS signals, warm and cold shutdown.

Layer: worker. Ties the consumer (fetch/ack/leases) to a pool and handles the process lifecycle
the way Celery users expect: SIGTERM or Ctrl-C is a warm shutdown (stop fetching, give unstarted
messages back, let running tasks finish); a second one, or SIGQUIT, is a cold shutdown.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from .. import signals
from ..protocol import serialization
from ..routing import Router
from .consumer import Consumer
from .executor import execute_async
from .extensions import Expiry, Heartbeat, WorkerExtension
from .limits import limits_for
from .pools import create_pool
from .request import run_message
from .settlement import choose as choose_settlement

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.worker")

DEFAULT_ASYNC_CONCURRENCY = 100


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

    def respawn_args(self) -> tuple | None:
        """What a fresh interpreter needs to rebuild this runner (None: only fork can)."""
        if not self.app_spec:
            return None
        return (self.app_spec, self.overrides, self.hostname)

    def __call__(self, message: Any, delivery_info: dict) -> Any:
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

        try:
            body = v2.decode_task(message, self.accept)
        except (ContentDisallowed, DecodeError, InvalidTaskError) as exc:
            return Outcome.undecodable(message.headers.get("id") or "?",
                                       f"{type(exc).__name__}: {exc}")
        ctx = context_from_body(body, hostname=self.hostname, delivery_info=delivery_info,
                                properties=message.properties)
        hard, soft = self.limits(message)
        return await execute_async(task, ctx, soft=soft, hard=hard)


class Worker:
    """``celeriac -A proj worker``: one node consuming some queues with one pool."""

    def __init__(self, app: "Celery", *, hostname: str | None = None,
                 concurrency: int | None = None, pool: str | None = None,
                 queues: list[str] | str | None = None, prefetch_multiplier: int | None = None,
                 **options: Any) -> None:
        self.app = app
        app.finalize()
        conf = app.conf
        self.hostname = expand_hostname(hostname or conf.get("worker_hostname"))
        self.pool_kind = pool or conf.get("worker_pool") or "prefork"
        if self.pool_kind == "prefork" and sys.platform == "win32":  # pragma: no cover
            self.pool_kind = "threads"
        default_concurrency = 1 if self.pool_kind == "solo" else (
            DEFAULT_ASYNC_CONCURRENCY if self.pool_kind == "asyncio" else (os.cpu_count() or 1))
        self.concurrency = int(concurrency or conf.get("worker_concurrency") or default_concurrency)
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        # Without -Q: every queue in task_queues (as Celery does), else the default queue.
        self.queues = list(queues or Router.queue_names(conf) or [conf.task_default_queue])
        self.prefetch_multiplier = int(prefetch_multiplier if prefetch_multiplier is not None
                                       else conf.worker_prefetch_multiplier)
        self.options = options
        self.consumer: Consumer | None = None
        self.pool: Any = None
        self.async_pool: Any = None
        self._shutdown = threading.Event()
        self._shutdown_how: str | None = None
        self.exitcode = 0

    # ---- startup -----------------------------------------------------------------------------
    def start(self) -> int:
        """Run until shut down; returns the process exit code."""
        app = self.app
        if signals.celeryd_init.receivers:
            signals.celeryd_init.send(sender=self.hostname, instance=self, conf=app.conf,
                                      options=self.options)
        overrides = {k: app.conf.get(k) for k in ("broker_url", "result_backend")
                     if app.conf.get(k)}
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
        if signals.worker_init.receivers:
            signals.worker_init.send(sender=self)
        router = Router(app.conf)
        for queue in self.queues:
            app.transport.declare(router.resolve(queue))
        # Fork the pool before any of our threads exist, so children start clean.
        self.pool.start()
        if self.async_pool is not None:
            self.async_pool.start()
        self.consumer = Consumer(app, queues=self.queues, pool=self.pool,
                                 hostname=self.hostname,
                                 prefetch_multiplier=self.prefetch_multiplier,
                                 async_pool=self.async_pool, settlement=settlement,
                                 extensions=self.extensions())
        if signals.celeryd_after_setup.receivers:
            signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=app.conf)
        self._install_signal_handlers()
        self.consumer.start()
        self._log_banner()
        if self.pool_kind in ("threads", "solo") and self.app.conf.task_time_limit:
            logger.warning("task_time_limit is not enforced in the %s pool (a thread cannot be "
                           "killed); soft time limits are. Use the prefork pool for hard limits.",
                           self.pool_kind)
        logger.info("%s ready.", self.hostname)
        if signals.worker_ready.receivers:
            signals.worker_ready.send(sender=self.consumer)
        self._shutdown.wait()
        self._finish()
        return self.exitcode

    def extensions(self) -> list[WorkerExtension]:
        """The built-in features on the consumer's extension points, then the app's own
        (``app.worker_extensions``), in that order."""
        built_in: list[WorkerExtension] = [Expiry()]
        if self.app.backend.persistent:
            built_in.append(Heartbeat(float(self.app.conf.get("worker_heartbeat_interval")
                                            or 2.0)))
        return [*built_in, *self.app.worker_extensions]

    def _on_done(self, job_id: int, outcome: Any) -> None:
        assert self.consumer is not None
        self.consumer.on_done(job_id, outcome)

    def _log_banner(self) -> None:
        transport = self.app.broker_url
        logger.info(
            "celeriac worker %s: broker %s, results %s, pool %s (concurrency %d), queues %s, "
            "registered tasks: %s", self.hostname, _redact(transport),
            _redact(self.app.result_backend_url), self.pool_kind, self.concurrency,
            ",".join(self.queues), ", ".join(sorted(self.app.tasks.regular())) or "(none)")

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
            if self.pool is not None:
                threading.Thread(target=self.pool.stop, kwargs={"wait": False}, daemon=True).start()
        self._shutdown.set()

    def _finish(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        cold = self._shutdown_how == "Cold"
        logger.info("%s shutdown (%s): finishing", self._shutdown_how or "Warm", self.hostname)
        consumer.stop_consuming()
        if not cold:
            while not consumer.wait_idle(timeout=0.5):
                if self._shutdown_how == "Cold":
                    cold = True
                    break
        self.pool.stop(wait=not cold)
        if self.async_pool is not None:
            self.async_pool.stop(wait=not cold)
        consumer.join()
        if signals.worker_shutdown.receivers:
            signals.worker_shutdown.send(sender=self)
        self.app.close()


def _redact(url: str) -> str:
    """Hide a password in a URL for logs: ``redis://:secret@h`` -> ``redis://:**@h``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:**@{host}"
