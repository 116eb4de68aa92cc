"""A tasks module whose every signal receiver appends a line to $SIGNAL_LOG (name, args, pid)."""

from __future__ import annotations

import json
import os

from celeriac import Celery, signals

app = Celery("tests.integration.signal_tasks", worker_heartbeat_interval=0.2)

# setup_logging is left out on purpose: connecting to it tells celeriac not to configure logging.
WATCHED = [
    "before_task_publish", "after_task_publish", "task_received", "task_prerun", "task_postrun",
    "task_success", "task_retry", "task_failure", "task_revoked", "task_unknown", "task_rejected",
    "celeryd_init", "celeryd_after_setup", "import_modules", "worker_init",
    "worker_before_create_process", "worker_process_init", "worker_process_shutdown",
    "worker_ready", "worker_shutting_down", "worker_shutdown", "heartbeat_sent",
    "after_setup_logger", "after_setup_task_logger",
]


def _record(name):
    def receiver(signal=None, sender=None, **kwargs):
        path = os.environ.get("SIGNAL_LOG")
        if not path:
            return
        line = {"signal": name, "pid": os.getpid(), "sender": type(sender).__name__,
                "sender_name": getattr(sender, "name", sender if isinstance(sender, str) else None),
                "kwargs": sorted(kwargs)}
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
    receiver.__name__ = f"record_{name}"
    return receiver


_receivers = []
for _name in WATCHED:
    _receiver = _record(_name)
    _receivers.append(_receiver)  # keep them alive: signals hold receivers weakly
    getattr(signals, _name).connect(_receiver)


@app.task
def ok(x):
    return x


@app.task
def broken():
    raise ValueError("broken")


@app.task(bind=True, max_retries=1)
def retry_once(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0.01)
    return "retried"
