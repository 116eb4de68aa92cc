"""Celery's own event monitor, as the oracle for celeriac's events: ``celery.events`` 's
``Receiver`` feeding ``celery.events.state.State``, as Flower does.

Layer: test support. Imports ``celery`` (never celeriac); the broker comes from
``INTEROP_BROKER_URL``. Run as ``python -m tests.interop.celery_events_side READY_FILE
TASK_ID...``: it writes READY_FILE once it consumes events, captures until every TASK_ID is in a
ready state and a worker has heartbeaten since (or 60 s pass), then prints what ``State``
knows as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from celery import Celery
from celery.events.receiver import EventReceiver
from celery.events.state import State

BROKER = os.environ.get("INTEROP_BROKER_URL", "redis://127.0.0.1:6379/12")
DEADLINE = 60.0

app = Celery("interop_events", broker=BROKER)
app.conf.update(accept_content=["json"], broker_connection_retry_on_startup=True)

TASK_FIELDS = ("name", "state", "args", "kwargs", "result", "exception", "traceback",
               "runtime", "retries", "root_id", "parent_id", "received", "started",
               "succeeded", "failed", "timestamp")
WORKER_FIELDS = ("alive", "active", "processed", "freq", "loadavg", "sw_ident", "sw_ver",
                 "sw_sys", "pid")


class ReadyReceiver(EventReceiver):
    """Says when it consumes (the file), so the test starts the worker after that."""

    ready_file = ""

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         **kwargs: Any) -> None:
        with open(self.ready_file, "w") as file:
            file.write("ready")


def main(ready_file: str, task_ids: list[str]) -> dict[str, Any]:
    state = State()
    kinds: list[str] = []

    done_at: list[int] = []  # how many events had come when every task was ready

    def on_event(event: dict[str, Any]) -> None:
        state.event(event)
        kinds.append(event["type"])
        if not done_at and all(t in state.tasks and state.tasks[t].ready for t in task_ids):
            done_at.append(len(kinds))
        # a heartbeat sent after the tasks ended: its counters include them
        if done_at and "worker-heartbeat" in kinds[done_at[0]:]:
            receiver.should_stop = True

    with app.connection() as conn:
        receiver = ReadyReceiver(conn, handlers={"*": on_event}, app=app)
        receiver.ready_file = ready_file
        timer = threading.Timer(DEADLINE, lambda: setattr(receiver, "should_stop", True))
        timer.daemon = True
        timer.start()
        receiver.capture(limit=None, timeout=None, wakeup=False)
        timer.cancel()
    return {
        "kinds": kinds,
        "workers": {name: {f: getattr(w, f) for f in WORKER_FIELDS}
                    for name, w in state.workers.items()},
        "tasks": {uuid: {**{f: getattr(t, f) for f in TASK_FIELDS},
                         "worker": t.worker.hostname if t.worker else None}
                  for uuid, t in state.tasks.items()},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:]), default=repr))
