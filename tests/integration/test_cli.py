"""``celeriac demo`` end to end: a real worker subprocess, the retries it did, and its temporary
folder removed at the end (or kept with ``--keep``); ``--broker`` runs it on RabbitMQ."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import private_vhost

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the demo with its temporary folder created under ``tmp_path`` (TMPDIR)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", "demo", "-c", "2", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)


def _demo_folders(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("celeriac-demo-*"))


def test_demo_reports_retries_and_removes_its_folder(tmp_path):
    proc = _demo(tmp_path, "-n", "300")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "demo OK" in proc.stdout
    # tasks 1 and 251 of 300 are the flaky ones; each retries once, as its stored result records
    assert re.search(r"^  retries: 2 \(in 2 task\(s\); expected 2\)$", proc.stdout, re.M), output
    removed = re.search(r"^removed (\S+) \(pass --keep to keep it\)$", proc.stdout, re.M)
    assert removed, output
    assert Path(removed.group(1)).parent == tmp_path
    assert _demo_folders(tmp_path) == [], output


def test_demo_keep_keeps_the_folder_and_says_where(tmp_path):
    proc = _demo(tmp_path, "-n", "50", "--keep")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"^  retries: 1 \(in 1 task\(s\); expected 1\)$", proc.stdout, re.M), output
    folders = _demo_folders(tmp_path)
    assert len(folders) == 1, output
    assert f"kept {folders[0]} as asked (--keep)" in proc.stdout
    assert (folders[0] / "demo.db").exists() and (folders[0] / "demo-worker.log").exists()


def test_demo_runs_on_rabbitmq_with_one_flag(tmp_path):
    with private_vhost() as url:
        proc = _demo(tmp_path, "-n", "300", "--broker", url, "--keep")
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output
        assert "demo OK" in proc.stdout
        vhost = url.rsplit("/", 1)[1]
        folders = _demo_folders(tmp_path)
        assert len(folders) == 1, output
        results = f"sqlite:///{folders[0] / 'demo.db'}"
        assert f"broker amqp://guest:**@127.0.0.1:5672/{vhost}, results in {results}" \
            in proc.stdout, output
        assert re.search(r"^  retries: 2 \(in 2 task\(s\); expected 2\)$", proc.stdout,
                         re.M), output
        # the tasks went through RabbitMQ: the worker consumed the vhost's queue and the
        # SQLite file holds results only
        assert "amqp://guest:**@127.0.0.1:5672/" in (folders[0] / "demo-worker.log").read_text()
        with contextlib.closing(sqlite3.connect(folders[0] / "demo.db")) as db:
            tables = {name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "celeriac_result" in tables and "celeriac_queue" not in tables, tables
        assert f"kept {folders[0]} as asked (--keep): demo.db (results)" in proc.stdout
