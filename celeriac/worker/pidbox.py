"""Remote control in the worker: Celery's pidbox commands, answered from a thread of their own.

Layer: worker. ``RemoteControl`` is a built-in extension (on unless
``worker_enable_remote_control=False``): at start it subscribes to the ``celery.pidbox`` fanout
exchange (``control/mailbox.py`` says how each broker carries it), then one thread reads the
commands, runs those addressed to this node (``destination``, or ``pattern`` and ``matcher``; not
past their ``expires`` header) and publishes each answer to the requester's reply queue. Celery's
clients (``celery inspect``, Flower) and celeriac's (``app.control``, ``celeriac inspect``) talk
to it alike. Nothing here runs on the consumer's threads: a command reads snapshots
(``Consumer.jobs()``) and changes settings the consumer reads afresh (its queue list, the pool's
size, the prefetch window), so it never holds up fetching or running tasks.

What differs from a Celery worker:

- ``revoke`` also keeps the revoke in the result store (``worker/revokes.py``) unless the
  celeriac client that sent it did already, so workers started later honour it; ``terminate``
  reaches the task through the store's revoke log, within the revoke sync's 0.2 s;
- ``rate_limit`` changes the store's run-time rate (``rates.py``), one limit for all workers
  together, not one per worker;
- ``time_limit`` holds until the worker restarts, for calls started from then on;
- ``scheduled`` lists the ETA messages this worker holds (RabbitMQ); on Redis and SQLite those
  wait in the broker, not in a worker, so it is empty;
- ``pool_restart`` is not built (an error answer), ``shutdown`` answers before it stops.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import resource
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from .._version import __version__
from ..control.client import ALREADY_STORED
from ..control.mailbox import (
    MAX_REVOKED_IN_REPLY,
    QueueSubscriptions,
    Request,
    adjust_clock,
    decode_request,
    encode_reply,
    exchange_name,
    expired,
    mailbox_queue,
    send_reply,
)
from ..exceptions import EncodeError
from ..protocol import serialization, v2
from ..protocol.entities import Exchange, Queue
from ..protocol.serialization import json_dumps
from ..rates import parse_rate, write_override
from ..routing import Router
from ..transport.base import Broadcast, Delivery, Subscription
from ..utils.text import one_line
from ..utils.urls import redact_url
from .admission import Arrival, Decision, Verdict
from .autoscale import SCALABLE_POOLS
from .batching import BatchJob
from .extensions import WorkerExtension
from .pools.processes import ProcessPool
from .revokes import record_revoke, signal_number, store_revoked_states

if TYPE_CHECKING:
    from .consumer import Consumer
    from .job import Job
    from .worker import Worker

logger = logging.getLogger("celeriac.worker")

#: seconds one read of the mailbox waits (a stop is seen between two)
READ_SLICE = 0.25
#: settings whose values are never sent (Celery hides the same words)
_HIDDEN = ("API", "TOKEN", "KEY", "SECRET", "PASS", "SIGNATURE", "DATABASE", "CREDENTIAL")
_MASK = "********"

Reply = Any


@runtime_checkable
class QueueCancelling(Protocol):
    """A hook: a broker that pushes deliveries ahead of ``fetch`` (RabbitMQ) must be told to
    stop consuming a queue, and gives back what it pushed from it."""

    def cancel_queue(self, queue: str) -> int: ...


@runtime_checkable
class HeldUntilDue(Protocol):
    """A hook: a broker that holds ETA messages itself until due (RabbitMQ's classic queues)
    can list them (``scheduled``)."""

    def held_until_due(self) -> list[tuple[float, Delivery]]: ...


def ok(text: str) -> dict[str, str]:
    return {"ok": text}


def error(text: str) -> dict[str, str]:
    return {"error": text}


class RemoteControl(WorkerExtension):
    """Answers Celery's remote control commands for one worker (module docstring)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.accept = serialization.normalize_accept(self.app.conf.accept_content)
        self.consumer: Consumer | None = None
        self._subscription: Subscription | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started_at = time.monotonic()
        #: task name -> calls started (``stats``' ``total``)
        self._totals: collections.Counter[str] = collections.Counter()
        #: task name -> (hard, soft): ``time_limit`` commands
        self._time_limits: dict[str, tuple[float | None, float | None]] = {}
        #: queues ``add_consumer`` declared, as declared
        self._added_queues: dict[str, Queue] = {}
        #: revokes heard without a result store to keep them (``RevokesInMemory`` checks them)
        self._revoked_here: set[str] = set()
        self.commands: dict[str, Callable[..., Reply]] = {
            "ping": self.ping, "clock": self.clock, "hello": self.hello, "stats": self.stats,
            "registered": self.registered, "dump_tasks": self.registered,
            "active": self.active, "dump_active": self.active,
            "reserved": self.reserved, "dump_reserved": self.reserved,
            "scheduled": self.scheduled, "dump_schedule": self.scheduled,
            "revoked": self.revoked, "dump_revoked": self.revoked,
            "active_queues": self.active_queues, "conf": self.conf, "dump_conf": self.conf,
            "query_task": self.query_task, "report": self.report,
            "revoke": self.revoke, "terminate": self.terminate,
            "rate_limit": self.rate_limit, "time_limit": self.time_limit,
            "add_consumer": self.add_consumer, "cancel_consumer": self.cancel_consumer,
            "pool_grow": self.pool_grow, "pool_shrink": self.pool_shrink,
            "autoscale": self.autoscale, "pool_restart": self.pool_restart,
            "enable_events": self.enable_events, "disable_events": self.disable_events,
            "heartbeat": self.heartbeat, "shutdown": self.shutdown,
        }

    # ---- the service --------------------------------------------------------------------------
    def on_worker_start(self, consumer: Consumer) -> None:
        self.consumer = consumer
        transport = consumer.transport
        if not isinstance(transport, Broadcast):
            logger.warning("Remote control is off: the broker (%s) cannot broadcast, so "
                           "inspect and control commands do not reach this worker",
                           type(transport).__name__)
            return
        try:
            self._subscription = self._subscribe(transport)
        except Exception as exc:  # a monitoring feature: the worker runs on without it
            logger.error("Remote control is off: could not subscribe to %s (%s); inspect and "
                         "control commands do not reach this worker", exchange_name(
                             self.app.conf), one_line(exc))
            return
        self._thread = threading.Thread(target=self._serve, name="celeriac-pidbox", daemon=True)
        self._thread.start()

    def _subscribe(self, transport: Any) -> Subscription:
        conf = self.app.conf
        if isinstance(transport, QueueSubscriptions):  # RabbitMQ: <node>.celery.pidbox
            try:
                subscription: Subscription = transport.subscribe_queue(
                    mailbox_queue(conf, self.hostname))
                return subscription
            except Exception as exc:  # noqa: BLE001 - e.g. RESOURCE_LOCKED: the name is taken
                logger.error("Another worker named %s holds the mailbox %s (%s): give each "
                             "worker its own name with -n. Remote control answers through an "
                             "anonymous queue meanwhile.", self.hostname,
                             mailbox_queue(conf, self.hostname).name, one_line(exc))
        subscribed: Subscription = transport.subscribe(exchange_name(conf), "#")
        return subscribed

    def on_worker_stop(self, consumer: Consumer) -> None:
        self._stop.set()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                subscription.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                logger.debug("closing the remote control subscription: %r", exc)

    def on_started(self, job: Job) -> None:
        """Counts the call (``stats``) and notes when it started (``active``); a
        ``time_limit`` command's limits go into its message (the pool reads them there)."""
        self._totals[job.task.name] += 1
        if self._time_limits:  # (batch members come one by one; a batch has no limits of its own)
            limits = self._time_limits.get(job.task.name)
            if limits is not None:
                _apply_time_limits(job, limits)

    def _serve(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            subscription = self._subscription
            if subscription is None:
                return
            try:
                messages = subscription.get(READ_SLICE)
                backoff = 0.1
            except Exception as exc:  # broker trouble: say so, wait, read again
                if self._stop.is_set():
                    return
                logger.warning("Remote control could not read its mailbox (%s); retrying in "
                               "%.1fs", one_line(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for message in messages:
                try:
                    self.handle(message)
                except Exception:  # a bug must not end the service
                    logger.exception("remote control command failed")

    # ---- one command ----------------------------------------------------------------------------
    def handle(self, message: Any) -> Reply:
        """Run one broadcast command if it is for this node, and send its answer when one is
        wanted. Returns the answer (None when the command was not for this node)."""
        adjust_clock(self.app.clock, message.headers.get("clock"))
        if expired(message.headers):
            logger.debug("ignoring an expired remote control command")
            return None
        try:
            request = decode_request(message, self.accept)
        except Exception as exc:  # noqa: BLE001 - a bad message is logged and skipped
            logger.warning("Ignoring a remote control message that cannot be read: %s",
                           one_line(exc))
            return None
        if not request.addressed_to(self.hostname):
            return None
        value = self.run(request)
        if request.reply_to is not None and request.ticket:
            self._reply(request, value, serialization.serializer_name(message.content_type))
        if request.method == "shutdown" and isinstance(value, dict) and "ok" in value:
            logger.warning("Got shutdown from remote: warm shutdown")
            self.worker.stop(warm=True)
        return value

    def run(self, request: Request) -> Reply:
        """The answer to one command (``{"error": ...}`` for one that failed or is unknown)."""
        command = self.commands.get(request.method)
        if command is None:
            known = ", ".join(sorted(name for name in self.commands
                                     if not name.startswith("dump_")))
            return error(f"unknown remote control command {request.method!r} (a celeriac "
                         f"worker answers: {known})")
        logger.debug("remote control: %s(%s)", request.method, request.arguments)
        try:
            return command(**request.arguments)
        except TypeError as exc:
            return error(f"{request.method}: wrong arguments {request.arguments!r}: "
                         f"{one_line(exc)}")
        except Exception as exc:  # noqa: BLE001 - the requester reads what went wrong
            logger.warning("remote control command %s failed: %s", request.method,
                           one_line(exc))
            return error(f"{request.method}: {one_line(exc)}")

    def _reply(self, request: Request, value: Reply, serializer: str) -> None:
        assert request.reply_to is not None
        clock = self.app.clock.forward()
        try:
            message = encode_reply(self.hostname, value, ticket=request.ticket, clock=clock,
                                   serializer=serializer)
        except EncodeError:  # a value the serializer cannot hold: its plain form
            message = encode_reply(self.hostname, _plain(value), ticket=request.ticket,
                                   clock=clock, serializer=serializer)
        try:
            send_reply(self.consumer.transport if self.consumer else self.app.transport,
                       request.reply_to, message)
        except Exception as exc:  # noqa: BLE001 - the requester times out; say why here
            logger.warning("Could not send the answer to %s: %s", request.method,
                           one_line(exc))

    # ---- inspect commands ---------------------------------------------------------------------
    def ping(self, **_: Any) -> Reply:
        return ok("pong")

    def clock(self, **_: Any) -> Reply:
        return {"clock": self.app.clock.value}

    def hello(self, from_node: str = "", revoked: Any = None, **_: Any) -> Reply:
        """Celery's mingle at a worker's start: its revokes in, ours out."""
        if from_node == self.hostname:
            return None
        if revoked:  # a list (Celery 5.7), or the revoked set's map (5.3): its keys
            self._revoked_ids_add([str(task_id) for task_id in revoked])
        return {"revoked": self._revoked_ids()[:MAX_REVOKED_IN_REPLY],
                "clock": self.app.clock.forward()}

    def stats(self, **_: Any) -> Reply:
        consumer = self._consumer()
        pool = consumer.pool
        conf = self.app.conf
        hard, soft = conf.get("task_time_limit"), conf.get("task_soft_time_limit")
        return {
            "total": dict(self._totals),
            "pid": os.getpid(),
            "clock": str(self.app.clock.value),
            "uptime": round(time.monotonic() - self._started_at),
            "pool": {
                "implementation": f"{type(pool).__module__}:{type(pool).__name__}",
                "max-concurrency": int(pool.limit),
                "processes": pool.pids() if isinstance(pool, ProcessPool) else [os.getpid()],
                "max-tasks-per-child": conf.get("worker_max_tasks_per_child"),
                "put-guarded-by-semaphore": False,
                "timeouts": [soft or 0, hard or 0] if (soft or hard) else [],
            },
            "broker": broker_info(self.app),
            "prefetch_count": int(consumer.prefetch_limit),
            "rusage": rusage(),
            "sw_ident": "celeriac", "sw_ver": __version__,
        }

    def registered(self, taskinfoitems: Any = None, builtins: bool = False, **_: Any) -> Reply:
        items = [item for item in (taskinfoitems or ("exchange", "routing_key", "rate_limit"))
                 if isinstance(item, str) and not item.startswith("_")]
        tasks = self.app.tasks
        names = sorted(name for name in tasks if builtins or not name.startswith("celery."))
        out = []
        for name in names:
            task = tasks[name]
            fields = [f"{item}={getattr(task, item)}" for item in items
                      if getattr(task, item, None) is not None]
            out.append(f"{name} [{' '.join(fields)}]" if fields else name)
        return out

    def active(self, safe: Any = False, **_: Any) -> Reply:
        running, _waiting = self._held()
        return [self._info(job, safe=bool(safe), running=True) for job in running]

    def reserved(self, safe: Any = False, **_: Any) -> Reply:
        _running, waiting = self._held()
        return [self._info(job, safe=bool(safe), running=False) for job in waiting]

    def scheduled(self, safe: Any = False, **_: Any) -> Reply:
        transport = self._consumer().transport
        if not isinstance(transport, HeldUntilDue):
            return []
        return [{"eta": datetime.fromtimestamp(due, timezone.utc).isoformat(),
                 "priority": delivery.message.priority,
                 "request": self._delivery_info(delivery, safe=bool(safe))}
                for due, delivery in transport.held_until_due()
                if delivery.queue in self._consumer().queues]

    def revoked(self, **_: Any) -> Reply:
        return self._revoked_ids()[:MAX_REVOKED_IN_REPLY]

    def active_queues(self, **_: Any) -> Reply:
        router = Router(self.app.conf)
        out = []
        for name in self._consumer().queues:
            queue = self._added_queues.get(name)
            if queue is None:
                try:
                    queue = router.resolve(name)
                except Exception:  # noqa: BLE001 - a queue of this worker's own: its name
                    queue = Queue(name)
            out.append(queue_info(queue))
        return out

    def conf(self, with_defaults: Any = False, **_: Any) -> Reply:
        conf = self.app.conf
        values = dict(conf) if _flag(with_defaults) else conf.changes
        return {key: _plain(_censored(key, value)) for key, value in sorted(values.items())
                if isinstance(key, str) and not key.startswith("__")}

    def query_task(self, ids: Any = None, **_: Any) -> Reply:
        wanted = {ids} if isinstance(ids, str) else set(ids or ())
        running, waiting = self._held()
        found: dict[str, Any] = {}
        for state, jobs in (("active", running), ("reserved", waiting)):
            for job in jobs:
                if job.task_id in wanted:
                    found[job.task_id] = [state, self._info(job, safe=False,
                                                            running=state == "active")]
        return found

    def report(self, **_: Any) -> Reply:
        conf = self.app.conf
        settings = "\n".join(f"{key}: {_plain(_censored(key, value))!r}"
                             for key, value in sorted(conf.changes.items()))
        text = (f"\nsoftware -> celeriac:{__version__} py:{platform.python_version()}\n"
                f"platform -> system:{platform.system()} arch:{platform.machine()} "
                f"kernel version:{platform.release()} imp:{platform.python_implementation()}\n"
                f"settings -> transport:{broker_info(self.app)['transport']} "
                f"results:{redact_url(str(conf.get('result_backend') or 'disabled'))}\n\n"
                f"{settings}\n")
        return ok(text)

    # ---- revokes ------------------------------------------------------------------------------
    def revoke(self, task_id: Any = None, terminate: Any = False, signal: Any = None,
               **arguments: Any) -> Reply:
        """Added to this worker's revoked set at once; kept in the result store (unless the
        celeriac client that sent it did already), where workers started later find it and
        where ``terminate`` reaches the running task from (the revoke sync)."""
        ids = [task_id] if isinstance(task_id, str) else [str(i) for i in (task_id or ())]
        if not ids:
            return error("revoke: no task_id given")
        terminate = _flag(terminate)
        signum = signal_number(signal)
        consumer = self._consumer()
        if consumer.revokes is not None:
            consumer.revokes.add(ids)
            if not arguments.get(ALREADY_STORED):
                fresh = [i for i in ids if i not in consumer.revokes.check_stored(ids)] \
                    if not terminate else ids
                if fresh:
                    record_revoke(self.app.backend, fresh, terminate=terminate, signal=signum)
        else:
            self._revoked_here.update(ids)
            if terminate:
                for task_id_ in ids:
                    consumer._terminate(task_id_, signum)  # no store: no revoke sync either
        # each worker, as on Celery: only the one running a task knows not to mark it
        store_revoked_states(self.app.backend, ids,
                             running=[job.task_id for job in self._held()[0]])
        if not terminate:
            return ok(f"tasks {', '.join(ids)} flagged as revoked")
        # running here now, or found running by a terminate already: the revoke sync reads the
        # store, where a celeriac client writes the revoke before broadcasting it
        running = ({job.task_id for job in self._held()[0]} & set(ids)
                   | consumer.recently_terminated(ids))
        return ok(f"terminate: {', '.join(sorted(running))}" if running
                  else "terminate: tasks unknown")

    def terminate(self, task_id: Any = None, signal: Any = None, **arguments: Any) -> Reply:
        return self.revoke(task_id, True, signal, **arguments)

    def _revoked_ids(self) -> list[str]:
        revokes = self._consumer().revokes
        return revokes.ids() if revokes is not None else sorted(self._revoked_here)

    def _revoked_ids_add(self, ids: list[str]) -> None:
        revokes = self._consumer().revokes
        if revokes is not None:
            revokes.add(ids)
        else:
            self._revoked_here.update(ids)

    # ---- limits -------------------------------------------------------------------------------
    def rate_limit(self, task_name: str = "", rate_limit: Any = None, **arguments: Any) -> Reply:
        """The store's run-time rate of ``task_name``: one limit for every worker together."""
        task = self.app.tasks.get(task_name)
        if task is None:
            return error("unknown task")
        if getattr(task, "collects_requests", False):
            return error(f"{task_name} is a batch task: rate limits do not apply to it")
        try:
            per_second = parse_rate(rate_limit)
        except ValueError as exc:
            return error(f"Invalid rate limit string: {one_line(exc)}")
        if not arguments.get(ALREADY_STORED):
            write_override(self.app, task_name, str(rate_limit) if per_second > 0 else "0")
        if per_second <= 0:
            return ok("rate limit disabled successfully (for every worker: celeriac's rate "
                      "limits are global)")
        return ok("new rate limit set successfully (for every worker: celeriac's rate limits "
                  "are global)")

    def time_limit(self, task_name: str = "", hard: Any = None, soft: Any = None,
                   **_: Any) -> Reply:
        task = self.app.tasks.get(task_name)
        if task is None:
            return error("unknown task")
        hard_s = float(hard) if hard else None
        soft_s = float(soft) if soft else None
        task.time_limit, task.soft_time_limit = hard_s, soft_s
        self._time_limits[task_name] = (hard_s, soft_s)
        logger.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name,
                    soft_s, hard_s)
        return ok("time limits set successfully")

    # ---- queues -------------------------------------------------------------------------------
    def add_consumer(self, queue: str = "", exchange: str | None = None,
                     exchange_type: str | None = None, routing_key: str | None = None,
                     **options: Any) -> Reply:
        if not queue:
            return error("add_consumer: no queue named")
        consumer = self._consumer()
        if queue in consumer.queues:
            return ok(f"already consuming from {queue}")
        if exchange or routing_key or (exchange_type and exchange_type != "direct"):
            declared = Queue(queue, Exchange(exchange or queue, exchange_type or "direct"),
                             routing_key or queue)
        else:
            declared = Router(self.app.conf).resolve(queue)
        consumer.transport.declare(declared)
        self._added_queues[queue] = declared
        consumer.queues = [*consumer.queues, queue]  # the fetch loop reads it afresh
        logger.info("Started consuming from %s (remote control)", queue)
        return ok(f"add consumer {queue}")

    def cancel_consumer(self, queue: str = "", **_: Any) -> Reply:
        consumer = self._consumer()
        if queue not in consumer.queues:
            return ok(f"no longer consuming from {queue} (it was not consumed)")
        if len(consumer.queues) == 1:
            return error(f"{queue} is the only queue this worker consumes: add another first "
                         f"(add_consumer), or shut the worker down")
        consumer.queues = [name for name in consumer.queues if name != queue]
        transport = consumer.transport
        if isinstance(transport, QueueCancelling):  # what the broker pushed from it goes back
            threading.Thread(target=_cancel_quietly, args=(transport, queue),
                             name="celeriac-cancel-consumer", daemon=True).start()
        logger.info("Stopped consuming from %s (remote control)", queue)
        return ok(f"no longer consuming from {queue}")

    # ---- the pool -----------------------------------------------------------------------------
    def pool_grow(self, n: Any = 1, **_: Any) -> Reply:
        pool = self._resizable_pool("pool_grow")
        if isinstance(pool, dict):
            return pool
        added = int(pool.grow(int(n)))
        self._consumer().resize_window(int(pool.limit))
        return ok(f"pool will grow (by {added}, to {pool.limit})")

    def pool_shrink(self, n: Any = 1, **_: Any) -> Reply:
        pool = self._resizable_pool("pool_shrink")
        if isinstance(pool, dict):
            return pool
        wanted = min(int(n), int(pool.limit) - 1)
        if wanted <= 0:
            return error("the pool has one slot left: it cannot shrink further")
        retired = int(pool.shrink(wanted))
        self._consumer().resize_window(int(pool.limit))
        return ok(f"pool will shrink (by {retired}, to {pool.limit}; busy slots stay)")

    def _resizable_pool(self, command: str) -> Any:
        if self.worker.autoscaler is not None:
            return error(f"{command} is not supported with autoscale. Adjust autoscale range "
                         f"instead.")
        if self.worker.pool_kind not in SCALABLE_POOLS:
            return error(f"{command}: the {self.worker.pool_kind} pool has a fixed size (the "
                         f"prefork and threads pools can grow and shrink)")
        return self._consumer().pool

    def autoscale(self, max: Any = None, min: Any = None, **_: Any) -> Reply:  # noqa: A002
        autoscaler = self.worker.autoscaler
        if autoscaler is None:
            return error("autoscale is not enabled on this worker (start it with "
                         "--autoscale=MAX,MIN)")
        high, low = autoscaler.update(int(max) if max is not None else None,
                                      int(min) if min is not None else None)
        return ok(f"autoscale now max={high} min={low}")

    def pool_restart(self, **_: Any) -> Reply:
        return error("pool_restart is not built in celeriac: restart the worker instead "
                     "(a warm shutdown lets running tasks finish)")

    # ---- events and shutdown ------------------------------------------------------------------
    def enable_events(self, **_: Any) -> Reply:
        events = self._task_events()
        if events is None:
            return error("event dispatcher unavailable")
        return ok("task events enabled" if events.enable() else "task events already enabled")

    def disable_events(self, **_: Any) -> Reply:
        events = self._task_events()
        if events is None:
            return error("event dispatcher unavailable")
        return ok("task events disabled" if events.disable()
                  else "task events already disabled")

    def heartbeat(self, **_: Any) -> Reply | None:
        """Flower's "wake up": a worker-heartbeat event now (Celery sends no reply)."""
        events = self._task_events()
        if events is not None:
            events.send_heartbeat()
        return None

    def _task_events(self) -> Any:
        from .events import TaskEvents

        return next((ext for ext in self._consumer().hooks.extensions
                     if isinstance(ext, TaskEvents)), None)

    def shutdown(self, msg: str = "", **_: Any) -> Reply:
        """A warm shutdown, begun once the answer is sent (``handle``)."""
        return ok("shutting down")

    # ---- what the commands read ---------------------------------------------------------------
    def _consumer(self) -> Consumer:
        if self.consumer is None:
            raise RuntimeError("the worker has not started consuming yet")
        return self.consumer

    def _held(self) -> tuple[list[Job], list[Job]]:
        """(running, waiting for a pool slot): the held jobs, a batch's requests one by one."""
        running: list[Job] = []
        waiting: list[Job] = []
        in_running_batch: set[int] = set()
        jobs = self._consumer().jobs()
        for job in jobs:
            if isinstance(job, BatchJob):
                if job.pool is not None:
                    running.extend(job.members)
                    in_running_batch.update(member.id for member in job.members)
        for job in jobs:
            if isinstance(job, BatchJob) or job.id in in_running_batch:
                continue
            (running if job.pool is not None else waiting).append(job)
        return running, waiting

    def _info(self, job: Job, *, safe: bool, running: bool) -> dict[str, Any]:
        info = self._delivery_info(job.delivery, safe=safe)
        info["time_start"] = job.started_at if running else None
        info["acknowledged"] = bool(job.acked)
        if running and not isinstance(job.pool, ProcessPool):
            info["worker_pid"] = os.getpid()
        return info

    def _delivery_info(self, delivery: Delivery, *, safe: bool) -> dict[str, Any]:
        """Celery's ``Request.info()`` for a held message."""
        headers = delivery.message.headers
        args: Any = headers.get("argsrepr")
        kwargs: Any = headers.get("kwargsrepr")
        if not safe:
            try:
                body = v2.decode_task(delivery.message, self.accept)
                args, kwargs = list(body.args), dict(body.kwargs)
            except Exception:  # noqa: BLE001 - undecodable: its repr headers
                pass
        return {"id": headers.get("id"), "name": headers.get("task"), "args": args,
                "kwargs": kwargs, "type": headers.get("task"), "hostname": self.hostname,
                "time_start": None, "acknowledged": False,
                "delivery_info": {**delivery.delivery_info,
                                  "priority": delivery.message.priority},
                "worker_pid": None}


class RevokesInMemory(RemoteControl):
    """``RemoteControl`` for a worker without a result store: revokes heard by broadcast are
    kept in memory only (as a Celery worker keeps them) and checked here, at admission and
    before each run."""

    def before_admission(self, arrival: Arrival) -> Decision | None:
        if self._revoked_here and arrival.headers.get("id") in self._revoked_here:
            return Decision(Verdict.REVOKED)
        return None

    def before_run(self, job: Job) -> Decision | None:
        if self._revoked_here and job.task_id in self._revoked_here:
            return Decision(Verdict.REVOKED)
        return None


def remote_control_for(worker: Worker) -> RemoteControl:
    """The extension a worker gets (``Worker.extensions``)."""
    if worker.app.backend.persistent:
        return RemoteControl(worker)
    return RevokesInMemory(worker)


# ---- helpers ------------------------------------------------------------------------------------
def _apply_time_limits(job: Job, limits: tuple[float | None, float | None]) -> None:
    """A ``time_limit`` command's limits for one call, where every pool reads them: the
    message's ``timelimit`` header (a limit the sender gave itself still wins)."""
    message = job.delivery.message
    given = message.headers.get("timelimit") or [None, None]
    hard = given[0] if len(given) > 0 and given[0] is not None else limits[0]
    soft = given[1] if len(given) > 1 and given[1] is not None else limits[1]
    message.headers = {**message.headers, "timelimit": [hard, soft]}


#: seconds after which a queue's consumer is cancelled once more: a fetch that read the queue
#: list just before the change (and subscribed anew) has ended by then (its timeout is 1 s)
RECANCEL_AFTER = 1.5


def _cancel_quietly(transport: QueueCancelling, queue: str) -> None:
    returned = 0
    try:
        returned = transport.cancel_queue(queue)
        time.sleep(RECANCEL_AFTER)
        returned += transport.cancel_queue(queue)
    except Exception as exc:  # noqa: BLE001 - the connection closing gives them back anyway
        logger.warning("Could not cancel the consumer of %s: %s", queue, one_line(exc))
    if returned:
        logger.info("Returned %d message(s) of %s to the broker", returned, queue)


def _flag(value: Any) -> bool:
    """A boolean argument as Celery's CLI may send it (``"true"``, ``"1"``, ``"no"``)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def _censored(key: str, value: Any) -> Any:
    """A setting's value as it may be shown: URLs without passwords, secrets masked."""
    if any(word in key.upper() for word in _HIDDEN):
        return _MASK if value not in (None, "", {}, []) else value
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, dict):  # broker_transport_options, broker_use_ssl...
        return {inner: _censored(str(inner), item) for inner, item in value.items()}
    return value


def _plain(value: Any) -> Any:
    """``value`` with whatever JSON cannot hold turned into its repr (maps and lists kept)."""
    try:
        json_dumps(value)
        return value
    except (TypeError, ValueError):
        pass
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    return repr(value)


def queue_info(queue: Queue) -> dict[str, Any]:
    """A queue as Celery's ``active_queues`` describes it (kombu's ``Queue.as_dict``)."""
    exchange = queue.exchange
    options = queue.options
    return {
        "name": queue.name,
        "exchange": {"name": exchange.name, "type": exchange.type,
                     "arguments": exchange.arguments or None, "durable": exchange.durable,
                     "passive": False, "auto_delete": exchange.auto_delete,
                     "delivery_mode": None, "no_declare": False},
        "routing_key": queue.routing_key,
        "queue_arguments": queue.queue_arguments or None,
        "binding_arguments": options.get("binding_arguments"),
        "consumer_arguments": options.get("consumer_arguments"),
        "durable": queue.durable, "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete, "no_ack": bool(options.get("no_ack", False)),
        "alias": queue.alias, "bindings": [], "no_declare": None,
        "expires": options.get("expires"), "message_ttl": options.get("message_ttl"),
        "max_length": options.get("max_length"),
        "max_length_bytes": options.get("max_length_bytes"),
        "max_priority": queue.max_priority,
    }


_TRANSPORT_NAMES = {"amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp", "redis": "redis",
                    "rediss": "redis", "redis+socket": "redis", "unix": "redis",
                    "sqlite": "sqlite", "memory": "memory"}


def broker_info(app: Any) -> dict[str, Any]:
    """The broker connection as Celery's ``stats`` describes it (never its password)."""
    url = str(app.broker_url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(app.conf.get("broker_transport_options") or {})
    try:
        port = parts.port
    except ValueError:
        port = None
    vhost = unquote(parts.path[1:]) if parts.path.startswith("/") else parts.path
    return {
        "hostname": parts.hostname, "userid": unquote(parts.username) if parts.username else None,
        "virtual_host": vhost or ("/" if scheme.startswith("amqp") else None),
        "port": port, "insist": False,
        "ssl": scheme in ("amqps", "rediss") or bool(app.conf.get("broker_use_ssl")),
        "transport": _TRANSPORT_NAMES.get(scheme, scheme),
        "connect_timeout": app.conf.get("broker_connection_timeout"),
        "transport_options": {key: _censored(key, value) for key, value in options.items()},
        "login_method": app.conf.get("broker_login_method"), "uri_prefix": None,
        "heartbeat": app.conf.get("broker_heartbeat"),
        "failover_strategy": "round-robin", "alternates": [], "credential_provider": None,
    }


def rusage() -> dict[str, Any]:
    """This process's resource usage, as Celery's ``stats`` reports it."""
    if sys.platform == "win32":  # pragma: no cover
        return {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {name: getattr(usage, f"ru_{name}") for name in (
        "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap",
        "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")}
