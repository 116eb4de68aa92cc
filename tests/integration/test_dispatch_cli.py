"""``celeriac dispatch progress`` end to end: the real command in a subprocess follows a real
dispatch run by a worker subprocess on the embedded SQLite broker, draws its progress while it
runs, and ends with the main task's final state (exit 0 on SUCCESS, 1 otherwise)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APP = "tests.integration.dispatch_cli_tasks"
#: the longest the command may take once the dispatch can end (it ends in well under a second)
TIMEOUT = 30.0


class Progress:
    """``celeriac -A APP dispatch progress <id>`` running, its output collected line by line."""

    def __init__(self, task_id: str, url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env.update(CELERIAC_BROKER_URL=url, CELERIAC_RESULT_BACKEND=url, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "dispatch", "progress",
             task_id, "--interval", "0.05"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def finish(self) -> int:
        try:
            code = self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return code


@pytest.fixture
def cli_tasks(sqlite_url: str, task_module: Callable[..., ModuleType]) -> ModuleType:
    return task_module("dispatch_cli_tasks", sqlite_url)


def test_progress_draws_the_bar_while_the_dispatch_runs_then_its_success(
        cli_tasks: ModuleType, start_worker, sqlite_url: str, tmp_path: Path) -> None:
    worker = start_worker("-P", "threads", "-c", "4", app=APP)
    gate = tmp_path / "gate"
    result = cli_tasks.squares.delay(4, str(gate))
    watching = Progress(result.id, sqlite_url)
    try:
        # two of the four subtasks are done and the other two wait for the gate: the bar shows
        # one or two of four, drawn from the main task's PROGRESS meta
        bar = re.compile(r"^\[[#-]+\] [12]/4 +(25|50)\.0%  \S+ left$")
        wait_for(lambda: any(bar.match(line) for line in watching.lines), TIMEOUT,
                 message=lambda: f"no progress bar drawn:\n{watching.output()}\n"
                                 f"worker log:\n{worker.log()}")
        assert watching.proc.poll() is None, "the command ended before the dispatch did"
    finally:
        gate.touch()
        code = watching.finish()
    assert (code, watching.lines[-1]) == (0, "SUCCESS: 4"), watching.output()
    assert result.get(timeout=TIMEOUT) == 4


def test_progress_ends_with_the_failure_and_exit_status_1(
        cli_tasks: ModuleType, start_worker, sqlite_url: str) -> None:
    start_worker("-P", "threads", "-c", "2", app=APP)
    result = cli_tasks.broken.delay()
    watching = Progress(result.id, sqlite_url)
    code = watching.finish()
    assert (code, watching.lines[-1]) == (
        1, "FAILURE: RuntimeError('the generator broke')"), watching.output()
