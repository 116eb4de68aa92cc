"""Queues, exchanges and ``task_routes``: which queue each task message is published to.

Layer: producer side (imports only ``exceptions`` and ``protocol.entities``). ``Router.route``
runs on every publish, so the routes are parsed, imported and their globs compiled once, when the
Router is built.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import re
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from .exceptions import ImproperlyConfigured, QueueNotFound
from .protocol.entities import Broadcast, Exchange, Queue, as_exchange, as_queue

__all__ = ["Broadcast", "Exchange", "Queue", "Router"]

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
    if isinstance(result, (str, Queue)) or _is_queue_like(result):
        return {"queue": result}
    return dict(result)


def _is_queue_like(value: Any) -> bool:
    """A kombu ``Queue`` (or anything shaped like one), recognised without importing kombu."""
    return (not isinstance(value, (str, Mapping)) and isinstance(getattr(value, "name", None), str)
            and hasattr(value, "exchange") and hasattr(value, "routing_key"))


def _exchange_name(exchange: Any) -> str | None:
    if exchange is None or isinstance(exchange, str):
        return exchange
    return as_exchange(exchange).name


# ---- queues -------------------------------------------------------------------------------------
def _getter(conf: Any) -> Callable[[str, Any], Any]:
    if isinstance(conf, Mapping):
        return conf.get
    return lambda key, default: getattr(conf, key, default)


def _queue_from_options(name: str, options: Mapping[str, Any]) -> Queue:
    # Celery's dict form of task_queues: {"name": {"exchange": ..., "routing_key": ...}}; the
    # routing key defaults to the old "binding_key", then to the name (Celery's add_compat).
    opts = dict(options)
    exchange = opts.pop("exchange", None)
    exchange_type = opts.pop("exchange_type", None)
    binding_key = opts.pop("binding_key", None)
    routing_key = opts.pop("routing_key", None) or binding_key or name
    if isinstance(exchange, str):
        exchange = Exchange(exchange, exchange_type or "direct")
    return Queue(name, exchange, routing_key, **opts)


def _declared_queues(conf: Any) -> list[Queue]:
    declared = _getter(conf)("task_queues", None)
    if isinstance(declared, Mapping):
        return [as_queue(value) if isinstance(value, Queue) or _is_queue_like(value)
                else _queue_from_options(name, value) for name, value in declared.items()]
    if not declared:
        return []
    return [Queue(value, routing_key=value) if isinstance(value, str) else as_queue(value)
            for value in declared]


class Router:
    """Picks where a task message goes, as Celery does: the destination ``queue`` (call options,
    the task's own ``queue``, ``task_routes``, ``task_default_queue``) and the exchange and
    routing key it is published with (``publish_target``).

    Queues in ``task_queues`` without an exchange get ``task_default_exchange`` (of
    ``task_default_exchange_type``), and those without a routing key get
    ``task_default_routing_key``; both default to ``task_default_queue``. A queue created on
    first use gets an exchange (``task_create_missing_queue_exchange_type``, else direct) and
    routing key of its own name, and is a quorum queue if ``task_create_missing_queue_type``
    says so.
    """

    def __init__(self, conf: Any) -> None:
        get = _getter(conf)
        self.default_queue: str = get("task_default_queue", None) or "celery"
        self.default_exchange = Exchange(get("task_default_exchange", None) or self.default_queue,
                                         get("task_default_exchange_type", None) or "direct")
        self.default_exchange_type: str = self.default_exchange.type
        self.default_routing_key: str = (get("task_default_routing_key", None)
                                         or self.default_queue)
        self.create_missing = bool(get("task_create_missing_queues", True))
        #: Celery 5.5+'s task_create_missing_queue_type ("classic" or "quorum") and
        #: task_create_missing_queue_exchange_type (else a direct exchange): what a queue
        #: created on first use is declared as, so a Celery app with the same settings declares
        #: it identically
        self.missing_queue_type: str | None = get("task_create_missing_queue_type", "classic")
        self.missing_exchange_type: str = (
            get("task_create_missing_queue_exchange_type", None) or "direct")
        #: task_default_queue_type: the default queue's, when task_queues defines none
        self.default_queue_type: str | None = get("task_default_queue_type", "classic")
        #: name -> Queue: the configured queues, plus those created on first use
        self.queues: dict[str, Queue] = {}
        #: alias -> Queue (``Broadcast`` queues are named by their alias)
        self.aliases: dict[str, Queue] = {}
        for queue in _declared_queues(conf):
            self._add(queue)
        if not self.queues:
            self._add(Queue(self.default_queue, self.default_exchange, self.default_routing_key,
                            queue_arguments=({"x-queue-type": "quorum"}
                                             if self.default_queue_type == "quorum" else None)))
        #: what a worker consumes without ``-Q``
        self.configured: list[str] = list(self.queues)
        self.routes = _prepare_routes(get("task_routes", None))
        #: whether ``task_routes`` answers by the task's name alone (only dicts and lists of
        #: them): then a call without routing options of its own always goes to the same place
        #: for one task, and a producer may keep the answer
        self.by_name_only = all(isinstance(route, _MapRoute) for route in self.routes)

    def _add(self, queue: Queue) -> Queue:
        """Adopt a configured queue, filling in the default exchange and routing key."""
        if not queue.exchange_given or not queue.routing_key_given:
            queue = copy.copy(queue)
            if not queue.exchange_given:
                queue.exchange = self.default_exchange
            if not queue.routing_key_given:
                queue.routing_key = self.default_routing_key
        self.queues[queue.name] = queue
        if queue.alias:
            self.aliases[queue.alias] = queue
        return queue

    @staticmethod
    def queue_names(conf: Any) -> list[str]:
        """The queues ``conf`` defines (``task_queues``, else the default queue): what a worker
        consumes when not told otherwise."""
        return Router(conf).configured

    def consume_from(self, include: Iterable[str] | None = None,
                     exclude: Iterable[str] | None = None) -> list[Queue]:
        """The queues a worker consumes: ``include`` (``-Q``, by name or alias; missing ones
        are created as for sending), else every configured queue, less ``exclude`` (``-X``)."""
        names = list(include or ())
        queues = [self.resolve(name) for name in names] if names else [
            self.queues[name] for name in self.configured]
        excluded = set(exclude or ())
        chosen = [q for q in queues if q.name not in excluded and q.alias not in excluded]
        return list({q.name: q for q in chosen}.values())

    def route(self, options: dict[str, Any], name: str, args: Any = (),
              kwargs: dict[str, Any] | None = None, task_queue: str | Queue | None = None, *,
              task: Any = None) -> dict[str, Any]:
        """``route_and_match`` without whether a ``task_routes`` entry answered."""
        return self.route_and_match(options, name, args, kwargs, task_queue, task=task)[0]

    def route_and_match(self, options: dict[str, Any], name: str, args: Any = (),
                        kwargs: dict[str, Any] | None = None,
                        task_queue: str | Queue | None = None, *,
                        task: Any = None) -> tuple[dict[str, Any], bool]:
        """Return ``options`` completed with ``queue`` (a name, or None when the message goes
        to an exchange without a queue), ``exchange`` (a name or None) and ``routing_key``, and
        whether a ``task_routes`` entry answered.

        As in Celery, the call's options come first, then the task's own ``queue``, then the
        first ``task_routes`` entry that answers (its other options, e.g. ``priority``, apply
        unless the call gives its own), then ``task_default_queue``.
        """
        explicit = {k: v for k, v in options.items() if v is not None}
        if task_queue is not None:
            explicit.setdefault("queue", task_queue)
        found: dict[str, Any] = {}
        for router in self.routes:
            result = router(name, args, kwargs or {}, options, task=task)
            if result:
                found = _as_route(result)
                break
        matched = bool(found)
        if "queue" in explicit:  # the call's (or task's) queue replaces the route's destination
            for key in ("queue", "exchange", "routing_key", "exchange_type"):
                found.pop(key, None)
        merged = {**found, **explicit}
        queue = merged.get("queue")
        if queue is None and (not found or merged.get("exchange") is None):
            queue = self.default_queue
        if queue is not None and not isinstance(queue, str):  # a Queue object: kept as given
            resolved = self.resolve(queue)
            queue = self.queues.setdefault(resolved.name, resolved).name
        merged["queue"] = None if queue is None else self.resolve(queue).name
        exchange = merged.get("exchange")
        if exchange is not None and not isinstance(exchange, str):
            merged.setdefault("exchange_type", as_exchange(exchange).type)
        merged["exchange"] = _exchange_name(exchange)
        merged.setdefault("routing_key", None)
        return merged, matched

    def publish_target(self, route: dict[str, Any]) -> tuple[str, str]:
        """The exchange and routing key a routed message is published with, as Celery's
        ``send_task_message`` works them out: a direct queue through the default exchange
        ``""`` with the queue's name as the key; otherwise the given exchange (else the queue's)
        with the given routing key (else the queue's binding key)."""
        name, exchange, routing_key = route.get("queue"), route.get("exchange"), \
            route.get("routing_key")
        queue = self.resolve(name) if name else (
            self.resolve(self.default_queue) if exchange is None else None)
        kind = route.get("exchange_type") or (queue.exchange.type if queue else "direct")
        if (not exchange or not routing_key) and kind == "direct":
            if queue is not None:
                return "", queue.name
            return exchange or "", routing_key or ""
        if exchange is None and queue is not None:
            exchange = queue.exchange.name or self.default_exchange.name
            routing_key = routing_key or queue.routing_key or self.default_routing_key
        return exchange or "", routing_key or ""

    def exchange_type(self, route: dict[str, Any], exchange: str) -> str | None:
        """The type of ``exchange`` as this app knows it (the route's ``exchange_type``, the
        configured queues' exchanges, the default exchange); None if unknown."""
        if route.get("exchange_type"):
            return str(route["exchange_type"])
        for queue in self.queues.values():
            if queue.exchange.name == exchange:
                return queue.exchange.type
        if exchange == self.default_exchange.name:
            return self.default_exchange.type
        return None

    def queues_bound_to(self, exchange: str) -> list[Queue]:
        """The known queues bound to ``exchange`` (what a producer declares before publishing
        to it, so the broker knows their bindings)."""
        return [q for q in self.queues.values() if q.exchange.name == exchange]

    def resolve(self, queue: Any) -> Queue:
        """The ``Queue`` a name (or alias) stands for: configured, or created as Celery would.
        A ``Queue`` (ours or kombu's) is taken as it is."""
        if isinstance(queue, Queue):
            return queue
        if not isinstance(queue, str):
            return as_queue(queue)
        found = self.queues.get(queue) or self.aliases.get(queue)
        if found is not None:
            return found
        if not self.create_missing:
            raise QueueNotFound(f"Queue {queue!r} missing from task_queues "
                                "(and task_create_missing_queues is off)") from None
        kind = self.missing_queue_type
        if kind and kind != "classic" and kind != "quorum":
            raise ValueError(f"Invalid queue type {kind!r} (task_create_missing_queue_type): "
                             "valid types are 'classic' and 'quorum'.")
        created = Queue(queue, Exchange(queue, self.missing_exchange_type), queue,
                        queue_arguments={"x-queue-type": kind} if kind == "quorum" else None)
        self.queues[queue] = created
        return created
