"""``celeriac dashboard``: a web page of workers, queues, tasks, throughput, dead letters,
dispatches and batches, for every broker, the embedded SQLite one first.

Layer: dashboard (beside cli; it reads through the transport, the result store and
``celeriac.events``). Two kinds of source, so most panels work with no events at all:

- the broker and the result store, read when the page asks (sources.py): workers' heartbeat
  records, queue depths, dead letters (and their replay), any task's stored state, a dispatch's
  ``PROGRESS``;
- task and worker events, taken by one ``EventReceiver`` thread into a bounded ``TaskMonitor``
  (monitor.py): tasks in flight, recent outcomes with their tracebacks, throughput per minute,
  batch tasks' buffered requests. These need workers that send task events (``-E``).

``Dashboard(app).start()`` serves in the background (tests, an app's own process);
``serve_forever()`` is what the command runs. There is no authentication (see server.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from .. import states
from ..utils.text import one_line
from ..utils.urls import display_url
from .monitor import TaskMonitor
from .server import DashboardServer
from .sources import BrokerView, StoreView

__all__ = ["Dashboard", "TaskMonitor"]

logger = logging.getLogger("celeriac.dashboard")

#: seconds between two attempts to (re)start receiving events after a failure
EVENTS_RETRY = 2.0
#: how many workers that stopped are still listed (as offline)
MAX_REMEMBERED_WORKERS = 200
#: how many dispatches the page lists (newest first)
MAX_DISPATCHES = 20


def _is_dispatch(task: Any) -> bool:
    """A ``@dispatch`` main task (its function carries the dispatch's settings)."""
    for fun in (getattr(type(task), "__wrapped__", None), getattr(task, "run", None)):
        if getattr(getattr(fun, "__func__", fun), "__celeriac_dispatch__", None) is not None:
            return True
    return False


class Dashboard:
    """One dashboard over one app: its HTTP server, its event thread and what they remember."""

    def __init__(self, app: Any, address: str = "127.0.0.1", port: int = 5555, *,
                 queues: Sequence[str] = (), events: bool = True, max_tasks: int = 1000) -> None:
        self.app = app
        self.address = address
        self.port = port
        self.monitor = TaskMonitor(max_tasks=max_tasks)
        self.store = StoreView(app)
        self.broker = BrokerView(app, queues)
        self.receive_events = events
        #: why events are not coming in, for the page (None while they are, or may)
        self.events_error: str | None = None if events else "turned off (--no-events)"
        self._server: DashboardServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._receiver: Any = None
        self._lock = threading.Lock()
        #: node -> the last record it was seen with (workers that stopped stay listed, offline)
        self._known_workers: dict[str, dict[str, Any]] = {}

    # ---- running ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where the page is (the bound port, once started)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"

    def start(self) -> str:
        """Bind, then serve and receive events on background threads; returns the page's URL.
        ``OSError`` when the address cannot be bound (the port in use, say)."""
        self._server = DashboardServer((self.address, self.port), self)
        self.port = self._server.server_address[1]
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                 name="celeriac-dashboard-http", daemon=True)
        self._threads.append(serve)
        if self.receive_events:
            self._threads.append(threading.Thread(target=self._receive, daemon=True,
                                                  name="celeriac-dashboard-events"))
        for thread in self._threads:
            thread.start()
        return self.url

    def serve_forever(self) -> None:
        """``start()`` unless started, then wait until ``stop()`` (or Ctrl-C) ends it."""
        if self._server is None:
            self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()

    def interrupt(self) -> None:
        """Make ``serve_forever`` return (safe from a signal handler: it only sets a flag)."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop serving and receiving; waits briefly for both threads."""
        self._stopping.set()
        receiver = self._receiver
        if receiver is not None:
            try:
                receiver.stop()
            except Exception:  # noqa: BLE001 - stopping anyway
                logger.debug("dashboard: stopping the event receiver failed", exc_info=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5.0)
        self._threads = []

    def _receive(self) -> None:
        """The event thread: every event into the monitor; after a failure (the broker gone),
        try again every ``EVENTS_RETRY`` seconds."""
        try:
            from ..events import EventReceiver
        except ImportError as exc:
            self.events_error = f"this celeriac cannot receive events ({one_line(exc)})"
            return
        while not self._stopping.is_set():
            try:
                receiver = EventReceiver(self.app, handlers={"*": self.monitor.on_event})
                self._receiver = receiver
                # subscribed once for the whole loop, so nothing is missed between captures;
                # each capture ends after a quiet second to look at the stop flag
                with receiver:
                    self.events_error = None
                    while not self._stopping.is_set():
                        try:
                            receiver.capture(timeout=1.0)
                        except TimeoutError:
                            pass
                return
            except Exception as exc:  # noqa: BLE001 - shown on the page, tried again
                self.events_error = f"cannot receive events: {one_line(exc)}"
                logger.warning("dashboard: %s (trying again in %gs)", self.events_error,
                               EVENTS_RETRY)
            self._stopping.wait(EVENTS_RETRY)

    # ---- what the API answers -----------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        """Every panel at once, each computed on its own: one that fails says so in its own
        ``error`` and the rest still show."""
        workers = self._section(self.workers)
        consumed = [q for w in workers.get("workers", []) for q in w.get("queues") or []]
        return {
            "app": self.about(),
            "workers": workers,
            "queues": self._section(lambda: self.queues(consumed)),
            "tasks": self._section(self.task_lists),
            "throughput": self._section(self.throughput),
            "dead_letters": self._section(lambda: self.dead_letters(100)),
            "dispatches": self._section(self.dispatches),
            "batches": self._section(self.batches),
        }

    @staticmethod
    def _section(build: Any) -> dict[str, Any]:
        try:
            section: dict[str, Any] = build()
            return section
        except Exception as exc:  # noqa: BLE001 - one panel's failure, shown in that panel
            logger.warning("dashboard: a panel failed: %s", one_line(exc), exc_info=True)
            return {"error": one_line(exc)}

    def about(self) -> dict[str, Any]:
        return {
            "main": getattr(self.app, "main", None),
            "broker": display_url(str(self.app.broker_url)),
            "result_backend": display_url(str(self.app.result_backend_url)),
            "events": {"receiving": self.receive_events and self.events_error is None,
                       "error": self.events_error, "seen": self.monitor.events_seen,
                       "task_events_seen": self.monitor.task_events_seen,
                       "last_event_at": self.monitor.last_event_at},
            "now": time.time(),
        }

    def workers(self) -> dict[str, Any]:
        """Every worker known from heartbeat records or events, alive or not: ``active``
        (tasks running now), ``processed``, ``loadavg`` (events only), ``queues``,
        ``last_heartbeat``."""
        now = time.time()
        records = self.store.heartbeats()
        from_events = self.monitor.workers()
        rows: dict[str, dict[str, Any]] = {}
        for node, event_info in from_events.items():
            rows[node] = {"hostname": node, "alive": event_info["alive"],
                          "last_heartbeat": event_info.get("last_event"), "source": "events",
                          **{k: event_info.get(k) for k in (
                              "active", "processed", "loadavg", "freq", "pid", "sw_ident",
                              "sw_ver")}}
        for node, record in (records or {}).items():
            row = rows.setdefault(node, {"hostname": node, "source": "store"})
            freq = float(record.get("freq") or 2.0)
            beat = float(record.get("timestamp") or 0.0)
            went_offline = row.get("source") == "events" and not from_events[node]["online"] \
                and (from_events[node].get("last_event") or 0) >= beat
            fresher = beat >= (row.get("last_heartbeat") or 0.0)  # else events said more
            row.update({k: record.get(k) for k in ("pid", "active", "processed", "queues")
                        if record.get(k) is not None and (fresher or row.get(k) is None)})
            row["freq"] = freq
            row["last_heartbeat"] = max(beat, row.get("last_heartbeat") or 0.0)
            row["alive"] = not went_offline and (row.get("alive") or now - beat <= 3 * freq)
            row["source"] = "store+events" if node in from_events else "store"
        with self._lock:
            for node, row in rows.items():
                self._known_workers[node] = dict(row)
            for node, row in self._known_workers.items():
                if node not in rows:
                    rows[node] = {**row, "alive": False, "active": 0}
            while len(self._known_workers) > MAX_REMEMBERED_WORKERS:
                oldest = min(self._known_workers.values(),
                             key=lambda r: r.get("last_heartbeat") or 0.0)
                del self._known_workers[oldest["hostname"]]
        listed = sorted(rows.values(), key=lambda r: (not r["alive"], r["hostname"]))
        return {"workers": listed, "heartbeats_listed": records is not None}

    def queues(self, consumed: Sequence[str] | None = None) -> dict[str, Any]:
        """Each known queue and how many messages wait in it (ready, deferred or held)."""
        if consumed is None:
            consumed = [q for w in self.workers()["workers"] for q in w.get("queues") or []]
        names = self.broker.queue_names(consumed)
        return {"queues": self.broker.depths(names)}

    def tasks(self, state: str | None = None, name: str | None = None,
              limit: int = 100) -> dict[str, Any]:
        """Tasks remembered from events, the latest first (``state``: one of
        ``EVENT_STATES``' values)."""
        return {"tasks": self.monitor.tasks(limit=limit, state=state, name=name)}

    def task_lists(self) -> dict[str, Any]:
        """The page's task panels: in flight, the latest outcomes, and the latest failures
        (kept apart, so a busy queue's successes never push them off the page)."""
        recent = [t for t in self.monitor.tasks(limit=self.monitor.max_tasks)
                  if t["state"] not in (states.RECEIVED, states.STARTED, states.PENDING)][:50]
        return {"in_flight": self.monitor.in_flight(50), "recent": recent,
                "failures": self.monitor.tasks(limit=20, state=states.FAILURE)}

    def task(self, task_id: str) -> dict[str, Any]:
        """One task: what events said about it and what the result store holds."""
        return {"id": task_id, "events": self.monitor.task(task_id),
                "stored": self.store.meta(task_id)}

    def throughput(self) -> dict[str, Any]:
        return {"per_minute": self.monitor.throughput()}

    def dead_letters(self, limit: int = 100) -> dict[str, Any]:
        return {"kept": self.broker.keeps_dead_letters,
                "dead_letters": self.broker.dead_letters(limit)}

    def replay(self, ids: Sequence[str] | None) -> dict[str, Any]:
        """Replay dead letters (all when ``ids`` is None); ``KeyError`` for an unknown id."""
        done = self.broker.replay(ids)
        logger.info("dashboard: replayed %d dead letter(s)", done)
        return {"replayed": done}

    def dispatches(self) -> dict[str, Any]:
        """The latest main tasks of ``@dispatch`` tasks seen in events, with the ``PROGRESS``
        their main task stores (completed and total subtasks, percent, time left)."""
        names = sorted(n for n, t in self.app.tasks.items() if _is_dispatch(t))
        seen = [t for n in names for t in self.monitor.tasks(limit=MAX_DISPATCHES, name=n)]
        seen.sort(key=lambda t: t.get("updated") or 0.0, reverse=True)
        seen = seen[:MAX_DISPATCHES]
        stored = self.store.metas([t["uuid"] for t in seen])
        rows = []
        for record in seen:
            meta = stored.get(record["uuid"]) or {}
            state = meta.get("state")
            rows.append({"uuid": record["uuid"], "name": record.get("name"),
                         "worker": record.get("worker"), "started": record.get("started"),
                         "state": state if state and state != states.PENDING
                         else record["state"],
                         "progress": meta.get("progress")})
        return {"tasks": names, "dispatches": rows}

    def batches(self) -> dict[str, Any]:
        """Each batch task (``base=Batches``): its flush settings, and from events how many of
        its requests wait in workers' buffers and how the flushed ones ended."""
        found = {n: t for n, t in self.app.tasks.items() if getattr(t, "collects_requests", False)}
        counts = self.monitor.counts_by_name(set(found))
        rows = []
        for name in sorted(found):
            task, by_state = found[name], counts.get(name, {})
            rows.append({"name": name, "flush_every": getattr(task, "flush_every", None),
                         "flush_interval": getattr(task, "flush_interval", None),
                         "buffered": by_state.get(states.RECEIVED, 0),
                         "running": by_state.get(states.STARTED, 0),
                         "succeeded": by_state.get(states.SUCCESS, 0),
                         "failed": by_state.get(states.FAILURE, 0)})
        return {"batches": rows}
