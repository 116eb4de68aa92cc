"""Sending tasks: call options -> protocol v2 message -> route -> ``transport.publish``.

Layer: producer. This is the client half of the hot path, so it does the least work it can per
call: settings are read once, signals are only built when someone listens, and many sends can go
to the broker in one round trip (``send_many``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from . import _context, signals
from .exceptions import ImproperlyConfigured, OperationalError
from .protocol import v2
from .routing import Queue, Router
from .transport.base import Outgoing, PublishesRuns, SendsAhead, SendsLikes
from .utils.forks import ForkLocal
from .utils.text import one_line
from .utils.urls import redact_url

logger = logging.getLogger("celeriac.producer")

if TYPE_CHECKING:
    from .app import Celery

#: ``gen<pid>@<host>``, worked out once per process
_origin = ForkLocal(v2.anon_nodename)
#: routing answers a producer keeps at most (``Producer._target``; it starts over beyond it)
TARGETS_LIMIT = 1024

#: called as ``hook(items, exc)`` when publishing ``items`` failed after ``before_task_publish``
#: went out for them, so no ``after_task_publish`` follows (tracing ends its publish spans here,
#: as failed; celeriac/metrics/tracing.py)
publish_failure_hooks: list[Callable[[Sequence[Outgoing], BaseException], None]] = []


def origin_name() -> str:
    """``gen<pid>@<host>``: Celery's name for a sending process (recomputed after fork)."""
    return _origin.get()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _first(*values: Any) -> Any:
    """The first value that is not None (call option, then task attribute, then setting)."""
    for value in values:
        if value is not None:
            return value
    return None


def _as_signature_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, dict):  # one signature (Signature is a dict subclass)
        return [dict(value)]
    return [dict(v) for v in value]


