"""What task events (``worker -E``) cost a worker: the same drain with and without ``-E``, and
the CPU the events take per task in the worker's process, measured without a broker.

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/events_overhead.py [--broker sqlite|redis] [--pools solo,prefork] [--tasks N]
[--rounds N] [--db N]``. For each pool, N noop tasks are enqueued, then one worker
(``-P <pool> -c 1``) drains them, timed from its ready signal to the last result's
``date_done`` (as bench/run.py's drain). Runs without and with ``-E`` alternate, ``--rounds``
times each, so a machine that slows down during the run weighs on both sides alike; the table
gives each side's median rate and the worker's CPU time per task (its process and its pool
children, from /proc, between ready and the last result). Both move with other load on the
machine (the CPU too: a worker on Redis polls its socket briefly for each reply, longer when
Redis answers slowly), so run it on a quiet machine and read several rounds.

During the ``-E`` runs an ``EventReceiver`` in this process is subscribed (a monitor watching)
and counts the ``task-succeeded`` events, so a run that sent none is caught; ``--no-monitor``
leaves it out, to see the worker's own cost (on a small machine the monitor's decoding competes
with the worker for the CPUs). SQLite: a fresh file per run; Redis: database ``--db`` (default
0), which must be empty at the start of each run and is flushed after it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/...`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from bench.bench_tasks import app, noop  # noqa: E402
from bench.run import (  # noqa: E402
    WorkerProcess,
    done_times,
    enqueue_noops,
    fresh_store,
    log,
    machine_summary,
    revision,
    wait_for_results,
)
from celeriac.events import EventReceiver  # noqa: E402


@contextmanager
def redis_store(db: int, option: str = "--db") -> Iterator[Path]:
    """The bench app on Redis database ``db`` (flushed), and a temporary folder for the log.
    ``option``: the command-line option a user picks another database with."""
    import shutil
    import tempfile

    import redis

    url = f"redis://127.0.0.1:6379/{db}"
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-events-"))
    saved = {k: os.environ.get(k) for k in ("CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND")}
    os.environ["CELERIAC_BROKER_URL"] = os.environ["CELERIAC_RESULT_BACKEND"] = url
    client = redis.Redis.from_url(url)
    if client.dbsize():
        raise SystemExit(f"Redis database {db} is not empty: someone else may be using it; "
                         f"pick an empty one with {option}")
    app.close()
    try:
        yield workdir
    finally:
        app.close()
        client.flushdb()
        client.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(workdir, ignore_errors=True)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu(pgid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by the live processes of process group
    ``pgid`` (the worker and its pool children), and by its leader alone (the worker's main
    process: on prefork, which side pays), from /proc (Linux)."""
    total = main = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # pgrp
            used = int(fields[11]) + int(fields[12])  # utime, stime
            total += used
            if entry.name == str(pgid):
                main = used
    return total / CLOCK_TICKS, main / CLOCK_TICKS


def wait_done(ids: list[str], worker: WorkerProcess, timeout: float) -> None:
    """Until every task has a result (polling the last ones first: they finish last)."""
    deadline = time.monotonic() + timeout
    tail = ids[-20:]
    while True:
        metas = app.backend.get_many_meta(tail)
        if all(m.get("status") == "SUCCESS" for m in metas.values()):
            if tail is ids:
                return
            tail = ids
            continue
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the drain did not finish within {timeout:.0f}s")
        time.sleep(0.05)


