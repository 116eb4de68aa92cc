"""``app.control`` and ``app.control.inspect()``: remote control from the client side, as Celery
names it.

Layer: control. A command is broadcast to every worker (or to those ``destination`` names, or
whose names ``pattern`` matches) over the broker (``control/mailbox.py``); with ``reply=True``
the answers are read from this process's own reply queue for up to ``timeout`` seconds (or until
``limit`` arrived), keeping only those carrying the command's ticket. Celery workers and celeriac
workers answer alike.

Revokes are also kept in the result store (``worker/revokes.py``), so workers started later honour
them too, and run-time rate limits are the store's (``rates.py``): one limit for every worker
together.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..exceptions import ImproperlyConfigured
from ..protocol import serialization
from ..rates import parse_rate, write_override
from ..worker.revokes import record_revoke
from .mailbox import (
    DEFAULT_TIMEOUT,
    ReplyInbox,
    adjust_clock,
    decode_body,
    encode_request,
    exchange_name,
    matches,
    reply_exchange_name,
    reply_queue,
    require_broadcast,
)

if TYPE_CHECKING:
    from ..app import Celery

logger = logging.getLogger("celeriac.control")

__all__ = ["Control", "Inspect", "flatten_reply"]

#: the argument a celeriac client adds to a command whose effect it already stored (revoke,
#: rate_limit), so celeriac workers do not store it once more each; Celery workers ignore it
ALREADY_STORED = "celeriac_stored"

Reply = dict[str, Any]


class DuplicateNodenameWarning(UserWarning):
    """Two workers answered under one node name (give each its own with ``-n``)."""


def flatten_reply(replies: Iterable[Reply]) -> Reply:
    """``[{node: value}, ...]`` -> ``{node: value, ...}``; warns when a node answered twice."""
    nodes: Reply = {}
    twice: set[str] = set()
    for reply in replies:
        twice.update(name for name in reply if name in nodes)
        nodes.update(reply)
    if twice:
        warnings.warn(DuplicateNodenameWarning(
            f"several workers answered as {', '.join(sorted(twice))}: give each worker its own "
            f"node name with -n"), stacklevel=2)
    return nodes


class Inspect:
    """Read-only commands (``app.control.inspect().active()``): each returns ``{node: value}``
    of the workers that answered within ``timeout``, or None when none did."""

    def __init__(self, destination: str | Sequence[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, callback: Callable[[Reply], Any] | None = None,
                 connection: Any = None, app: "Celery | None" = None, limit: int | None = None,
                 pattern: str | None = None, matcher: str | None = None) -> None:
        if app is None:
            raise TypeError("Inspect needs the app: use app.control.inspect()")
        self.app = app
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.connection = connection
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _prepare(self, replies: list[Reply] | None) -> Any:
        if not replies:
            return None
        by_node = flatten_reply(replies)
        if isinstance(self.destination, str):  # one node named: its value alone
            return by_node.get(self.destination)
        if self.pattern:
            return {node: value for node, value in by_node.items()
                    if matches(node, self.pattern, self.matcher)}
        return by_node

    def _request(self, command: str, **arguments: Any) -> Any:
        return self._prepare(self.app.control.broadcast(
            command, arguments=arguments, destination=self.destination, callback=self.callback,
            limit=self.limit, timeout=self.timeout, reply=True, pattern=self.pattern,
            matcher=self.matcher))

    def ping(self, destination: str | Sequence[str] | None = None) -> Any:
        """``{node: {'ok': 'pong'}}`` for each worker that answered."""
        if destination:
            self.destination = destination
        return self._request("ping")

    def active(self, safe: bool | None = None) -> Any:
        """The tasks each worker is running (``safe``: arguments as their repr only)."""
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> Any:
        """The tasks each worker holds, waiting for a pool slot."""
        return self._request("reserved", safe=safe)

    def scheduled(self, safe: bool | None = None) -> Any:
        """The tasks with an ETA each worker holds until due (RabbitMQ; on Redis and SQLite
        they wait in the broker, not in a worker)."""
        return self._request("scheduled", safe=safe)

    def registered(self, *taskinfoitems: str) -> Any:
        """Each worker's registered task names (with the given task attributes)."""
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> Any:
        return self._request("stats")

    def revoked(self) -> Any:
        return self._request("revoked")

    def active_queues(self) -> Any:
        return self._request("active_queues")

    def query_task(self, *ids: Any) -> Any:
        """``{node: {task id: [state, info]}}`` for the given ids a worker holds."""
        if len(ids) == 1 and isinstance(ids[0], (list, tuple)):
            ids = tuple(ids[0])
        return self._request("query_task", ids=list(ids))

    def conf(self, with_defaults: bool = False) -> Any:
        return self._request("conf", with_defaults=with_defaults)

    def report(self) -> Any:
        return self._request("report")

    def clock(self) -> Any:
        return self._request("clock")

    def hello(self, from_node: str, revoked: Any = None) -> Any:
        return self._request("hello", from_node=from_node, revoked=revoked)