class Producer:
    """Builds and publishes task messages for one app."""

    def __init__(self, app: "Celery") -> None:
        self.app = app
        conf = app.conf
        self.router = Router(conf)
        self.default_serializer = conf.task_serializer
        self.default_compression = conf.task_compression
        self.default_priority = conf.task_default_priority
        self.publish_retry = bool(conf.task_publish_retry)
        self.publish_retry_policy = dict(conf.task_publish_retry_policy or {})
        self.time_limit = conf.task_time_limit
        self.soft_time_limit = conf.task_soft_time_limit
        self._declared: set[str] = set()
        #: ``task_send_sent_event``: a ``task-sent`` event follows each publish
        self.send_sent_event = bool(conf.get("task_send_sent_event"))
        self._events: Any = None  # the EventDispatcher, made at the first task-sent
        #: whether the priority property may be left out as py-amqp leaves it (the Redis,
        #: SQLite and memory brokers keep kombu's 0)
        self._amqp = app.broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")
        #: (route name, task, task queue) -> ``_target``'s answer, for calls without routing
        #: options of their own
        self._targets: dict[tuple[Any, ...], tuple[dict[str, Any], bool, str, str,
                                                   str | None]] = {}
        #: the ``reply_to`` of calls that give none, once known not to depend on the call
        self._reply_default: str | None = None
        #: the transport stores JSON (``json_headers``): have messages bring their headers'
        #: text; known from the first publish on
        self._json_headers = False
        #: plain calls (``send_like``): what a task's calls are sent like, by the task's
        #: settings; for ``_likes_on``, and only if that transport ``_likes_ok`` (SendsLikes)
        self._likes: dict[tuple[Any, ...], tuple[Outgoing, v2.Likes, Callable[..., None]]
                          | None] = {}
        self._likes_on: Any = None
        self._likes_ok = False

    # ---- building ------------------------------------------------------------------------------
    def build(self, name: str, args: Iterable[Any] | None = None,
              kwargs: dict[str, Any] | None = None, *, task_id: str | None = None,
              countdown: float | None = None, eta: datetime | None = None,
              expires: float | datetime | None = None, priority: int | None = None,
              queue: str | Queue | None = None, serializer: str | None = None,
              compression: str | None = None, headers: dict[str, Any] | None = None,
              ignore_result: bool | None = None, link: Any = None, link_error: Any = None,
              root_id: str | None = None, parent_id: str | None = None,
              group_id: str | None = None, group_index: int | None = None,
              shadow: str | None = None, time_limit: float | None = None,
              soft_time_limit: float | None = None, retries: int = 0, chain: Any = None,
              chord: Any = None, reply_to: str | None = None, origin: str | None = None,
              route_name: str | None = None, add_to_parent: bool = True,
              _task: Any = None, **extra: Any) -> Outgoing:
        """Turn one call's options into an ``Outgoing`` (message + queue + hold-until time).

        ``route_name`` routes the message as if it were that task (``celery.map`` messages go
        where the mapped task goes). Sent from inside a running task, the message gets that task
        as its parent (``parent_id``, ``root_id``) unless the call says otherwise.
        """
        if parent_id is None or root_id is None:
            parent = _context.current_worker_request()
            if parent is not None:
                parent_id = parent.id if parent_id is None else parent_id
                root_id = (parent.root_id or parent.id) if root_id is None else root_id
        args = tuple(args) if args is not None else ()
        kwargs = dict(kwargs) if kwargs is not None else {}
        task_id = task_id or v2.uuid4_text()
        if expires is None and _task is not None:
            expires = _task.expires
        now = None
        if countdown is not None or eta is not None or expires is not None:
            now = datetime.now(timezone.utc)
            if countdown is not None:
                eta = now + timedelta(seconds=float(countdown))
            elif eta is not None:
                eta = _utc(eta)
            if expires is not None and not isinstance(expires, datetime):
                expires = now + timedelta(seconds=float(expires))
            elif isinstance(expires, datetime):
                expires = _utc(expires)
        # the call's option, then the task's attribute, then the setting
        task_priority = task_queue = None
        if _task is not None:
            if serializer is None:
                serializer = getattr(_task, "serializer", None)
            if ignore_result is None:
                ignore_result = _task.resolved_ignore_result()
            if time_limit is None:
                time_limit = getattr(_task, "time_limit", None)
            if soft_time_limit is None:
                soft_time_limit = getattr(_task, "soft_time_limit", None)
            task_priority = getattr(_task, "priority", None)
            task_queue = getattr(_task, "queue", None)
        if time_limit is None:
            time_limit = self.time_limit
        if soft_time_limit is None:
            soft_time_limit = self.soft_time_limit

        route, matched, exchange, routing_key, exchange_type = self._target(
            name, route_name, _task, queue, extra, args, kwargs)
        # the call's priority, the task's, the route's, then task_default_priority
        priority = _first(priority, task_priority, route.get("priority"), self.default_priority)
        if priority is None and not (_task is not None and (queue or task_queue)
                                     and not matched and self._amqp):
            # Celery's producer sends 0 (kombu's default), except from Task.apply_async to a
            # queue the call or the task names when no task_routes entry answers: Celery's
            # router hands that call's priority=None on as it is, and py-amqp leaves the AMQP
            # property out, where kombu's Redis transport writes 0 (docs/rabbitmq.md)
            priority = 0

        message = v2.encode_task(
            name=name, task_id=task_id, args=args, kwargs=kwargs,
            serializer=serializer or self.default_serializer,
            compression=compression or self.default_compression,
            root_id=root_id, parent_id=parent_id, group_id=group_id, group_index=group_index,
            shadow=shadow, eta=eta, expires=expires, retries=retries,
            time_limit=time_limit, soft_time_limit=soft_time_limit,
            callbacks=_as_signature_list(link), errbacks=_as_signature_list(link_error),
            chain=chain, chord=dict(chord) if chord is not None else None,
            origin=origin or _origin.get(),
            ignore_result=bool(ignore_result) if ignore_result is not None else None,
            reply_to=self._reply_to(reply_to), priority=priority, headers=headers, now=now,
            json_headers=self._json_headers,
        )
        not_before = eta.timestamp() if eta is not None and now is not None and eta > now else None
        if not exchange:  # the default exchange: straight to the queue the key names
            return Outgoing(routing_key, message, not_before, "", routing_key)
        # a named exchange: the broker routes it through the bindings of the exchange
        return Outgoing("", message, not_before, exchange, routing_key, exchange_type)

    def _target(self, name: str, route_name: str | None, task: Any, queue: Any,
                extra: dict[str, Any], args: tuple, kwargs: dict[str, Any]
                ) -> tuple[dict[str, Any], bool, str, str, str | None]:
        """Where a message goes: ``(route, matched, exchange, routing_key, exchange_type)``.

        Worked out once per task (and task queue) for the calls that name no queue or routing
        option of their own, when ``task_routes`` answers by the task's name alone; a router
        function may look at each call's arguments, so with one every call asks."""
        route_task = task if route_name is None else self.app.tasks.get(route_name)
        task_queue = route_task.queue if route_task is not None else None
        key = None
        if queue is None and not extra and self.router.by_name_only:
            key = (route_name or name, route_task, task_queue)
            try:
                known = self._targets.get(key)
            except TypeError:  # an unhashable queue object: ask every time
                key = known = None
            if known is not None:
                return known
        route, matched = self.router.route_and_match(
            {"queue": queue, **extra} if queue is not None else dict(extra),
            route_name or name, args, kwargs, task_queue=task_queue, task=route_task)
        exchange, routing_key = self.router.publish_target(route)
        target = (route, matched, exchange, routing_key,
                  self.router.exchange_type(route, exchange) if exchange else None)
        if key is not None:
            if len(self._targets) >= TARGETS_LIMIT:
                self._targets.clear()
            self._targets[key] = target
        return target

    def _reply_to(self, given: str | None) -> str:
        """The message's ``reply_to``: the call's, else the result store's reply address
        (rpc://: this client's reply queue, declared before a task naming it is first sent;
        not from inside a running task, where Celery does not declare it either), else the
        app's oid, which Celery sends whatever the result store (only rpc:// reads it). A result
        store that cannot be built does not stop the send: its error comes when results are
        read (and a broker's own error, for the same missing package, comes first)."""
        if self._reply_default is not None:  # a result store that takes no replies
            return given or self._reply_default
        try:
            backend = self.app.backend
        except ImproperlyConfigured:
            return given or self.app.oid
        own = backend.reply_to
        if not own:  # a store without replies: every later call gets the same answer
            self._reply_default = self.app.oid
        address = given or own or self.app.oid
        if own and address == own and _context.current_worker_request() is None:
            backend.prepare_replies()
        return address

    # ---- publishing ----------------------------------------------------------------------------
    def send(self, name: str, args: Iterable[Any] | None = None,
             kwargs: dict[str, Any] | None = None, **options: Any) -> str:
        """Publish one task; returns its id once the broker has stored it."""
        retry = options.pop("retry", None)
        retry_policy = options.pop("retry_policy", None)
        if retry is None and retry_policy is None and _plain(options):
            task_id = self.send_like(name, args, kwargs, options["_task"])
            if task_id is not None:
                return task_id
        item = self.build(name, args, kwargs, **options)
        self.publish([item], retry=retry, retry_policy=retry_policy)
        return item.message.headers["id"]

    def send_like(self, name: str, args: Any, kwargs: Any, task: Any,
                  transport: Any = None) -> str | None:
        """Send a plain call to ``task`` (no option: ``delay()``) made like the message of an
        earlier one with the same settings, whose constant text only gets this call's id,
        arguments and reprs (``v2.Likes.one``, the transport's ``sender_like``); the first
        such call is built and sent in full. None when a call cannot be made so: build it.

        The task's attributes ``build`` reads are read on every call (the key); calls from
        inside a running task (their parent's ids), with publish signals, ``task-sent``
        events or publish hooks, or a router that looks at arguments are never made so.
        ``transport``: the app's, when the caller has just checked for a fork (None: look)."""
        if (_context.current_worker_request() is not None or task.expires is not None
                or self._reply_default is None or self.send_sent_event
                or signals.before_task_publish.receivers
                or signals.after_task_publish.receivers or publish_failure_hooks
                or not self.router.by_name_only):
            return None
        if transport is None:
            transport = self.app.transport
        if transport is not self._likes_on:
            self._likes.clear()
            self._likes_on, self._likes_ok = transport, isinstance(transport, SendsLikes)
        if not self._likes_ok:
            return None
        if args.__class__ is not tuple:  # as ``build`` takes them
            args = tuple(args) if args is not None else ()
        if kwargs.__class__ is not dict:
            kwargs = dict(kwargs) if kwargs is not None else {}
        key = (name, task, getattr(task, "serializer", None), task.resolved_ignore_result(),
               getattr(task, "time_limit", None), getattr(task, "soft_time_limit", None),
               getattr(task, "priority", None), getattr(task, "queue", None))
        try:
            like = self._likes[key]
        except KeyError:
            return self._send_model(key, transport, name, args, kwargs, task)
        except TypeError:  # an unhashable setting: build in full
            return None
        if like is None:  # no message like this one can be spliced
            return None
        model, likes, send = like
        task_id, tag = v2.uuid4_pair()
        task_id, headers, body = likes.one(args, kwargs, task_id)
        try:  # the model's queue is declared: its first publish did it
            send(task_id, tag, headers, body)
        except (OSError, ConnectionError, TimeoutError, *transport.transient_errors) as exc:
            self._publish_with_retry(transport, (model,), None, None,  # a fresh tag per try
                                     lambda: send(task_id, v2.uuid4_text(), headers, body), exc)
        return task_id

    def _send_model(self, key: tuple[Any, ...], transport: Any, name: str,
                    args: tuple[Any, ...], kwargs: dict[str, Any], task: Any) -> str:
        """Build and send a plain call in full, and keep what later ones can be made like."""
        self._json_headers = getattr(transport, "json_headers", False)
        item = self.build(name, args, kwargs, _task=task)
        self.publish([item])
        likes = v2.likes_of(item.message, args, kwargs, True)
        send = transport.sender_like(item) if likes is not None else None
        if len(self._likes) >= TARGETS_LIMIT:
            self._likes.clear()
        self._likes[key] = (item, likes, send) if likes is not None and send is not None else None
        return item.message.headers["id"]

    def send_many(self, calls: Sequence[tuple[str, Any, Any, dict[str, Any]]]) -> list[str]:
        """Publish many ``(name, args, kwargs, options)`` in one broker round trip.

        A call to the same task as the one before it, with the same options but its id and
        group index (a group's members, a batch of one task), is made from that one's message
        (``v2.Likes``): only its id, arguments and group index are worked out."""
        self._json_headers = getattr(self.app.transport, "json_headers", False)
        runs: list[_Run] = []
        run: _Run | None = None
        for name, args, kwargs, opts in calls:
            if not opts:
                opts = _NO_OPTIONS  # one object: the next call without options is like it
            if (run is not None and run.likes is not None and name == run.name
                    and (opts is run.options or _shared(opts) == run.shared)
                    and run.likes.add(opts.get("task_id"), args, kwargs,
                                      opts.get("group_index"))):
                continue
            run = self._start(name, args, kwargs, opts)
            runs.append(run)
        self._publish_runs(runs)
        return [task_id for run in runs for task_id in run.ids()]

    def send_groups(self, batches: Sequence[tuple[str, dict[str, Any],
                                                  Sequence[tuple[Any, Any, Any, Any]]]],
                    *, more: bool = False, formed: bool = False) -> None:
        """Publish, in one broker round trip, batches of calls to one task with the same
        options, each call with its own ``(task_id, args, kwargs, group_index)`` (a group's
        members): the same messages ``send_many`` makes of such calls.

        ``formed``: the caller vouches that every call is in the form ``v2.Likes`` keeps (a
        non-empty str id, a tuple, a dict, an int index), so none is looked at one by one.

        ``more``: the caller sends more batches next and calls ``settle()`` (or a
        ``send_groups`` without ``more``) when done; a transport that can (Redis) then reads
        this batch's replies only after the next is built, and an error in them is raised
        there. Until ``settle()`` returns, the batch is not known to be stored."""
        self._json_headers = getattr(self.app.transport, "json_headers", False)
        runs: list[_Run] = []
        for name, options, calls in batches:
            at, count = 0, len(calls)
            while at < count:  # a call built in full, then those made like it (likes.extend)
                task_id, args, kwargs, group_index = calls[at]
                own = {**options, "task_id": task_id}
                if group_index is not None:
                    own["group_index"] = group_index
                run = self._start(name, args, kwargs, own)
                runs.append(run)
                at = (at + 1 if run.likes is None
                      else run.likes.extend(calls, at + 1, formed=formed))
        self._publish_runs(runs, more)

    def settle(self) -> None:
        """Wait until the batches ``send_groups(..., more=True)`` left in flight are stored
        (retried as a publish is); raise their error."""
        transport = self.app.transport
        if isinstance(transport, SendsAhead):
            self._publish_ahead(transport, [], transport.settle_ahead)

    def _start(self, name: str, args: Any, kwargs: Any, opts: dict[str, Any]) -> "_Run":
        """The run a call begins: its message built in full, and (when later calls may be made
        from it) a ``v2.Likes`` for them."""
        item = self.build(name, args, kwargs, **opts)
        likes = None
        if (_LIKE_OPTIONS.issuperset(opts) and self.router.by_name_only
                and item.not_before is None and not item.routed):
            # (a router function may look at each call's arguments)
            headers = item.message.headers
            derived_root = "root_id" not in opts and headers["root_id"] == headers["id"]
            likes = v2.likes_of(item.message, tuple(args) if args is not None else (),
                                dict(kwargs) if kwargs is not None else {}, derived_root)
        return _Run(name, opts, item, likes)

    def _publish_runs(self, runs: Sequence["_Run"], more: bool = False) -> None:
        """Publish each run's model and the messages like it, in order: spliced by the
        transport where it can (``publish_runs``) and nothing needs each message as an object
        (publish signals, ``task-sent`` events, publish hooks); otherwise as ``Outgoing``s.
        ``more``: see ``send_groups``."""
        transport = self.app.transport
        if (not isinstance(transport, PublishesRuns) or signals.before_task_publish.receivers
                or self.send_sent_event or signals.after_task_publish.receivers
                or publish_failure_hooks):
            self.settle()  # what went ahead first, in order
            self.publish([item for run in runs for item in run.outgoing()])
            return
        pairs = [(run.item, run.likes) for run in runs]
        items = [run.item for run in runs]
        if isinstance(transport, SendsAhead):
            if more:
                self._publish_ahead(transport, items, lambda: transport.send_runs_ahead(pairs))
                return
            self.settle()
        self._publish_with_retry(transport, items, None, None,
                                 lambda: transport.publish_runs(pairs))

    def _publish_ahead(self, transport: SendsAhead, items: Sequence[Outgoing],
                       send: Callable[[], None]) -> None:
        """``send`` retried as a publish; a batch in flight is forgotten when that fails (its
        caller is told: it must not go out later, with some other publish)."""
        try:
            self._publish_with_retry(transport, items, None, None, send)
        except BaseException:
            transport.drop_ahead()
            raise

    def publish(self, items: Sequence[Outgoing], *, retry: bool | None = None,
                retry_policy: dict[str, Any] | None = None) -> None:
        transport = self.app.transport
        self._json_headers = getattr(transport, "json_headers", False)
        if signals.before_task_publish.receivers:
            for item in items:
                item.message.headers_json = None  # receivers may change the headers
                self._send_publish_signal(signals.before_task_publish, item)
        try:
            self._publish_with_retry(transport, items, retry, retry_policy)
        except BaseException as exc:
            for hook in publish_failure_hooks:
                hook(items, exc)
            raise
        if self.send_sent_event:
            self._send_sent_events(items)
        if signals.after_task_publish.receivers:
            for item in items:
                self._send_publish_signal(signals.after_task_publish, item)

    def _send_sent_events(self, items: Sequence[Outgoing]) -> None:
        """Celery's ``task-sent`` for each published task (one message for the lot), from
        this process's ``gen<pid>@<host>``; an event that cannot be sent is logged, never
        raised: the tasks are sent."""
        if self._events is None:
            self._events = self.app.events.Dispatcher(hostname=origin_name())
        sent = []
        for item in items:
            headers = item.message.headers
            if not headers.get("id") or not headers.get("task"):
                continue
            sent.append(("task-sent", {
                "uuid": headers["id"], "root_id": headers.get("root_id"),
                "parent_id": headers.get("parent_id"), "name": headers["task"],
                "args": headers.get("argsrepr"), "kwargs": headers.get("kwargsrepr"),
                "retries": headers.get("retries") or 0, "eta": headers.get("eta"),
                "expires": headers.get("expires"), "queue": item.queue or item.key,
                "exchange": item.exchange, "routing_key": item.key}))
        self._events.send_batch(sent)

    def _publish_with_retry(self, transport: Any, items: Sequence[Outgoing], retry: bool | None,
                            retry_policy: dict[str, Any] | None,
                            send: Callable[[], None] | None = None,
                            failed: BaseException | None = None) -> None:
        """Declare the items' queues (once per producer) and publish them (or call ``send``,
        which publishes them and others like them), retrying while the broker is unreachable;
        then raise ``OperationalError``. ``failed``: the error of a first attempt the caller
        made itself (the retries follow it as they follow one made here)."""
        attempt = 0
        delays: Iterator[float] | None = None  # worked out once a publish has failed
        while True:
            try:
                if failed is not None:  # handled below as if this attempt had raised it
                    exc, failed = failed, None
                    raise exc
                self._declare(transport, items)
                if send is None:
                    transport.publish(items)
                else:
                    send()
                return
            except (OSError, ConnectionError, TimeoutError,
                    *transport.transient_errors) as exc:
                if isinstance(exc, OperationalError):
                    raise  # already ours (a nested send gave up): don't wrap it twice
                if not (self.publish_retry if retry is None else retry):
                    raise self._unreachable(exc, "task_publish_retry is off") from exc
                if delays is None:
                    delays = self._retry_delays(retry_policy)
                delay = next(delays, None)
                if delay is None:
                    raise self._unreachable(
                        exc, f"gave up after {attempt} "
                             f"retr{'y' if attempt == 1 else 'ies'}: task_publish_retry_policy"
                    ) from exc
                attempt += 1
                time.sleep(delay)
                _log_publish_retry(exc, attempt)

    def _declare(self, transport: Any, items: Sequence[Outgoing]) -> None:
        """Declare (once per producer) each item's queue, or, for an item published to a named
        exchange, the known queues bound to it, so the broker has their bindings even before a
        worker declared them. Queues bound to a fanout exchange are left to their consumers
        (Celery does not declare ``Broadcast`` queues either)."""
        for item in items:
            key = f"exchange:{item.exchange}" if item.routed else item.queue
            if key in self._declared:
                continue
            queues = (self.router.queues_bound_to(item.exchange) if item.routed
                      else [self.router.resolve(item.queue)])
            for queue in queues:
                if queue.exchange.type != "fanout":
                    transport.declare(queue)
            self._declared.add(key)

    def _unreachable(self, exc: BaseException, why: str) -> OperationalError:
        reason = one_line(exc)
        return OperationalError(
            f"Cannot publish to the broker at {redact_url(self.app.broker_url)}: {reason} "
            f"({why})")

    def _retry_delays(self, retry_policy: dict[str, Any] | None) -> Iterator[float]:
        """The pauses before each retry ``task_publish_retry_policy`` allows (Celery's keys)."""
        policy = {**self.publish_retry_policy, **(retry_policy or {})}
        max_retries = policy.get("max_retries", 3)
        interval = float(policy.get("interval_start", 0))
        step = float(policy.get("interval_step", 0.2))
        interval_max = float(policy.get("interval_max", 0.2))
        done = 0
        while max_retries is None or done < max_retries:
            yield min(interval, interval_max)
            interval += step
            done += 1

    @staticmethod
    def _send_publish_signal(signal: Any, item: Outgoing) -> None:
        message = item.message
        if signal is signals.before_task_publish:
            signal.send(sender=message.headers.get("task"), body=message.body,
                        exchange=item.exchange, routing_key=item.key, headers=message.headers,
                        properties=message.properties, declare=[], retry_policy=None)
        else:  # Celery's after_task_publish carries these
            signal.send(sender=message.headers.get("task"), body=message.body,
                        exchange=item.exchange, routing_key=item.key, headers=message.headers)


