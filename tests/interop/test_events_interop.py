"""Events between real Celery 5 and celeriac (issue 16, items 1 and 3), on Redis and RabbitMQ:

- Celery's own monitor (``celery.events`` Receiver + ``events.state.State``, what Flower runs)
  follows a celeriac worker: the worker alive with its counters, each task's name, args,
  result or exception and traceback, runtime and state;
- celeriac's ``EventReceiver`` reads a real Celery worker's events, which come in
  ``task.multi`` lists;
- Flower 2 itself (a subprocess) lists a celeriac worker's succeeded and failed tasks
  in ``/api/tasks`` and ``/api/task/info/<id>``, shows the worker with its registered tasks in
  ``/api/workers?refresh=1`` (remote control), applies a task with
  ``/api/task/async-apply/<name>`` and stops a running one with
  ``/api/task/revoke/<id>?terminate=true``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from celeriac.events import EventReceiver, events_from_message
from tests.conftest import REPO, WorkerProcess
from tests.interop.conftest import CeleryWorkerProcess
from tests.waiting import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.integration]

PATIENCE = 60.0


def celeriac_worker(tmp_path: Path, broker_url: str, interop_url: str,
                    interop_env: dict[str, str], queue: str) -> WorkerProcess:
    """A celeriac worker with -E and fast heartbeats, ready."""
    worker = WorkerProcess("tests.interop.celeriac_side", broker_url,
                           tmp_path / "celeriac-worker.log", "-P", "prefork", "-c", "2",
                           "-Q", queue, "-E", "--heartbeat-interval", "0.5",
                           "-n", "celeriac-events@%h",
                           env={**interop_env, "CELERIAC_RESULT_BACKEND": interop_url})
    worker.wait_ready(timeout=30)
    return worker


def test_celerys_state_follows_a_celeriac_worker(tmp_path, broker_url, interop_url,
                                                 interop_env, celeriac_client, queue_name):
    import uuid

    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    ready = tmp_path / "receiver.ready"
    monitor = subprocess.Popen(
        [sys.executable, "-m", "tests.interop.celery_events_side", str(ready), *ids],
        cwd=REPO, env={**os.environ, **interop_env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        wait_for(ready.exists, PATIENCE, message="Celery's receiver did not start")
        worker = celeriac_worker(tmp_path, broker_url, interop_url, interop_env, queue_name)
        ok = celeriac_client.send_task("interop.add", (2, 3), queue=queue_name, task_id=ids[0])
        bad = celeriac_client.send_task("interop.fail", ("boom",), queue=queue_name,
                                        task_id=ids[1])
        assert ok.get(timeout=PATIENCE) == 5
        with pytest.raises(ValueError):
            bad.get(timeout=PATIENCE)
        out, err = monitor.communicate(timeout=PATIENCE + 10)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.communicate()
        if worker is not None:
            worker.stop()
    assert monitor.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    [(hostname, info)] = [(h, w) for h, w in seen["workers"].items()
                          if h.startswith("celeriac-events@")]
    assert info["alive"] is True and info["freq"] == 0.5
    assert info["processed"] >= 1 and info["active"] is not None
    assert isinstance(info["loadavg"], list) and info["sw_ident"] == "py-celeriac"
    add, fail = seen["tasks"][ids[0]], seen["tasks"][ids[1]]
    assert (add["state"], add["name"], add["args"], add["kwargs"], add["result"]) == (
        "SUCCESS", "interop.add", "(2, 3)", "{}", "5")
    assert add["runtime"] >= 0 and add["worker"] == hostname
    assert add["received"] <= add["started"] <= add["succeeded"]
    assert (fail["state"], fail["name"], fail["exception"]) == (
        "FAILURE", "interop.fail", "ValueError('boom')")
    assert "ValueError: boom" in fail["traceback"]
    assert "worker-online" in seen["kinds"] and "worker-heartbeat" in seen["kinds"]


def test_our_receiver_reads_a_celery_workers_task_multi_lists(tmp_path, interop_env,
                                                             celeriac_client, queue_name):
    events: list[dict[str, Any]] = []
    receiver = EventReceiver(celeriac_client, {"*": events.append}).subscribe()
    raw = celeriac_client.transport.subscribe("celeryev", "task.multi")
    thread = threading.Thread(target=receiver.capture, daemon=True)
    thread.start()
    worker = CeleryWorkerProcess(interop_env, tmp_path / "celery-worker.log", "-Q", queue_name,
                                 "-E")
    try:
        worker.wait_ready(timeout=30)
        ok = celeriac_client.send_task("interop.add", (20, 22), queue=queue_name)
        bad = celeriac_client.send_task("interop.fail", ("from celery",), queue=queue_name)
        assert ok.get(timeout=PATIENCE) == 42
        with pytest.raises(ValueError):
            bad.get(timeout=PATIENCE)

        def types(task_id: str) -> list[str]:
            return [e["type"] for e in list(events) if e.get("uuid") == task_id]

        wait_for(lambda: types(ok.id) == ["task-received", "task-started", "task-succeeded"],
                 PATIENCE, message=lambda: f"{types(ok.id)}\n{worker.log()}")
        wait_for(lambda: types(bad.id)[-1:] == ["task-failed"], PATIENCE,
                 message=lambda: f"{types(bad.id)}")
        batches = []
        wait_for(lambda: batches.extend(raw.get(0.2)) or batches, PATIENCE,
                 message="no task.multi message")
    finally:
        receiver.stop()
        thread.join(5)
        receiver.close()
        raw.close()
        worker.kill()  # an oracle: its warm shutdown on RabbitMQ takes ~10 s for nothing
        worker._log.close()
    assert json.loads(bytes(batches[0].body)).__class__ is list, "Celery sends lists"
    assert events_from_message(batches[0])
    succeeded = next(e for e in events if e.get("uuid") == ok.id
                     and e["type"] == "task-succeeded")
    assert succeeded["result"] == "42" and succeeded["hostname"].startswith("celery-interop@")
    failed = next(e for e in events if e.get("uuid") == bad.id and e["type"] == "task-failed")
    assert failed["exception"] == "ValueError('from celery')"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read().decode())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        body = response.read().decode()
    return json.loads(body) if response.headers.get_content_type() == "application/json" \
        else body


def test_flower_lists_a_celeriac_workers_tasks(tmp_path, broker_url, interop_url, interop_env,
                                               celeriac_client, queue_name):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        flower = subprocess.Popen(
            # the Celery app of the interop tests: Flower's async-apply needs the task registered
            [sys.executable, "-m", "celery", "-A", "tests.interop.celery_side",
             "flower", f"--port={port}", "--address=127.0.0.1"],
            cwd=REPO, env={**os.environ, **interop_env, "FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        def metrics() -> str:
            try:
                return str(_get(f"{base}/metrics"))
            except OSError:
                if flower.poll() is not None:
                    raise AssertionError(f"flower exited:\n{log.read_text()}") from None
                return ""

        wait_for(metrics, PATIENCE, interval=0.2, message=lambda: log.read_text())
        worker = celeriac_worker(tmp_path, broker_url, interop_url, interop_env, queue_name)
        # Flower has our worker once its heartbeats reach it
        wait_for(lambda: 'flower_worker_online{worker="celeriac-events@' in metrics(),
                 PATIENCE, interval=0.2, message=lambda: log.read_text())
        ok = celeriac_client.send_task("interop.add", (2, 2), queue=queue_name)
        bad = celeriac_client.send_task("interop.fail", ("for flower",), queue=queue_name)
        assert ok.get(timeout=PATIENCE) == 4

        def listed() -> dict[str, Any]:
            tasks = _get(f"{base}/api/tasks")
            states = {task_id: info.get("state") for task_id, info in tasks.items()}
            return tasks if (states.get(ok.id), states.get(bad.id)) == (
                "SUCCESS", "FAILURE") else {}

        tasks = wait_for(listed, PATIENCE, interval=0.2,
                         message=lambda: f"{_get(f'{base}/api/tasks')}\n{log.read_text()}")
        info = _get(f"{base}/api/task/info/{bad.id}")

        # the workers page asks the worker over remote control (pidbox)
        def ours() -> dict[str, Any]:
            listing = _get(f"{base}/api/workers?refresh=1")
            found = {k: v for k, v in listing.items() if k.startswith("celeriac-events@")}
            return next(iter(found.values()), {}) if found else {}

        worker_info = wait_for(lambda: (w := ours()) and w.get("registered") and w, PATIENCE,
                               interval=0.5, message=lambda: log.read_text())
        # Flower's buttons: apply a task, revoke a running one with terminate
        applied = _post(f"{base}/api/task/async-apply/interop.add",
                        {"args": [20, 22], "queue": queue_name})
        assert celeriac_client.AsyncResult(applied["task-id"]).get(timeout=PATIENCE) == 42
        held = celeriac_client.send_task("interop.hold", (60,), queue=queue_name)
        wait_for(lambda: _get(f"{base}/api/tasks").get(held.id, {}).get("state") == "STARTED",
                 PATIENCE, interval=0.2, message=lambda: log.read_text())
        _post(f"{base}/api/task/revoke/{held.id}?terminate=true", {})
        wait_for(lambda: held.state == "REVOKED", 30, interval=0.2,
                 message=lambda: f"still {held.state} after Flower's revoke(terminate)")
    finally:
        flower.terminate()
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait()
        if worker is not None:
            worker.stop()
    assert tasks[ok.id]["name"] == "interop.add" and tasks[ok.id]["result"] == "4"
    assert tasks[ok.id]["worker"].startswith("celeriac-events@")
    assert tasks[ok.id]["args"] == "(2, 2)" and tasks[ok.id]["runtime"] >= 0
    assert info["state"] == "FAILURE" and info["exception"] == "ValueError('for flower')"
    assert "interop.add" in worker_info["registered"]
    assert "ValueError: for flower" in info["traceback"]
