"""What a stream of events says about workers and tasks: ``State`` (``app.events.State()``).

Layer: events (pure logic). Feed it every event (``state.event(event)``, e.g. as a receiver's
``'*'`` handler) and read ``state.workers`` and ``state.tasks``. Shaped like Celery's
``celery.events.state.State`` for the common uses (``workers``, ``tasks``, ``alive_workers()``,
``tasks_by_time()``, ``task_count``, ``event_count``) without its whole API. Tasks are kept in
arrival order, at most ``max_tasks_in_memory`` of them (the oldest go first), so a monitor that
runs for weeks stays small.

A worker counts as alive until ``freq * 2`` seconds after its last heartbeat (Celery's
``HEARTBEAT_EXPIRE_WINDOW``), and not after its ``worker-offline``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Iterator

from .. import states

#: a worker is alive until this many heartbeat intervals after its last heartbeat (Celery's 200%)
HEARTBEAT_EXPIRE_WINDOW = 2.0
#: heartbeat timestamps kept per worker
HEARTBEATS_KEPT = 4

#: event type -> the task state it means
TASK_EVENT_STATES = {
    "task-sent": states.PENDING, "task-received": states.RECEIVED,
    "task-started": states.STARTED, "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE, "task-retried": states.RETRY,
    "task-revoked": states.REVOKED, "task-rejected": states.REJECTED,
}
#: how far along a state is within one attempt; an event never moves a task back, except a
#: new attempt (received or started again) after a retry or a requeueing reject
_RANK = {states.PENDING: 0, states.RECEIVED: 1, states.STARTED: 2, states.RETRY: 3,
         states.SUCCESS: 3, states.FAILURE: 3, states.REVOKED: 3, states.REJECTED: 3}
_NEW_ATTEMPT_AFTER = frozenset({states.RETRY, states.REJECTED})
#: task fields an event may carry, copied onto the task as they come
_TASK_FIELDS = ("name", "args", "kwargs", "retries", "eta", "expires", "root_id", "parent_id",
                "result", "runtime", "exception", "traceback", "terminated", "signum",
                "expired", "requeue", "queue", "exchange", "routing_key")
_WORKER_FIELDS = ("pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver",
                  "sw_sys")


def moves_to(current: str | None, new: str) -> bool:
    """Whether an event saying ``new`` changes a task now in ``current``: never back to an
    earlier state (events of one task can arrive out of order), except that a retried or
    rejected task starts a new attempt."""
    if current is None:
        return True
    return _RANK.get(new, 0) >= _RANK.get(current, 0) or (
        current in _NEW_ATTEMPT_AFTER and new != states.PENDING)


class Worker:
    """One worker node as its events describe it."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid: int | None = None
        self.freq = 2.0
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: list[float] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        self.heartbeats: list[float] = []
        self.offline = False
        self.clock = 0

    def event(self, event: dict[str, Any]) -> None:
        for field in _WORKER_FIELDS:
            if field in event:
                setattr(self, field, event[field])
        self.clock = max(self.clock, int(event.get("clock") or 0))
        kind = event.get("type")
        if kind == "worker-offline":
            self.offline = True
            self.heartbeats = []
            return
        self.offline = False
        stamp = event.get("timestamp")
        if isinstance(stamp, (int, float)):
            self.heartbeats = [*self.heartbeats, float(stamp)][-HEARTBEATS_KEPT:]

    @property
    def heartbeat_expires(self) -> float | None:
        """When this worker stops counting as alive (Unix time), unless it heartbeats again."""
        if not self.heartbeats:
            return None
        return self.heartbeats[-1] + float(self.freq or 2.0) * HEARTBEAT_EXPIRE_WINDOW

    @property
    def alive(self) -> bool:
        expires = self.heartbeat_expires
        return not self.offline and expires is not None and time.time() < expires

    @property
    def status_string(self) -> str:
        return "ONLINE" if self.alive else "OFFLINE"

    def as_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "pid": self.pid, "freq": self.freq,
                "active": self.active, "processed": self.processed, "loadavg": self.loadavg,
                "sw_ident": self.sw_ident, "sw_ver": self.sw_ver, "sw_sys": self.sw_sys,
                "alive": self.alive, "last_heartbeat": (self.heartbeats[-1] if self.heartbeats
                                                        else None)}

    def __repr__(self) -> str:
        return f"<Worker {self.hostname} {self.status_string}>"