#: the options a call may have for ``send_many`` to make its message from the one before (any
#: other changes what ``build`` does beyond the id, the group index and the arguments)
_LIKE_OPTIONS = frozenset({"task_id", "group_id", "group_index", "reply_to", "root_id",
                           "parent_id", "shadow", "add_to_parent", "_task", "queue", "priority",
                           "ignore_result", "time_limit", "soft_time_limit", "serializer",
                           "chord", "link", "link_error"})
#: the options that differ between calls made from one model
_OWN_OPTIONS = ("task_id", "group_index")
#: the options of a ``send_many`` call that gives none (only ever read)
_NO_OPTIONS: dict[str, Any] = {}


class _Run:
    """One call built in full (``item``) and the calls made like it (``likes``)."""

    __slots__ = ("name", "options", "shared", "item", "likes")

    def __init__(self, name: str, options: dict[str, Any], item: Outgoing,
                 likes: v2.Likes | None) -> None:
        self.name, self.options, self.item, self.likes = name, options, item, likes
        #: the options the calls made like it share (all but their own id and group index)
        self.shared = _shared(options) if likes is not None else None

    def ids(self) -> list[str]:
        first = self.item.message.headers["id"]
        if not self.likes:
            return [first]
        self.likes.parts()  # draws the ids not given
        return [first, *self.likes.ids]

    def outgoing(self) -> list[Outgoing]:
        item, likes = self.item, self.likes
        if not likes:
            return [item]
        return [item, *(Outgoing(item.queue, message, None, item.exchange, item.routing_key,
                                 item.exchange_type) for message in likes.messages())]


#: the options ``Task.apply_async`` hands on for a plain call (``delay()``): its task, the
#: others None
_PLAIN_OPTIONS = frozenset({"_task", "task_id", "link", "link_error", "shadow"})


def _plain(options: dict[str, Any]) -> bool:
    """Whether a call's options are a task and nothing else (``Producer.send_like``)."""
    get = options.get
    return (get("_task") is not None and _PLAIN_OPTIONS.issuperset(options)
            and get("task_id") is None and get("link") is None and get("link_error") is None
            and get("shadow") is None)


def _shared(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key not in _OWN_OPTIONS}


def _log_publish_retry(exc: BaseException, attempt: int) -> None:
    # INFO on the module's logger: shown in a worker log at -l INFO, never on a bare client's
    # stderr (Python's last-resort handler prints WARNING and up); the OperationalError raised
    # when the retries are spent carries their count.
    logger.info("publish failed (%s); retry %d", one_line(exc), attempt)
