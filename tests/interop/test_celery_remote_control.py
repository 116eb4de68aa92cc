"""Remote control across implementations, with the real tools as oracles, on Redis and RabbitMQ
(the interop ``broker`` fixture): Celery 5's ``celery inspect`` against a celeriac worker,
``celeriac inspect`` against a Celery worker beside a celeriac one, and a Celery client's
``revoke(terminate=True)`` stopping a task a celeriac worker runs. Every Celery side runs in a
subprocess (real Celery, never imported here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tests.conftest import REPO
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CELERIAC_NODE = f"celeriac-interop@{socket.gethostname()}"
CELERY_NODE = f"celery-interop@{socket.gethostname()}"


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=90)


def celery_inspect(env: dict[str, str], command: str) -> Any:
    """``celery inspect COMMAND -j`` (real Celery's CLI) asking the celeriac worker."""
    done = run(env, "-m", "celery", "-A", "tests.interop.celery_side", "inspect", command, "-j",
               "-t", "5", "-d", CELERIAC_NODE)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_celery_inspect_reads_a_celeriac_worker(workers, interop_env, celeriac_client,
                                                queue_name):
    workers("celeriac", queue_name)
    held = celeriac_client.send_task("interop.hold", (60,), queue=queue_name)
    assert celery_inspect(interop_env, "ping") == {CELERIAC_NODE: {"ok": "pong"}}
    registered = celery_inspect(interop_env, "registered")[CELERIAC_NODE]
    assert "interop.add" in registered and "interop.hold" in registered
    [active] = wait_for(lambda: celery_inspect(interop_env, "active")[CELERIAC_NODE], 30,
                        message="the task never showed as active")
    assert active["id"] == held.id and active["name"] == "interop.hold"
    assert active["args"] == [60] and active["hostname"] == CELERIAC_NODE
    stats = celery_inspect(interop_env, "stats")[CELERIAC_NODE]
    assert stats["pool"]["max-concurrency"] == 2 and stats["total"] == {"interop.hold": 1}
    celeriac_client.control.revoke(held.id, terminate=True)


def test_celeriac_inspect_lists_a_celery_worker_beside_its_own(workers, interop_env,
                                                              queue_name):
    workers("celery", queue_name)
    workers("celeriac", queue_name)
    done = run(interop_env, "-m", "celeriac.cli.main", "-A", "tests.interop.celeriac_side",
               "inspect", "ping", "-j", "-t", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == {CELERY_NODE: {"ok": "pong"},
                                       CELERIAC_NODE: {"ok": "pong"}}
    done = run(interop_env, "-m", "celeriac.cli.main", "-A", "tests.interop.celeriac_side",
               "inspect", "registered", "-d", CELERY_NODE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"->  {CELERY_NODE}: OK" in done.stdout and "* interop.add" in done.stdout


#: a Celery client: send a long task, wait until a worker runs it, revoke it with terminate
CELERY_TERMINATES = textwrap.dedent("""
    import json, sys, time
    from tests.interop.celery_side import app

    result = app.send_task("interop.hold", (60,), queue=sys.argv[1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        active = app.control.inspect(timeout=1).active() or {}
        if any(info["id"] == result.id for infos in active.values() for info in infos):
            break
    app.control.revoke(result.id, terminate=True)
    while time.monotonic() < deadline and result.state != "REVOKED":
        time.sleep(0.05)
    print(json.dumps({"id": result.id, "state": result.state}))
    app.close()
""")


def test_a_celery_client_terminates_a_task_in_a_celeriac_worker(workers, interop_env,
                                                               queue_name):
    worker = workers("celeriac", queue_name)
    done = run(interop_env, "-c", CELERY_TERMINATES, queue_name)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["state"] == "REVOKED", worker.log()
    assert f"Terminating task {out['id']}" in worker.log()
