"""``celeriac demo``: a worker plus a visible workload on the embedded SQLite broker, in one
command; ``--broker URL`` runs the same workload through another broker (RabbitMQ, Redis), the
results staying in the demo's SQLite file.

Layer: cli. Starts a real worker subprocess (prefork pool), sends thousands of tasks in batches,
draws a progress bar from the result store, and prints throughput, failures and retries (from
the retry count each extended result records). Exit code 0 only if every task reached the state
it should have, with the right value, after the retries it should have taken. The temporary folder
(database and worker log) is removed at the end unless ``--keep`` is given or the demo failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from .. import states
from ..utils.urls import redact_url


def _bar(done: int, total: int, width: int = 40) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done}/{total}"


def run_demo(count: int = 5000, concurrency: int | None = None, url: str | None = None,
             keep: bool = False, broker: str | None = None) -> int:
    """``url``: the SQLite file of broker and results (default: a temporary one); ``broker``:
    another broker for the tasks (``amqp://...``, ``redis://...``), results staying in ``url``."""
    tmpdir = None
    if url is None:
        tmpdir = tempfile.mkdtemp(prefix="celeriac-demo-")
        url = f"sqlite:///{os.path.join(tmpdir, 'demo.db')}"
    os.environ["CELERIAC_BROKER_URL"] = broker or url
    os.environ["CELERIAC_RESULT_BACKEND"] = url
    from .demo_tasks import add, app, checked_div, flaky

    concurrency = concurrency or max(2, os.cpu_count() or 1)
    logfile = os.path.join(tmpdir or tempfile.gettempdir(), "demo-worker.log")
    if broker:
        click.echo(f"celeriac demo: broker {redact_url(broker)}, results in {url}")
    else:
        click.echo(f"celeriac demo: broker and results in {url}")
    click.echo(f"starting a worker (prefork pool, concurrency {concurrency}); log: {logfile}")
    with open(logfile, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli.main", "-A", "celeriac.cli.demo_tasks", "worker",
             "-l", "INFO", "-c", str(concurrency), "-n", "demo@%h"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True)
    code = 1
    try:
        code = _workload(app, add, checked_div, flaky, count, worker)
        return code
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        app.close()
        if tmpdir is not None:
            if keep or code != 0:
                why = "as asked (--keep)" if keep else "to look into the failure"
                what = "results" if broker else "broker and results"
                click.echo(f"kept {tmpdir} {why}: demo.db ({what}), demo-worker.log")
            else:
                shutil.rmtree(tmpdir, ignore_errors=True)
                click.echo(f"removed {tmpdir} (pass --keep to keep it)")


def _workload(app, add, checked_div, flaky, count: int, worker: subprocess.Popen) -> int:
    failing_every, retrying_every = 100, 250  # every 250th task (from the 2nd) is `flaky`
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = []
    expected: dict[int, int | None] = {}
    for i in range(count):
        if i % failing_every == 0:
            calls.append((checked_div.name, (i, 0), {}, {}))
            expected_value = None
        elif i % retrying_every == 1:
            calls.append((flaky.name, (i,), {}, {}))
            expected_value = i
        else:
            calls.append((add.name, (i, i), {}, {}))
            expected_value = 2 * i
        expected[i] = expected_value
    deliberate = sum(1 for v in expected.values() if v is None)
    expected_retries = sum(1 for name, *_ in calls if name == flaky.name)  # one retry each
    click.echo(f"sending {count} tasks ({deliberate} fail on purpose, "
               f"{expected_retries} retry once)...")
    start = time.perf_counter()
    ids: list[str] = []
    for chunk in range(0, count, 500):
        ids.extend(app.producer.send_many(calls[chunk:chunk + 500]))
    sent = time.perf_counter()
    click.echo(f"enqueued {count} tasks in {sent - start:.2f}s ({count / (sent - start):,.0f}/s)")
    backend = app.backend
    pending = dict(zip(ids, range(count)))
    metas: dict[str, dict] = {}
    deadline = time.monotonic() + 50
    while pending and time.monotonic() < deadline:
        if worker.poll() is not None:
            click.echo(f"\nthe worker exited early with code {worker.returncode}", err=True)
            return 1
        for task_id, meta in backend.get_many_meta(list(pending)).items():
            if meta["status"] in states.READY_STATES:
                metas[task_id] = meta
                del pending[task_id]
        click.echo("\r" + _bar(count - len(pending), count), nl=False)
        if pending:
            time.sleep(0.1)
    elapsed = time.perf_counter() - start
    click.echo("")
    succeeded = sum(1 for m in metas.values() if m["status"] == states.SUCCESS)
    failed = sum(1 for m in metas.values() if m["status"] == states.FAILURE)
    wrong = [tid for tid, idx in zip(ids, range(count)) if tid in metas and
             metas[tid]["status"] == states.SUCCESS and metas[tid]["result"] != expected[idx]]
    expected_failures = sum(1 for v in expected.values() if v is None)
    # the worker records each task's retry count in its (extended) result
    retries = sum(int(m.get("retries") or 0) for m in metas.values())
    retried = sum(1 for m in metas.values() if m.get("retries"))
    click.echo(f"done: {len(metas)}/{count} tasks in {elapsed:.2f}s "
               f"({len(metas) / elapsed:,.0f} tasks/s end to end)")
    click.echo(f"  succeeded {succeeded}, failed {failed} (expected {expected_failures} deliberate "
               f"failures), wrong results {len(wrong)}, unfinished {len(pending)}")
    click.echo(f"  retries: {retries} (in {retried} task(s); expected {expected_retries})")
    ok = (not pending and not wrong and failed == expected_failures
          and retries == expected_retries)
    click.echo("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1