class Task:
    """One task as its events describe it."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.state = states.PENDING
        self.name: str | None = None
        self.args: str | None = None
        self.kwargs: str | None = None
        self.retries: int | None = None
        self.eta: str | None = None
        self.expires: str | None = None
        self.root_id: str | None = None
        self.parent_id: str | None = None
        self.result: str | None = None
        self.runtime: float | None = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.terminated: bool | None = None
        self.signum: int | None = None
        self.expired: bool | None = None
        self.requeue: bool | None = None
        self.queue: str | None = None
        self.exchange: str | None = None
        self.routing_key: str | None = None
        self.worker: str | None = None
        self.client: str | None = None
        #: Unix time of each kind of event seen (``received``, ``started``, ``succeeded``...)
        self.timestamps: dict[str, float] = {}
        self.timestamp: float | None = None
        self.clock = 0

    def event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type"))
        for field in _TASK_FIELDS:
            if field in event and (event[field] is not None or getattr(self, field) is None):
                setattr(self, field, event[field])
        stamp = event.get("timestamp")
        if isinstance(stamp, (int, float)):
            self.timestamps[kind.split("-", 1)[-1]] = float(stamp)
        if kind == "task-sent":
            self.client = event.get("hostname")
        else:
            self.worker = event.get("hostname") or self.worker
        new = TASK_EVENT_STATES.get(kind)
        if new is None:
            return
        if moves_to(self.state, new):
            self.state = new
            if isinstance(stamp, (int, float)):
                self.timestamp = float(stamp)
            self.clock = max(self.clock, int(event.get("clock") or 0))

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def __getattr__(self, name: str) -> Any:
        # Celery's Task has ``received``, ``started``, ``succeeded``... as attributes
        timestamps = self.__dict__.get("timestamps", {})
        if name in timestamps:
            return timestamps[name]
        if name in ("sent", "received", "started", "succeeded", "failed", "retried",
                    "revoked", "rejected"):
            return None
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        out = {"uuid": self.uuid, "state": self.state, "worker": self.worker,
               "client": self.client, "timestamp": self.timestamp,
               **{field: getattr(self, field) for field in _TASK_FIELDS}}
        out.update(self.timestamps)
        return out

    def __repr__(self) -> str:
        return f"<Task {self.name}[{self.uuid}] {self.state}>"


class State:
    """Workers and tasks as the events fed to ``event()`` describe them; thread-safe."""

    def __init__(self, max_workers_in_memory: int = 5000,
                 max_tasks_in_memory: int = 10000) -> None:
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.workers: OrderedDict[str, Worker] = OrderedDict()
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.event_count = 0
        self.task_count = 0
        self._lock = threading.Lock()

    def event(self, event: dict[str, Any]) -> tuple[Any, bool]:
        """Apply one event; returns ``(the worker or task it is about, created?)``."""
        with self._lock:
            self.event_count += 1
            kind = str(event.get("type", ""))
            if kind.startswith("task-") and event.get("uuid"):
                return self._task_event(event)
            hostname = event.get("hostname")
            if kind.startswith("worker-") and hostname:
                worker, created = self._get_worker(str(hostname))
                worker.event(event)
                return worker, created
            return None, False

    def _get_worker(self, hostname: str) -> tuple[Worker, bool]:
        worker = self.workers.get(hostname)
        if worker is not None:
            return worker, False
        worker = self.workers[hostname] = Worker(hostname)
        while len(self.workers) > self.max_workers_in_memory:
            self.workers.popitem(last=False)
        return worker, True

    def _task_event(self, event: dict[str, Any]) -> tuple[Task, bool]:
        task_id = str(event["uuid"])
        task = self.tasks.get(task_id)
        created = task is None
        if task is None:
            task = self.tasks[task_id] = Task(task_id)
            self.task_count += 1
            while len(self.tasks) > self.max_tasks_in_memory:
                self.tasks.popitem(last=False)
        task.event(event)
        if event.get("type") != "task-sent" and event.get("hostname"):
            worker, _ = self._get_worker(str(event["hostname"]))
            if "pid" in event:
                worker.pid = event["pid"]
        return task, created

    def alive_workers(self) -> list[Worker]:
        with self._lock:
            return [worker for worker in self.workers.values() if worker.alive]

    def tasks_by_time(self, limit: int | None = None) -> list[tuple[str, Task]]:
        """``(uuid, task)`` pairs, the most recently changed first."""
        with self._lock:
            ordered = sorted(self.tasks.items(), key=lambda item: item[1].timestamp or 0.0,
                             reverse=True)
        return ordered[:limit] if limit is not None else ordered

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        with self._lock:
            items = list(self.tasks.items())
        yield from (items[:limit] if limit is not None else items)

    def tasks_by_state(self) -> dict[str, int]:
        """How many known tasks are in each state."""
        counts: dict[str, int] = {}
        with self._lock:
            for task in self.tasks.values():
                counts[task.state] = counts.get(task.state, 0) + 1
        return counts

    def clear(self) -> None:
        with self._lock:
            self.workers.clear()
            self.tasks.clear()
            self.event_count = self.task_count = 0

    def __repr__(self) -> str:
        return (f"<State: events={self.event_count} tasks={len(self.tasks)} "
                f"workers={len(self.workers)}>")