class Control:
    """``app.control``: commands to the workers over the broker (module docstring)."""

    def __init__(self, app: "Celery") -> None:
        self.app = app
        self._lock = threading.Lock()
        self._oid: tuple[int, str] | None = None

    # ---- addressing -------------------------------------------------------------------------
    @property
    def oid(self) -> str:
        """This process's reply address (a new one after a fork)."""
        pid = os.getpid()
        if self._oid is None or self._oid[0] != pid:
            self._oid = (pid, str(uuid.uuid4()))
        return self._oid[1]

    def inspect(self, destination: str | Sequence[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT, callback: Callable[[Reply], Any] | None = None,
                connection: Any = None, limit: int | None = None, pattern: str | None = None,
                matcher: str | None = None) -> Inspect:
        """An ``Inspect`` for these workers (``app.control.inspect().ping()``)."""
        return Inspect(destination, timeout, callback, connection, self.app, limit, pattern,
                       matcher)

    # ---- the one way commands go out ------------------------------------------------------------
    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: str | Sequence[str] | None = None, connection: Any = None,
                  reply: bool = False, timeout: float = DEFAULT_TIMEOUT,
                  limit: int | None = None, callback: Callable[[Reply], Any] | None = None,
                  channel: Any = None, pattern: str | None = None, matcher: str | None = None,
                  **extra_kwargs: Any) -> list[Reply] | None:
        """Send ``command`` to the workers; with ``reply``, the list of ``{node: value}``
        answers that arrived within ``timeout`` seconds (at most ``limit``; with a
        ``destination`` list, at most one per node named), in arrival order; ``callback`` gets
        each as it arrives. ``pattern`` picks workers by name (``matcher``: ``glob``, the
        default, or ``pcre``). ``connection`` and ``channel`` are accepted for Celery's
        signature and not used."""
        if isinstance(destination, str):
            destination = [destination]
        elif destination is not None and not isinstance(destination, (list, tuple)):
            raise ValueError(f"destination must be a list of node names, not "
                             f"{type(destination).__name__}")
        if matcher is not None and pattern is None:
            raise ValueError("matcher needs a pattern (pattern='w*@host', matcher='glob')")
        if pattern is not None:
            # a pattern alone is a glob (Celery's workers would ignore it and all obey)
            matcher = matcher or "glob"
            matches("", "x", matcher)  # an unknown matcher fails here, before anything is sent
        arguments = dict(arguments or {}, **extra_kwargs)
        conf = self.app.conf
        transport = require_broadcast(self.app.transport, self.app.broker_url)
        clock = self.app.clock
        if not reply:
            transport.broadcast(exchange_name(conf), encode_request(
                command, arguments, destination=destination, pattern=pattern, matcher=matcher,
                clock=clock.forward(), timeout=timeout, serializer=conf.task_serializer))
            return None
        if limit is None and destination:
            limit = len(destination)
        with self._lock:  # one reply queue per process: one collection at a time
            oid = self.oid
            inbox = ReplyInbox(transport, reply_queue(conf, oid))
            try:
                ticket = str(uuid.uuid4())
                transport.broadcast(exchange_name(conf), encode_request(
                    command, arguments, destination=destination, pattern=pattern,
                    matcher=matcher, ticket=ticket,
                    reply_to={"exchange": reply_exchange_name(conf), "routing_key": oid},
                    clock=clock.forward(), timeout=timeout, serializer=conf.task_serializer))
                return self._collect(inbox, ticket, timeout, limit, callback)
            finally:
                inbox.close()

    def _collect(self, inbox: ReplyInbox, ticket: str, timeout: float, limit: int | None,
                 callback: Callable[[Reply], Any] | None) -> list[Reply]:
        accept = serialization.normalize_accept(self.app.conf.accept_content)
        clock = self.app.clock
        replies: list[Reply] = []
        deadline = time.monotonic() + max(timeout, 0.0)
        while limit is None or len(replies) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for message in inbox.get(remaining):
                adjust_clock(clock, message.headers.get("clock"))
                if message.headers.get("ticket", ticket) != ticket:
                    continue  # a late answer to an earlier command of this process
                try:
                    body = decode_body(message, accept)
                except Exception as exc:  # noqa: BLE001 - one bad reply must not hide the rest
                    logger.warning("ignoring a remote control reply that cannot be read: %s", exc)
                    continue
                if not isinstance(body, dict):
                    logger.warning("ignoring a remote control reply that is not a map: %r",
                                   body)
                    continue
                replies.append(body)
                if callback is not None:
                    callback(body)
                if limit is not None and len(replies) >= limit:
                    break
        return replies

    # ---- revokes ----------------------------------------------------------------------------
    def revoke(self, task_id: str | Iterable[str], destination: Sequence[str] | None = None,
               terminate: bool = False, signal: Any = "SIGTERM", **kwargs: Any) -> Any:
        """Make sure the tasks never start; with ``terminate``, also stop them where they run.

        Broadcast to the running workers (celeriac's and Celery's), and, unless ``destination``
        names some workers only, kept in the result store too, so workers started later honour
        it for as long as results are kept."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        backend = self.app.backend
        stored = destination is None and backend.persistent
        if stored:
            record_revoke(backend, ids, terminate=terminate, signal=signal)
        if not self._can_broadcast():
            if stored:
                return None
            raise ImproperlyConfigured(
                "revoke needs a broker that can broadcast, or a result backend to keep it in "
                "(result_backend is disabled)")
        arguments: dict[str, Any] = {"task_id": task_id if isinstance(task_id, str) else ids,
                                     "terminate": bool(terminate), "signal": signal}
        if stored:
            arguments[ALREADY_STORED] = True
        return self.broadcast("revoke", destination=destination, arguments=arguments, **kwargs)

    def terminate(self, task_id: str | Iterable[str], destination: Sequence[str] | None = None,
                  signal: Any = "SIGTERM", **kwargs: Any) -> Any:
        """``revoke(..., terminate=True)``."""
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal,
                           **kwargs)

    def _can_broadcast(self) -> bool:
        try:
            require_broadcast(self.app.transport, self.app.broker_url)
        except ImproperlyConfigured:
            return False
        return True

    # ---- rate and time limits -----------------------------------------------------------------
    def rate_limit(self, task_name: str, rate_limit: Any, destination: Any = None,
                   reply: bool = False, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> Any:
        """Change the rate of ``task_name`` for every worker, within about a second:
        ``'5/s'``, ``'10/m'``, ``'1000/h'`` or a number per second; None or ``'0'`` removes
        the limit. Kept in the result store until changed (workers started later apply it
        too); ``reset_rate_limit`` goes back to the task's declared rate. Calls already
        waiting for a slot keep it. Also broadcast, so Celery workers change theirs; with
        ``reply``, their answers (and celeriac workers')."""
        self._check_rate_target(task_name, destination)
        try:
            per_second = parse_rate(rate_limit)
        except ValueError as exc:
            raise ValueError(f"app.control.rate_limit({task_name!r}, ...): {exc}") from None
        write_override(self.app, task_name, str(rate_limit) if per_second > 0 else "0")
        if not self._can_broadcast():
            return None
        return self.broadcast("rate_limit", arguments={
            "task_name": task_name, "rate_limit": rate_limit, ALREADY_STORED: True},
            reply=reply, timeout=timeout, **kwargs)

    def reset_rate_limit(self, task_name: str) -> None:
        """Drop the run-time rate of ``task_name``: every worker goes back to the rate it
        declares (``rate_limit``, else ``task_default_rate_limit``). A celeriac addition."""
        self._check_rate_target(task_name, None)
        write_override(self.app, task_name, None)

    def _check_rate_target(self, task_name: str, destination: Any) -> None:
        if destination is not None:
            raise ValueError(
                f"app.control.rate_limit({task_name!r}, ..., destination={destination!r}): "
                f"celeriac's rate limits hold for every worker together, so one worker cannot "
                f"have its own; leave destination out")
        self.app.finalize()  # shared tasks too
        task = self.app.tasks.get(task_name)
        if task is None:
            raise ValueError(f"app.control.rate_limit: no task named {task_name!r} is "
                             f"registered in this app; check the name, or import the module "
                             f"that defines it")
        if getattr(task, "collects_requests", False):
            raise ValueError(f"app.control.rate_limit: {task_name!r} is a batch task, which "
                             f"rate limits do not apply to (flush_every and flush_interval "
                             f"pace it)")

    def time_limit(self, task_name: str, soft: float | None = None, hard: float | None = None,
                   destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Set the soft and hard time limits of ``task_name`` on the running workers (until
        they restart), for the calls they start from now on."""
        return self.broadcast("time_limit", arguments={
            "task_name": task_name, "hard": hard, "soft": soft},
            destination=destination, **kwargs)

    # ---- queues, pool, events, shutdown -------------------------------------------------------
    def add_consumer(self, queue: str, exchange: str | None = None,
                     exchange_type: str = "direct", routing_key: str | None = None,
                     options: dict[str, Any] | None = None,
                     destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Make the workers consume ``queue`` too (declared with its exchange and routing key,
        the queue's name for both unless given)."""
        return self.broadcast("add_consumer", destination=destination, arguments=dict({
            "queue": queue, "exchange": exchange, "exchange_type": exchange_type,
            "routing_key": routing_key}, **(options or {})), **kwargs)

    def cancel_consumer(self, queue: str, destination: Sequence[str] | None = None,
                        **kwargs: Any) -> Any:
        """Make the workers stop consuming ``queue``."""
        return self.broadcast("cancel_consumer", destination=destination,
                              arguments={"queue": queue}, **kwargs)

    def pool_grow(self, n: int = 1, destination: Sequence[str] | None = None,
                  **kwargs: Any) -> Any:
        return self.broadcast("pool_grow", arguments={"n": n}, destination=destination,
                              **kwargs)

    def pool_shrink(self, n: int = 1, destination: Sequence[str] | None = None,
                    **kwargs: Any) -> Any:
        return self.broadcast("pool_shrink", arguments={"n": n}, destination=destination,
                              **kwargs)

    def autoscale(self, max: int, min: int,  # noqa: A002 - Celery's argument names
                  destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast("autoscale", arguments={"max": max, "min": min},
                              destination=destination, **kwargs)

    def pool_restart(self, modules: Any = None, reload: bool = False, reloader: Any = None,
                     destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Celery's; celeriac workers answer that they cannot (restart the worker instead)."""
        return self.broadcast("pool_restart", arguments={
            "modules": modules, "reload": reload, "reloader": reloader},
            destination=destination, **kwargs)

    def enable_events(self, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast("enable_events", arguments={}, destination=destination, **kwargs)

    def disable_events(self, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast("disable_events", arguments={}, destination=destination,
                              **kwargs)

    def heartbeat(self, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast("heartbeat", arguments={}, destination=destination, **kwargs)

    def shutdown(self, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """A warm shutdown of the workers: they stop fetching and finish what runs."""
        return self.broadcast("shutdown", arguments={}, destination=destination, **kwargs)

    def ping(self, destination: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
             **kwargs: Any) -> Any:
        """``[{node: {'ok': 'pong'}}, ...]`` for each worker that answered."""
        return self.broadcast("ping", reply=True, arguments={}, destination=destination,
                              timeout=timeout, **kwargs)

    def purge(self, connection: Any = None) -> int:
        """Drop every message waiting in the queues workers consume by default
        (``task_queues``, else ``task_default_queue``); returns how many."""
        from ..routing import Router

        transport = self.app.transport
        return sum(transport.purge(name) for name in Router.queue_names(self.app.conf))

    discard_all = purge
