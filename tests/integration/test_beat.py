"""Periodic tasks end to end (issue 15, items 1-3): several real beat processes (``celeriac
beat`` and ``worker -B``) on one broker and store fire each run once; when the leader is
SIGKILLed another takes over within the stated bound; the schedule is edited with ``celeriac
schedule`` while a beat runs; a beat restarted after an outage fires a missed run once.

The task is tests/integration/beat_tasks.py's ``tick``; its runs are read from a ledger file it
appends to, outside the system under test. Every period here is 1 s and the leader lease 2 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from tests.conftest import REPO
from tests.integration.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.beat_tasks"
LEASE = 2.0
#: the takeover bound the docs state: the lease, plus up to 1 s until a standby beat looks
#: again, plus the period until the entry is due (1 s), plus slack for a loaded machine
TAKEOVER = LEASE + 1.0 + 1.0 + 2.0


def ticks(ledger: Path) -> list[tuple[float, str, int]]:
    if not ledger.exists():
        return []
    rows = [line.split() for line in ledger.read_text().splitlines()]
    return sorted((float(t), task_id, int(pid)) for t, task_id, pid in rows)


def too_close(times: list[float], within: float = 0.25) -> list[tuple[float, float]]:
    """Runs closer together than any single beat would send them (a double fire)."""
    return [(a, b) for a, b in zip(times, times[1:]) if b - a < within]


@pytest.fixture
def env(broker: Broker, tmp_path: Path) -> dict[str, str]:
    return broker.worker_env({"BEAT_LEDGER": str(tmp_path / "ledger"), "BEAT_EVERY": "1",
                              "BEAT_LEASE": str(LEASE)}) or {}


@pytest.fixture
def tasks(broker: Broker, task_module: Callable[..., ModuleType], env: dict[str, str],
          monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return task_module("beat_tasks", broker.url, results=broker.results)


def start_beat(start_worker: Callable[..., Any], broker: Broker, env: dict[str, str]) -> Any:
    beat = start_worker(app=APP, url=broker.url, env=env, command="beat", ready=False)
    wait_for(lambda: "in the schedule" in beat.log(), 20,
             message=lambda: f"beat did not start:\n{beat.log()}")
    return beat


def leader_pid(tasks: ModuleType) -> int | None:
    owner = tasks.app.lock("beat-leader").owner()
    return int(owner.split(":")[1]) if owner else None


@pytest.mark.parametrize("broker", ["sqlite", "redis"], indirect=True)  # amqp: the SIGTERM test
def test_several_beats_fire_each_run_once_and_one_takes_over_from_a_killed_leader(
        broker: Broker, tasks: ModuleType, env: dict[str, str], tmp_path: Path,
        start_worker: Callable[..., Any]) -> None:
    ledger = tmp_path / "ledger"
    start_worker("-P", "solo", app=APP, url=broker.url, env=env)
    participants = [start_beat(start_worker, broker, env), start_beat(start_worker, broker, env),
                    start_worker("-P", "solo", "-B", app=APP, url=broker.url, env=env)]
    wait_for(lambda: len(ticks(ledger)) >= 4, 20, message="fewer than 4 runs in 20 s")
    pid = leader_pid(tasks)
    [leader] = [p for p in participants if p.proc.pid == pid]
    leader.kill()
    killed_at = time.time()
    wait_for(lambda: len([t for t, *_ in ticks(ledger) if t > killed_at]) >= 3, 20,
             message="no runs after the leader was killed")
    assert leader_pid(tasks) not in (None, pid), "a surviving beat leads"
    for p in participants:
        if p is not leader:
            p.stop()
    runs = ticks(ledger)
    times = [t for t, *_ in runs]
    assert too_close(times) == [], f"a run fired twice: {runs}"
    assert len({task_id for _, task_id, _ in runs}) == len(runs)
    span = times[-1] - times[0]
    assert len(runs) <= span + 2, f"{len(runs)} runs in {span:.1f} s of a 1 s schedule"
    before = max(t for t in times if t <= killed_at)
    after = min(t for t in times if t > killed_at)
    assert after - killed_at <= TAKEOVER, \
        f"the first run after the SIGKILL came {after - killed_at:.1f} s later"
    assert after - before >= 0.5
    stopped = [p for p in participants if p is not leader]
    assert all(p.proc.returncode == 0 for p in stopped)


def celeriac(broker: Broker, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "CELERIAC_BROKER_URL": broker.url,
            "CELERIAC_RESULT_BACKEND": broker.backend, **env}
    full.pop("BEAT_LEDGER", None)
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", "-A", APP, *args],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("broker", ["sqlite", "redis"], indirect=True)
def test_the_schedule_is_edited_from_the_cli_while_a_beat_runs_and_an_outage_fires_once(
        broker: Broker, tasks: ModuleType, env: dict[str, str], tmp_path: Path,
        start_worker: Callable[..., Any]) -> None:
    ledger = tmp_path / "edited"
    no_config = {**env, "BEAT_LEDGER": ""}
    start_worker("-P", "solo", app=APP, url=broker.url, env=no_config)
    beat = start_beat(start_worker, broker, no_config)
    added = celeriac(broker, env, "schedule", "add", "every-second",
                     "tests.integration.beat_tasks.tick", "--every", "1",
                     "--args", f'["{ledger}"]')
    assert added.returncode == 0, added.stderr
    wait_for(lambda: len(ticks(ledger)) >= 2, 20, message="the added entry never fired")

    assert celeriac(broker, env, "schedule", "pause", "every-second").returncode == 0
    paused_at = time.time()
    listed = celeriac(broker, env, "schedule", "list")
    assert "every-second" in listed.stdout and "paused" in listed.stdout, listed.stdout
    time.sleep(2.5)
    assert [t for t, *_ in ticks(ledger) if t > paused_at + 0.5] == [], "fired while paused"

    assert celeriac(broker, env, "schedule", "resume", "every-second").returncode == 0
    count = len(ticks(ledger))
    wait_for(lambda: len(ticks(ledger)) >= count + 2, 20, message="never fired again")

    beat.stop()  # every beat down for 3.5 s: three runs missed
    assert beat.proc.returncode == 0
    time.sleep(3.5)
    count = len(ticks(ledger))
    start_beat(start_worker, broker, no_config)
    wait_for(lambda: len(ticks(ledger)) > count, 20, message="no run after the restart")
    first = ticks(ledger)[count][0]
    time.sleep(0.9)
    assert [t for t, *_ in ticks(ledger)[count:] if t < first + 0.5] == [first], \
        "the missed runs fired once, not once per missed period"

    bad = celeriac(broker, env, "schedule", "pause", "nope")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "celeriac schedule pause: no periodic task named 'nope' (there are: every-second): see "
        "`celeriac schedule list`"]
    assert celeriac(broker, env, "schedule", "remove", "every-second").returncode == 0
    assert "no periodic tasks" in celeriac(broker, env, "schedule", "list").stdout


def test_beat_stops_on_sigterm_and_hands_the_lead_over(
        broker: Broker, tasks: ModuleType, env: dict[str, str],
        start_worker: Callable[..., Any]) -> None:
    first = start_beat(start_worker, broker, env)
    wait_for(lambda: leader_pid(tasks) == first.proc.pid, 10, message="the only beat never led")
    second = start_beat(start_worker, broker, env)
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(10) == 0
    assert "stepped down" in first.log()
    wait_for(lambda: leader_pid(tasks) == second.proc.pid, 5,
             message="the lead was not taken at once after a clean stop")
