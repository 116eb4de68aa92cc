"""Tasks and signal receivers for the worker fault tests; every setting comes from the environment.

The worker reads ``FAULT_VT`` (lease seconds), ``FAULT_ACKS_LATE`` and ``FAULT_REJECT_ON_LOST``
(``"1"`` to enable) at import, so each test picks its reliability settings per worker process.
Tasks keep an independent ledger: one appended line per event, in a file the test owns, naming
the worker by ``FAULT_NAME`` (an environment variable every pool's workers inherit).
"""

from __future__ import annotations

import os
import time

from celeriac import Celery, signals


def _flag(name: str) -> bool:
    return os.environ.get(name) == "1"


def _settings() -> dict:
    settings: dict = {"task_acks_late": _flag("FAULT_ACKS_LATE"),
                      "task_reject_on_worker_lost": _flag("FAULT_REJECT_ON_LOST")}
    if os.environ.get("FAULT_VT"):
        settings["broker_transport_options"] = {"visibility_timeout": float(os.environ["FAULT_VT"])}
    return settings


app = Celery("tests.integration.fault_tasks", **_settings())


def _append(path: str, line: str) -> None:
    """One ``write`` on an O_APPEND file: lines from many processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _attempt(path: str, n: int) -> int:
    """This run's attempt number for ``n``: 1 + the runs the ledger already shows."""
    try:
        with open(path) as fh:
            return 1 + sum(1 for line in fh if line.split()[:2] == ["start", str(n)])
    except FileNotFoundError:
        return 1


def _work(path: str, n: int, seconds: float, first_only: bool) -> int:
    attempt = _attempt(path, n)
    worker = os.environ.get("FAULT_NAME") or "-"
    _append(path, f"start {n} {os.getpid()} {worker} {attempt}")
    if seconds and (attempt == 1 or not first_only):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # small steps, so any pool can interrupt it
            time.sleep(0.01)
    _append(path, f"end {n} {os.getpid()} {worker} {attempt}")
    return n


@app.task
def work(path: str, n: int, seconds: float = 0.0, first_only: bool = False) -> int:
    """Ledger ``start``, sleep ``seconds`` (on attempt 1 only if ``first_only``), ledger ``end``."""
    return _work(path, n, seconds, first_only)


@app.task(acks_late=True)
def late_work(path: str, n: int, seconds: float = 0.0) -> int:
    """``work`` with the task option ``acks_late=True``, whatever the worker's settings say."""
    return _work(path, n, seconds, False)


def _record_shutting_down(sender=None, sig=None, how=None, exitcode=None, **kwargs) -> None:
    path = os.environ.get("FAULT_SIGNAL_LOG")
    if path:
        _append(path, f"worker_shutting_down {how} {sig} {os.getpid()}")


def _record_shutdown(sender=None, **kwargs) -> None:
    path = os.environ.get("FAULT_SIGNAL_LOG")
    if path:
        _append(path, f"worker_shutdown - - {os.getpid()}")


signals.worker_shutting_down.connect(_record_shutting_down)
signals.worker_shutdown.connect(_record_shutdown)
