"""The dashboard's JSON API over a real worker (``-E``) on SQLite and Redis, and the
``celeriac dashboard`` command itself.

One worker and one dashboard per broker run a few tasks (a success, a failure, a batch, a
dispatch held mid-way by a gate file, an unknown task that becomes a dead letter, messages
parked on a queue no worker reads); the API must show each of them where the page draws it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac.dashboard import Dashboard
from tests.conftest import REPO
from tests.integration.conftest import Broker, open_broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.dashboard_tasks"
PARKED = "dashboard-parked"  # a queue no worker consumes: its depth stays put
NODE = "dashboard@test"


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis), "amqp"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    with open_broker(request.param, tmp_path) as broker:
        yield broker


def get(board: Dashboard, path: str) -> Any:
    with urllib.request.urlopen(board.url.rstrip("/") + path, timeout=10) as answer:
        return json.load(answer)


def post(board: Dashboard, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(board.url.rstrip("/") + path, method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_the_api_shows_what_the_worker_did(broker: Broker, start_worker, task_module,
                                           tmp_path: Path) -> None:
    tasks = task_module("dashboard_tasks", broker.url, broker.results)
    app = tasks.app
    start_worker("-P", "threads", "-c", "4", "-E", "-n", NODE, app=APP, url=broker.url,
                 env=broker.worker_env())
    board = Dashboard(app, port=0, queues=[PARKED])
    board.start()
    try:
        for _ in range(2):
            tasks.add.apply_async((1, 1), queue=PARKED)
        done = tasks.add.delay(2, 3)
        failed = tasks.fail.delay("boom")
        assert done.get(timeout=20) == 5
        failed.get(timeout=20, propagate=False)
        batch = [tasks.tally.delay(i, 1) for i in range(3)]
        assert [r.get(timeout=20) for r in batch] == [1, 2, 3]
        missing = app.send_task("tests.integration.dashboard_tasks.missing", (7,))
        gate = tmp_path / "gate"
        dispatch = tasks.squares.delay(4, str(gate))

        # processed: as of the worker's latest heartbeat (every 2 s)
        workers = wait_for(lambda: [w for w in get(board, "/api/workers")["workers"]
                                    if w["hostname"] == NODE and w["alive"]
                                    and (w["processed"] or 0) >= 2], 20,
                           message="the worker never showed as alive with 2 tasks processed")
        assert workers[0]["queues"] == ["celery"]
        depths = {q["name"]: q["depth"] for q in get(board, "/api/queues")["queues"]}
        assert depths[PARKED] == 2

        def outcome(task_id: str) -> dict | None:
            found = [t for t in get(board, "/api/tasks?limit=200")["tasks"]
                     if t["uuid"] == task_id and t["state"] in ("SUCCESS", "FAILURE")]
            return found[0] if found else None

        assert wait_for(lambda: outcome(done.id), 20)["result"] == "5"
        failure = wait_for(lambda: outcome(failed.id), 20)
        assert failure["exception"] == "ValueError('boom')"
        assert "in _explode" in failure["traceback"]
        assert "ValueError: boom" in failure["traceback"]
        stored = get(board, f"/api/task/{failed.id}")["stored"]
        assert stored["state"] == "FAILURE" and "ValueError: boom" in stored["traceback"]

        per_minute = get(board, "/api/throughput")["per_minute"]
        assert sum(r["succeeded"] for r in per_minute) >= 4  # add and the three batch requests
        assert sum(r["failed"] for r in per_minute) >= 1

        def tally_row() -> dict:
            [row] = get(board, "/api/batches")["batches"]
            return row if row["succeeded"] == 3 else {}

        assert wait_for(tally_row, 20)["flush_every"] == 3

        def progress() -> dict | None:
            rows = [d for d in get(board, "/api/dispatches")["dispatches"]
                    if d["uuid"] == dispatch.id]
            return rows[0]["progress"] if rows and rows[0]["progress"] else None

        shown = wait_for(progress, 20, message="the dispatch's PROGRESS never showed")
        assert shown["total_count"] == 4 and shown["completed_count"] <= 2
        gate.touch()
        assert dispatch.get(timeout=20) == 4

        letters = wait_for(lambda: get(board, "/api/dead-letters")["dead_letters"], 20)
        [letter] = letters
        assert (letter["task"], letter["task_id"]) == (
            "tests.integration.dashboard_tasks.missing", missing.id)
        assert "unknown task" in letter["reason"]
        assert post(board, "/api/dead-letters/replay", {"ids": [letter["id"]]}) == (
            200, {"replayed": 1})
        # the message went back through the broker: the worker sets it aside again, anew
        again = wait_for(lambda: [d for d in get(board, "/api/dead-letters")["dead_letters"]
                                  if d["task_id"] == missing.id and d["id"] != letter["id"]],
                         20, message="the replayed message never came back from the worker")
        assert len(again) == 1
        assert [d["id"] for d in get(board, "/api/dead-letters")["dead_letters"]] == [
            again[0]["id"]]
    finally:
        board.stop()


def test_a_stopped_worker_stays_listed_as_offline(broker: Broker, start_worker,
                                                  task_module) -> None:
    tasks = task_module("dashboard_tasks", broker.url, broker.results)
    worker = start_worker("-P", "solo", "-E", "-n", NODE, app=APP, url=broker.url,
                          env=broker.worker_env())
    board = Dashboard(tasks.app, port=0)
    board.start()
    try:
        def listed(alive: bool) -> list:
            return [w for w in get(board, "/api/workers")["workers"]
                    if w["hostname"] == NODE and w["alive"] is alive]

        wait_for(lambda: listed(True), 20, message="the worker never showed as alive")
        assert worker.stop() == 0
        [offline] = wait_for(lambda: listed(False), 20,
                             message="the stopped worker never showed as offline")
        assert offline["last_heartbeat"] > 0
    finally:
        board.stop()


# ---- the command -----------------------------------------------------------------------------
def _dashboard_command(url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url,
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "celeriac.cli.main", "-A", APP, "dashboard",
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_the_command_serves_until_sigterm(sqlite_url: str) -> None:
    proc = _dashboard_command(sqlite_url, "--port", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"serving (http://127\.0\.0\.1:\d+/) \(no authentication", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr
                              else "")
        with urllib.request.urlopen(match[1] + "api/queues", timeout=10) as answer:
            assert json.load(answer) == {"queues": [{"name": "celery", "depth": 0}]}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "celeriac dashboard: stopped" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_port_in_use_is_one_line_naming_the_option(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "-b", sqlite_url,
             "--result-backend", sqlite_url, "dashboard", "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"celeriac dashboard: port {port} on 127.0.0.1 is in use: pass another --port "
        "(or --port 0 for any free one)")


@pytest.mark.parametrize(("args", "says"), [
    (["--port", "70000"], "--port must be from 0 to 65535 (got 70000)"),
    (["--max-tasks", "0"], "--max-tasks must be at least 1 (got 0)"),
])
def test_bad_options_are_one_line(sqlite_url: str, args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "-b", sqlite_url, "dashboard",
         *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"celeriac dashboard: {says}"
