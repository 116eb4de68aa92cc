"""The default worker (prefork, a child per CPU) against one solo process, with each process's
share of the work: CPU and voluntary context switches per task for the parent and each child,
and Redis's own CPU per task (issue 17, item 1).

Layer: bench (outside the package; pytest never runs it). Run from anywhere as ``python
bench/default_worker.py [--tasks N] [--rounds N] [--db N] [--trees A,B] [--setups
default,solo,solo-x2] [--broker redis|sqlite]``. Each drain enqueues N noop tasks on Redis
database ``--db`` (flushed first; with ``--broker sqlite``, in a fresh SQLite file that is both
broker and result store), starts the worker(s), and times from the last worker's ready signal to
the moment every result is stored (polled). ``--trees`` names source trees to compare, each a
checkout of this repository (``git worktree add /tmp/base <rev>`` makes one); a worker runs with
its tree first on ``PYTHONPATH``, so one run compares revisions side by side, the trees and
setups alternating within each round so a change in the machine's load weighs on all alike.
Setups: ``default`` (``worker`` with no options), ``solo`` (``-P solo -c 1``), ``solo-x2`` (two
independent solo workers on the same queue: what any design that has each process fetch for
itself could reach on this machine, Redis included).

Context switches are read from /proc (``voluntary_ctxt_switches`` of every thread): each one is
a thread that blocked, on a lock, a pipe or a socket; a hand-over between two threads costs
one. They move less with the machine's load than time does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SETUPS = {"default": [[]], "solo": [["-P", "solo", "-c", "1"]],
          "solo-x2": [["-P", "solo", "-c", "1"], ["-P", "solo", "-c", "1"]]}


@dataclass
class Drain:
    rate: float
    #: per process of the first worker, in start order (parent first): CPU µs per task
    cpu: list[float] = field(default_factory=list)
    #: the same processes' voluntary context switches per task
    switches: list[float] = field(default_factory=list)
    redis_cpu: float = 0.0


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_switches(pid: int) -> int:
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drain(tree: Path, setup: str, tasks: int, db: int, broker: str = "redis") -> Drain:
    scratch = Path(tempfile.mkdtemp(prefix="bench-default-"))
    on_sqlite = broker == "sqlite"
    url = (f"sqlite:///{scratch / 'bench.db'}" if on_sqlite
           else f"redis://127.0.0.1:6379/{db}")
    client = redis.Redis(db=db)
    if not on_sqlite:
        client.flushdb()

    def stored() -> int:
        if not on_sqlite:
            return len(client.keys("celery-task-meta-*"))
        with sqlite3.connect(scratch / "bench.db", timeout=30) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM celeriac_result").fetchone()[0])
            except sqlite3.OperationalError:  # the table is not made yet
                return 0

    env = dict(os.environ, PYTHONPATH=str(tree), CELERIAC_BROKER_URL=url,
               CELERIAC_RESULT_BACKEND=url)
    subprocess.run([sys.executable, "-c", (
        "from bench.bench_tasks import noop\n"
        "from celeriac import group\n"
        f"for _ in range(0, {tasks}, 1000): group(noop.s() for _ in range(1000)).apply_async()\n"
    )], env=env, cwd=tree, check=True)
    workers: list[subprocess.Popen] = []
    ready_files: list[Path] = []
    try:
        for index, args in enumerate(SETUPS[setup]):
            ready = scratch / f"ready{index}"
            ready_files.append(ready)
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "celeriac.cli.main", "-A", "bench.bench_tasks", "worker",
                 "-l", "warning", "-n", f"bench{index}@%h", *args],
                env=dict(env, CELERIAC_BENCH_READY_FILE=str(ready)), cwd=tree,
                start_new_session=True, stdout=subprocess.DEVNULL,
                stderr=open(scratch / f"worker{index}.log", "w")))
        deadline = time.monotonic() + 60
        while not all(f.exists() and f.read_text().strip() for f in ready_files):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready in 60 s; logs in {scratch}")
            time.sleep(0.01)
        started = max(float(f.read_text()) for f in ready_files)
        redis_before = 0.0 if on_sqlite else redis_cpu(client)
        pids = session_pids(workers[0].pid)
        cpu_before = {pid: proc_cpu(pid) for pid in pids}
        switches_before = {pid: proc_switches(pid) for pid in pids}
        while stored() < tasks:
            if time.monotonic() > deadline + 600:
                raise RuntimeError(f"drain did not finish; logs in {scratch}")
            time.sleep(0.05)
        ended = time.time()
        result = Drain(tasks / (ended - started),
                       [1e6 * (proc_cpu(pid) - cpu_before[pid]) / tasks for pid in pids],
                       [(proc_switches(pid) - switches_before[pid]) / tasks for pid in pids],
                       0.0 if on_sqlite else 1e6 * (redis_cpu(client) - redis_before) / tasks)
        return result
    finally:
        for worker in workers:
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            worker.wait()
        if on_sqlite:
            for leftover in scratch.glob("bench.db*"):
                leftover.unlink()
        else:
            client.flushdb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", type=int, default=11, help="Redis database (flushed)")
    parser.add_argument("--trees", default=str(ROOT),
                        help="comma-separated source trees to compare (default: this one)")
    parser.add_argument("--setups", default="default,solo,solo-x2")
    parser.add_argument("--broker", choices=("redis", "sqlite"), default="redis",
                        help="sqlite: a fresh file per drain, broker and result store")
    args = parser.parse_args(argv)
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    setups = args.setups.split(",")
    runs: dict[tuple[Path, str], list[Drain]] = {}
    for round_no in range(args.rounds):
        load = os.getloadavg()[0]
        for setup in setups:
            for tree in trees:
                d = drain(tree, setup, args.tasks, args.db, args.broker)
                runs.setdefault((tree, setup), []).append(d)
                print(f"round {round_no + 1} load {load:.1f} {tree} {setup}: {d.rate:,.0f}/s "
                      f"cpu/task {' '.join(f'{c:.0f}' for c in d.cpu)} us, switches/task "
                      f"{' '.join(f'{s:.1f}' for s in d.switches)}, redis {d.redis_cpu:.0f} us",
                      flush=True)
    print(f"\n{args.tasks} noop tasks, {args.rounds} rounds; median (min-max)")
    print("| tree | setup | tasks/s | CPU µs/task (parent, children) | switches/task | Redis µs |")
    print("|---|---|---|---|---|---|")
    for (tree, setup), ds in runs.items():
        rates = [d.rate for d in ds]
        cpu = [statistics.median(c) for c in zip(*(d.cpu for d in ds))]
        sw = [statistics.median(s) for s in zip(*(d.switches for d in ds))]
        print(f"| {tree.name} | {setup} | {statistics.median(rates):,.0f} "
              f"({min(rates):,.0f}-{max(rates):,.0f}) | {', '.join(f'{c:.0f}' for c in cpu)} | "
              f"{', '.join(f'{s:.1f}' for s in sw)} | "
              f"{statistics.median(d.redis_cpu for d in ds):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