class Counter:
    """An event monitor subscribed during a run: counts each event type."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.receiver = EventReceiver(app, {"*": self._count}).subscribe()
        self.thread = threading.Thread(target=self.receiver.capture, daemon=True)
        self.thread.start()

    def _count(self, event: dict[str, Any]) -> None:
        self.counts[event["type"]] = self.counts.get(event["type"], 0) + 1

    def close(self) -> dict[str, int]:
        self.receiver.stop()
        self.thread.join(5)
        self.receiver.close()
        return self.counts


def drain(broker: str, pool: str, n: int, events: bool, db: int,
          monitor: bool = True) -> tuple[float, float, float, int]:
    """(tasks/s, the worker's CPU microseconds per task, the part of it its main process used,
    task-succeeded events seen) of one drain. The CPU is the worker's and its pool children's
    from ready to the last result, which other load on the machine does not inflate the way it
    slows the rate."""
    store = fresh_store() if broker == "sqlite" else redis_store(db)
    with store as workdir:
        ids = enqueue_noops(n)
        counter = Counter() if events and monitor else None
        worker = WorkerProcess(workdir, pool)
        worker.argv += ["-E"] if events else []
        try:
            with worker:
                ready = worker.wait_ready()
                assert worker.proc is not None
                cpu_at_ready, main_at_ready = group_cpu(worker.proc.pid)
                if broker == "sqlite":
                    wait_for_results(workdir / "bench.db", n, worker, timeout=60 + n / 50)
                else:
                    wait_done(ids, worker, timeout=60 + n / 50)
                cpu, main = group_cpu(worker.proc.pid)
                cpu, main = cpu - cpu_at_ready, main - main_at_ready
            finished = max(done_times(ids))
        finally:
            counts = counter.close() if counter is not None else {}
    return (n / (finished - ready), cpu / n * 1e6, main / n * 1e6,
            counts.get("task-succeeded", 0))


class _NullBroadcast:
    """A broker that takes broadcasts and drops them (what ``in_process`` measures excludes the
    broker's own cost)."""

    def broadcast(self, exchange: str, message: Any, routing_key: str = "") -> None:
        pass

    def subscribe(self, exchange: str, binding: str = "#") -> Any:
        raise NotImplementedError


def in_process(n: int = 20000) -> tuple[float, float]:
    """The CPU microseconds events cost per task in the worker's process, without a broker:
    (on the task's path: the three ``TaskEvents`` points, received, started and succeeded; in
    the flusher thread: building and encoding the ``task.multi`` messages)."""
    from celeriac.protocol import v2
    from celeriac.transport.base import Delivery
    from celeriac.worker.events import TaskEvents
    from celeriac.worker.job import Job
    from celeriac.worker.outcome import Ending, Outcome

    class Counts:
        active = processed = 0

    events = TaskEvents(app, "bench@host", task_events=True, heartbeat=False)
    events.on_worker_start(Counts())  # type: ignore[arg-type]
    dispatcher = events.dispatcher
    assert dispatcher is not None
    dispatcher._transport = _NullBroadcast()  # type: ignore[assignment]
    dispatcher.flush_interval = 3600.0  # only the flush below publishes
    dispatcher.buffer_limit = n * 3 + 1
    message = v2.encode_task(name=noop.name, task_id=str(uuid.uuid4()), args=[2, 2])
    job = Job(1, Delivery(message, "celery", None), noop, False, False)
    outcome = Outcome(job.task_id, "SUCCESS", Ending.SUCCEEDED, 0.0012, retval_repr="4")
    started = time.process_time()
    for _ in range(n):
        events.on_received(job)
        events.on_started(job)
        events.after_outcome(job, outcome)
    path = time.process_time() - started
    started = time.process_time()
    dispatcher.flush()
    flusher = time.process_time() - started
    dispatcher.close()
    return path / n * 1e6, flusher / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--pools", default="solo,prefork")
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-monitor", action="store_true",
                        help="no receiver during the -E runs: the worker's own cost alone "
                             "(the events sent are then not counted)")
    parser.add_argument("--db", type=int, default=0,
                        help="an empty Redis database (flushed after each run)")
    args = parser.parse_args(argv)
    log(f"{machine_summary()}; {revision()}; broker {args.broker}, {args.tasks} tasks, "
        f"{args.rounds} rounds, {'no monitor' if args.no_monitor else 'a monitor subscribed'}")
    path, flusher = in_process()
    print(f"in the worker's process, without a broker: {path:.1f} us of CPU per task on its "
          f"path (3 events), {flusher:.1f} us in the flusher thread")
    rows = []
    for pool in args.pools.split(","):
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for events in (False, True):
                rate, cpu, main, seen = drain(args.broker, pool, args.tasks, events, args.db,
                                              monitor=not args.no_monitor)
                rates[events].append(rate)
                cpus[events].append(cpu)
                note = f", {seen} task-succeeded events seen" if events else ""
                log(f"  {pool} round {round_ + 1} {'-E' if events else 'no -E'}: "
                    f"{rate:,.0f} tasks/s, {cpu:.0f} us CPU/task ({main:.0f} in the main "
                    f"process){note}")
                if events and not args.no_monitor and seen < args.tasks:
                    log(f"  WARNING: only {seen} of {args.tasks} task-succeeded events seen")
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
        rows.append((pool, off, on, cpu_off, cpu_on))
    print(f"\n{args.broker}: {args.tasks} noop tasks, one worker -c 1, median of "
          f"{args.rounds} rounds each")
    print("| pool | tasks/s without -E | with -E | worker CPU per task without -E | with -E |"
          " CPU added |\n|---|---|---|---|---|---|")
    for pool, off, on, cpu_off, cpu_on in rows:
        print(f"| {pool} | {off:,.0f} | {on:,.0f} ({(on - off) / off * 100:+.0f}%) | "
              f"{cpu_off:.0f} us | {cpu_on:.0f} us | {cpu_on - cpu_off:+.0f} us "
              f"({(cpu_on - cpu_off) / cpu_off * 100:+.0f}%) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
