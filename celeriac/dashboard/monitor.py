"""What the dashboard remembers from events: recent tasks, throughput per minute, workers.

Layer: dashboard. Pure bookkeeping, fed one Celery event map at a time (``TaskMonitor.on_event``,
the ``'*'`` handler of an ``EventReceiver``) and read by the HTTP handlers' threads, so every
method takes one lock. Memory stays bounded however long the dashboard runs: a ring of the last
``max_tasks`` tasks (the oldest dropped first), one counter row per minute for the last
``minutes`` minutes, and at most ``max_workers`` nodes (the longest-silent dropped first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable

from .. import states
from ..events.state import moves_to

__all__ = ["TaskMonitor", "EVENT_STATES", "OUTCOMES"]

#: the task state each ``task-<action>`` event moves a task to (Celery's ``events.state`` names)
EVENT_STATES: dict[str, str] = {
    "sent": states.PENDING,
    "received": states.RECEIVED,
    "started": states.STARTED,
    "succeeded": states.SUCCESS,
    "failed": states.FAILURE,
    "retried": states.RETRY,
    "revoked": states.REVOKED,
    "rejected": states.REJECTED,
}

#: the actions counted per minute for the throughput chart
OUTCOMES = ("succeeded", "failed", "retried", "revoked", "rejected")

#: the fields a task record takes from events, and how long a text field may be (args, results
#: and tracebacks can be huge; the dashboard shows a preview and the store keeps the rest)
_TEXT_LIMITS: dict[str, int] = {
    "name": 200, "args": 1000, "kwargs": 1000, "result": 2000, "exception": 2000,
    "traceback": 20000, "hostname": 200, "root_id": 100, "parent_id": 100, "queue": 200,
    "routing_key": 200, "exchange": 200,
}
_NUMBER_FIELDS = ("retries", "runtime", "eta", "expires", "terminated", "signum", "expired",
                  "requeue")
_WORKER_FIELDS = ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "pid")


def _clip(value: Any, limit: int) -> Any:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class TaskMonitor:
    """The dashboard's memory of events; every public method is thread-safe."""

    def __init__(self, max_tasks: int = 1000, minutes: int = 60, max_workers: int = 500,
                 clock: Callable[[], float] = time.time) -> None:
        if max_tasks < 1 or minutes < 1 or max_workers < 1:
            raise ValueError("max_tasks, minutes and max_workers must each be at least 1")
        self.max_tasks = max_tasks
        self.minutes = minutes
        self.max_workers = max_workers
        self._clock = clock
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: (minute since the epoch, {action: count}), oldest first, at most ``minutes`` rows
        self._per_minute: deque[tuple[int, dict[str, int]]] = deque(maxlen=minutes)
        self._workers: dict[str, dict[str, Any]] = {}
        self.events_seen = 0
        self.task_events_seen = 0
        self.last_event_at: float | None = None

    # ---- feeding ---------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any]) -> None:
        """Take one event map (a ``task-*`` or ``worker-*`` event); anything else is counted
        and otherwise ignored, so a newer sender's extra types never break the dashboard."""
        kind = event.get("type")
        if not isinstance(kind, str):
            return
        now = self._clock()
        with self._lock:
            self.events_seen += 1
            self.last_event_at = now
            group, _, action = kind.partition("-")
            if group == "task":
                self._on_task(action, event, now)
            elif group == "worker":
                self._on_worker(action, event, now)

    def _on_task(self, action: str, event: dict[str, Any], now: float) -> None:
        task_id = event.get("uuid")
        state = EVENT_STATES.get(action)
        if not isinstance(task_id, str) or state is None:
            return
        self.task_events_seen += 1
        record = self._tasks.get(task_id)
        if record is None:
            record = {"uuid": task_id, "state": state, "first_seen": now}
            self._tasks[task_id] = record
            while len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(task_id)
            if moves_to(record["state"], state):
                record["state"] = state
        for field, limit in _TEXT_LIMITS.items():
            if event.get(field) is not None:
                record[field] = _clip(event[field], limit)
        for field in _NUMBER_FIELDS:
            if event.get(field) is not None:
                record[field] = event[field]
        # task-sent comes from the client; every other task event from the worker running it
        sender = record.pop("hostname", None)
        if sender is not None:
            record["sender" if action == "sent" else "worker"] = sender
        timestamp = event.get("timestamp")
        record[action] = timestamp if isinstance(timestamp, (int, float)) else now
        record["updated"] = now
        if action in OUTCOMES:
            self._count(action, now)

    def _count(self, action: str, now: float) -> None:
        minute = int(now // 60)
        if self._per_minute and self._per_minute[-1][0] == minute:
            counts = self._per_minute[-1][1]
        elif self._per_minute and self._per_minute[-1][0] > minute:
            return  # the clock went back: never rewrite a minute already shown
        else:
            counts = {}
            self._per_minute.append((minute, counts))
        counts[action] = counts.get(action, 0) + 1

    def _on_worker(self, action: str, event: dict[str, Any], now: float) -> None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return
        worker = self._workers.setdefault(hostname, {"hostname": hostname})
        for field in _WORKER_FIELDS:
            if event.get(field) is not None:
                worker[field] = event[field]
        worker["last_event"] = now
        worker["online"] = action != "offline"
        if len(self._workers) > self.max_workers:
            oldest = min(self._workers.values(), key=lambda w: w["last_event"])
            del self._workers[oldest["hostname"]]

    # ---- reading ---------------------------------------------------------------------------
    def tasks(self, limit: int = 100, state: str | None = None,
              name: str | None = None) -> list[dict[str, Any]]:
        """The most recently updated tasks first, optionally only one state or task name."""
        with self._lock:
            found = []
            for record in reversed(self._tasks.values()):
                if state is not None and record["state"] != state:
                    continue
                if name is not None and record.get("name") != name:
                    continue
                found.append(dict(record))
                if len(found) >= limit:
                    break
            return found

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._tasks.get(task_id)
            return None if record is None else dict(record)

    def in_flight(self, limit: int = 100) -> list[dict[str, Any]]:
        """Tasks a worker has received or started and not finished, newest first."""
        with self._lock:
            return [dict(r) for r in reversed(self._tasks.values())
                    if r["state"] in (states.RECEIVED, states.STARTED)][:limit]

    def counts_by_name(self, names: set[str]) -> dict[str, dict[str, int]]:
        """For each task name in ``names``: how many remembered tasks are in each state."""
        with self._lock:
            result: dict[str, dict[str, int]] = {n: {} for n in names}
            for record in self._tasks.values():
                counts = result.get(record.get("name", ""))
                if counts is not None:
                    counts[record["state"]] = counts.get(record["state"], 0) + 1
            return result

    def throughput(self) -> list[dict[str, Any]]:
        """One row per minute of the last ``minutes`` (minutes without events as zeros), oldest
        first: ``{"minute": <unix seconds at its start>, "succeeded": n, "failed": n, ...}``."""
        now_minute = int(self._clock() // 60)
        with self._lock:
            seen = {minute: dict(counts) for minute, counts in self._per_minute}
        rows = []
        for minute in range(now_minute - self.minutes + 1, now_minute + 1):
            counts = seen.get(minute, {})
            rows.append({"minute": minute * 60, **{a: counts.get(a, 0) for a in OUTCOMES}})
        return rows

    def workers(self) -> dict[str, dict[str, Any]]:
        """Nodes known from ``worker-*`` events, with ``alive`` judged as Celery's monitors do:
        online, and heard from within twice its heartbeat interval."""
        now = self._clock()
        with self._lock:
            known = {name: dict(w) for name, w in self._workers.items()}
        for worker in known.values():
            freq = worker.get("freq")
            window = 2 * float(freq) if isinstance(freq, (int, float)) and freq > 0 else 4.0
            worker["alive"] = bool(worker.get("online")) and now - worker["last_event"] <= window
        return known
