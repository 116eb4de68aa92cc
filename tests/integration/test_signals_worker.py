"""Every task and worker signal fires, with Celery's arguments, in the process Celery fires it
in, on every broker (the ``broker`` fixture, tests/integration/conftest.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from celeriac.exceptions import TaskRevokedError
from celeriac.protocol.message import Message
from celeriac.transport.base import Outgoing
from tests.integration.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

# signal -> (keyword arguments receivers get, where: "main" worker process / "child" / "client")
EXPECTED = {
    "before_task_publish": ({"body", "exchange", "routing_key", "headers", "properties",
                             "declare", "retry_policy"}, "client"),  # or a child that re-sends
    "after_task_publish": ({"body", "exchange", "routing_key"}, "client"),
    "celeryd_init": ({"instance", "conf", "options"}, "main"),
    "import_modules": (set(), "any"),  # wherever the app loads its modules
    "worker_init": (set(), "main"),
    "worker_before_create_process": (set(), "main"),
    "worker_process_init": (set(), "child"),
    "celeryd_after_setup": ({"instance", "conf"}, "main"),
    "worker_ready": (set(), "main"),
    "heartbeat_sent": (set(), "main"),
    "task_received": ({"request"}, "main"),
    "task_prerun": ({"task_id", "task", "args", "kwargs"}, "child"),
    "task_postrun": ({"task_id", "task", "args", "kwargs", "retval", "state"}, "child"),
    "task_success": ({"result"}, "child"),
    "task_failure": ({"task_id", "exception", "args", "kwargs", "traceback", "einfo"}, "child"),
    "task_retry": ({"request", "reason", "einfo"}, "child"),
    "task_revoked": ({"request", "terminated", "signum", "expired"}, "main"),
    "task_unknown": ({"name", "id", "message", "exc"}, "main"),
    "task_rejected": ({"message", "exc"}, "main"),
    "worker_shutting_down": ({"sig", "how", "exitcode"}, "main"),
    "worker_process_shutdown": ({"pid", "exitcode"}, "child"),
    "worker_shutdown": (set(), "main"),
    "after_setup_logger": ({"logger", "loglevel", "logfile", "format", "colorize"}, "main"),
    "after_setup_task_logger": ({"logger", "loglevel", "logfile", "format", "colorize"}, "main"),
}


def test_every_signal_fires_with_celerys_arguments(start_worker, broker: Broker, task_module,
                                                   monkeypatch, tmp_path):
    log = tmp_path / "signals.jsonl"
    monkeypatch.setenv("SIGNAL_LOG", str(log))
    signal_tasks = task_module("signal_tasks", broker.url, results=broker.results)
    app = signal_tasks.app
    worker = start_worker("-P", "prefork", "-c", "1", app="tests.integration.signal_tasks",
                          url=broker.url, env=broker.worker_env({"SIGNAL_LOG": str(log)}))
    assert signal_tasks.ok.delay(1).get(timeout=20) == 1
    with pytest.raises(ValueError):
        signal_tasks.broken.delay().get(timeout=20)
    assert signal_tasks.retry_once.delay().get(timeout=20) == "retried"
    # revoked before it was sent: the worker drops it (task_revoked, not expired)
    revoked_id = str(uuid.uuid4())
    app.control.revoke(revoked_id)
    revoked = signal_tasks.ok.apply_async((3,), task_id=revoked_id)
    # expired: the worker drops it (task_revoked, expired). On RabbitMQ the message carries a
    # TTL of 0 ms (``expiration``): RabbitMQ hands it over only because the idle worker's
    # consumer has prefetch room at this instant (else it would drop it itself, as with Celery)
    expired = signal_tasks.ok.apply_async((2,), expires=-1)
    app.send_task("tests.integration.signal_tasks.missing")
    app.transport.publish([Outgoing("celery", Message(body=b"[[], {}, {}]",
                                                      headers={"id": str(uuid.uuid4())}))])
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=20)
    with pytest.raises(TaskRevokedError):  # expired: stored as REVOKED, as Celery does
        expired.get(timeout=20)
    wait_for(lambda: all(name in log.read_text() for name in ("task_unknown", "task_rejected")),
             20, interval=0.05, message="task_unknown and task_rejected never fired")
    assert worker.stop() == 0

    import os

    records = [json.loads(line) for line in log.read_text().splitlines()]
    seen = {}
    for record in records:
        seen.setdefault(record["signal"], []).append(record)
    main_pid = worker.proc.pid
    client_pid = os.getpid()
    missing = sorted(set(EXPECTED) - set(seen))
    assert not missing, f"signals never fired: {missing}"
    for name, (kwargs, where) in EXPECTED.items():
        for record in seen[name]:
            assert set(record["kwargs"]) >= kwargs, f"{name} lacks {kwargs - set(record['kwargs'])}"
            pid = record["pid"]
            if where == "any":
                continue
            if where == "main":
                assert pid == main_pid, f"{name} fired in pid {pid}, not the worker's main process"
            elif where == "client":  # the publishing process: the client, or a child re-sending
                assert pid != main_pid, f"{name} fired in the worker's main process"
            else:
                assert pid not in (main_pid, client_pid), f"{name} should fire in a pool child"
    assert {r["sender_name"] for r in seen["task_success"]} >= {"tests.integration.signal_tasks.ok"}
    assert any(r["kwargs"] and r["sender_name"] == "tests.integration.signal_tasks.ok"
               for r in seen["task_revoked"])
