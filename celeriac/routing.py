"""Queues, exchanges and ``task_routes``: which queue each task message is published to.

Layer: producer side (imports only ``exceptions`` and ``protocol.entities``). ``Router.route``
runs on every publish, so the routes are parsed, imported and their globs compiled once, when the
Router is built.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from .exceptions import ImproperlyConfigured, QueueNotFound
from .protocol.entities import Exchange, Queue

__all__ = ["Exchange", "Queue", "Router"]

RouteFn = Callable[..., Any]


# ---- task_routes --------------------------------------------------------------------------------
class _MapRoute:
    """The dict form of ``task_routes``: exact task names, then globs and regexes in order."""

    def __init__(self, table: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        items = table.items() if isinstance(table, Mapping) else table
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[Callable[[str], Any], Any]] = []
        for key, route in items:
            if isinstance(key, re.Pattern):
                self.patterns.append((key.match, route))  # like Celery: anchored at the start
            elif "*" in key:
                self.patterns.append((re.compile(fnmatch.translate(key)).match, route))
            else:
                self.exact[key] = route

    def __call__(self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                 **kw: Any) -> Any:
        route = self.exact.get(name)
        if route is not None:
            return route
        for match, route in self.patterns:
            if match(name):
                return route
        return None


def _import_router(path: str) -> RouteFn:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        router = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImproperlyConfigured(f"task_routes: cannot import router {path!r}: {exc}") from exc
    if not callable(router):
        raise ImproperlyConfigured(f"task_routes: router {path!r} is not callable")
    return router


def _prepare_routes(routes: Any) -> list[RouteFn]:
    if routes is None:
        return []
    if not isinstance(routes, (list, tuple)):
        routes = [routes]
    prepared: list[RouteFn] = []
    for item in routes:
        if isinstance(item, (Mapping, list, tuple)):
            prepared.append(_MapRoute(item))
        elif isinstance(item, str):
            prepared.append(_import_router(item))
        elif callable(item):
            prepared.append(item)
        else:
            raise ImproperlyConfigured(f"task_routes: expected a dict, list, dotted path or "
                                       f"callable, got {item!r}")
    return prepared


def _as_route(result: Any) -> dict[str, Any]:
    if isinstance(result, (str, Queue)):
        return {"queue": result}
    return dict(result)


# ---- queues -------------------------------------------------------------------------------------
def _getter(conf: Any) -> Callable[[str, Any], Any]:
    if isinstance(conf, Mapping):
        return conf.get
    return lambda key, default: getattr(conf, key, default)


def _queue_from_options(name: str, options: Mapping[str, Any]) -> Queue:
    # Celery's old dict form of task_queues: {"name": {"exchange": ..., "routing_key": ...}}.
    opts = dict(options)
    exchange = opts.pop("exchange", None)
    exchange_type = opts.pop("exchange_type", "direct")
    if isinstance(exchange, str):
        exchange = Exchange(exchange, exchange_type)
    return Queue(name, exchange, opts.pop("routing_key", None), **opts)


def _configured_queues(conf: Any) -> dict[str, Queue]:
    get = _getter(conf)
    declared = get("task_queues", None)
    queues: dict[str, Queue] = {}
    if isinstance(declared, Mapping):
        for name, value in declared.items():
            queues[name] = value if isinstance(value, Queue) else _queue_from_options(name, value)
    elif declared:
        for value in declared:
            queue = value if isinstance(value, Queue) else Queue(value)
            queues[queue.name] = queue
    else:
        default = get("task_default_queue", None) or "celery"
        exchange = Exchange(get("task_default_exchange", None) or default,
                            get("task_default_exchange_type", None) or "direct")
        queues[default] = Queue(default, exchange, get("task_default_routing_key", None))
    return queues


class Router:
    """Picks the destination queue for a task message from call options, ``task_routes``, the
    task's own ``queue`` and ``task_default_queue``, in that order."""

    def __init__(self, conf: Any) -> None:
        get = _getter(conf)
        self.default_queue: str = get("task_default_queue", None) or "celery"
        self.default_exchange_type: str = get("task_default_exchange_type", None) or "direct"
        self.create_missing = bool(get("task_create_missing_queues", True))
        #: name -> Queue: the configured queues, plus those created on first use
        self.queues = _configured_queues(conf)
        self.routes = _prepare_routes(get("task_routes", None))
        self._bindings = {(q.exchange.name, q.routing_key): q for q in self.queues.values()}

    @staticmethod
    def queue_names(conf: Any) -> list[str]:
        """The queues ``conf`` defines (``task_queues``, else the default queue): what a worker
        consumes when not told otherwise."""
        return list(_configured_queues(conf))

    def route(self, options: dict[str, Any], name: str, args: Any = (),
              kwargs: dict[str, Any] | None = None, task_queue: str | None = None, *,
              task: Any = None) -> dict[str, Any]:
        """Return ``options`` completed with ``queue`` (a name), ``exchange`` and ``routing_key``.

        Routers are consulted even when the call names a queue (a route may add other options,
        e.g. priority), but the call's own destination wins.
        """
        explicit = {k: v for k, v in options.items() if v is not None}
        found: dict[str, Any] = {}
        for router in self.routes:
            result = router(name, args, kwargs or {}, options, task=task)
            if result:
                found = _as_route(result)
                break
        queue = explicit.get("queue")
        if queue is not None:  # the call's destination replaces the route's as a whole
            for key in ("queue", "exchange", "routing_key"):
                found.pop(key, None)
        merged = {**found, **explicit}
        queue = merged.get("queue")
        if queue is None and "routing_key" in merged:
            queue = self._bound_queue(merged.get("exchange"), merged["routing_key"])
        resolved = self.resolve(queue if queue is not None else task_queue or self.default_queue)
        merged["queue"] = resolved.name
        exchange = merged.get("exchange")
        merged["exchange"] = (resolved.exchange.name if exchange is None else
                              exchange.name if isinstance(exchange, Exchange) else exchange)
        merged.setdefault("routing_key", resolved.routing_key)
        return merged

    def publish_target(self, route: dict[str, Any]) -> tuple[str, str]:
        """The exchange and routing key a routed message is published with: Celery sends a
        route to a direct queue through the default exchange ``""`` with the queue's name as
        the key, and anything else as routed."""
        queue = self.resolve(route["queue"])
        exchange, routing_key = route["exchange"], route["routing_key"]
        if (queue.exchange.type == "direct" and exchange == queue.exchange.name
                and routing_key == queue.routing_key):
            return "", queue.name
        return exchange, routing_key

    def _bound_queue(self, exchange: Exchange | str | None, routing_key: str) -> Queue | None:
        """The configured queue an AMQP-style ``{exchange, routing_key}`` route points at."""
        if isinstance(exchange, Exchange):
            exchange = exchange.name
        if exchange is not None:
            return self._bindings.get((exchange, routing_key))
        return next((q for q in self.queues.values() if q.routing_key == routing_key), None)

    def resolve(self, queue: Queue | str) -> Queue:
        """The ``Queue`` a name stands for (configured, or created as Celery would)."""
        if isinstance(queue, Queue):
            return queue
        try:
            return self.queues[queue]
        except KeyError:
            if not self.create_missing:
                raise QueueNotFound(f"Queue {queue!r} missing from task_queues "
                                    "(and task_create_missing_queues is off)") from None
            created = Queue(queue, Exchange(queue, self.default_exchange_type))
            self.queues[queue] = created
            self._bindings.setdefault((created.exchange.name, created.routing_key), created)
            return created
