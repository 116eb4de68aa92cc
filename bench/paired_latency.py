"""Round-trip latency of two celeriac trees side by side, both workers alive at once.

Layer: bench (outside the package; pytest runs only its pure logic). Run from anywhere as
``python bench/paired_latency.py OTHER_TREE [--pool prefork] [--rounds 4] [--trips 2000]
[--dbs 12,13]``, where OTHER_TREE is a checkout to compare this one with (for a commit:
``git worktree add /tmp/before <commit>``).

On this project's VMs the round-trip p50 of the same code moved by 20% between runs minutes
apart, more than most changes to resolve. Here each tree's worker (``-P <pool>``) runs on its
own Redis database the whole time, and one client sends ``noop`` round trips to them in turn,
in blocks of ten, so both see the same machine at the same moments. Each round reports both
p50s; the summary is the median over rounds of the difference, and in how many rounds the
other tree was slower. The client is this tree's: only the workers differ.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.events_overhead import redis_store  # noqa: E402
from bench.run import WorkerProcess, log, machine_summary, percentile, revision  # noqa: E402

#: round trips sent to one tree before the other's turn
BLOCK = 10
NOOP = "bench.bench_tasks.noop"


def turns(trips: int, block: int = BLOCK) -> list[int]:
    """Which tree (0: this one, 1: the other) each of ``trips`` round trips goes to: blocks of
    ``block``, alternating, this tree first."""
    return [(i // block) % 2 for i in range(trips)]


def summary(rounds: Sequence[tuple[float, float]]) -> str:
    """One line from the (this tree's p50, the other's p50) of each round, in ms."""
    differences = [other - this for this, other in rounds]
    slower = sum(1 for d in differences if d > 0)
    return (f"median p50 {statistics.median(r[0] for r in rounds):.3f} ms here, "
            f"{statistics.median(r[1] for r in rounds):.3f} ms in the other tree; "
            f"the other minus this, median over rounds {statistics.median(differences):+.3f} ms "
            f"({min(differences):+.3f} to {max(differences):+.3f}); the other slower in "
            f"{slower} of {len(rounds)} rounds")


@contextlib.contextmanager
def worker_on(tree: Path, db: int, pool: str) -> Iterator[Any]:
    """``tree``'s worker on Redis database ``db`` (refused unless empty; flushed after), and a
    client app of this tree for it."""
    from celeriac import Celery

    with redis_store(db, option="--dbs") as workdir:
        url = f"redis://127.0.0.1:6379/{db}"
        app = Celery("paired-latency", broker=url, backend=url, set_as_current=False)
        try:
            with WorkerProcess(workdir, pool, concurrency=2 if pool == "prefork" else 1,
                               root=tree) as worker:
                worker.wait_ready(60)
                yield app
        finally:
            app.close()


def run(other: Path, pool: str, rounds: int, trips: int,
        dbs: tuple[int, int]) -> list[tuple[float, float]]:
    results: list[tuple[float, float]] = []
    with worker_on(ROOT, dbs[0], pool) as here, worker_on(other, dbs[1], pool) as there:
        apps = (here, there)
        for app in apps:  # warm both: connections, imports, the first fetches
            for _ in range(200):
                app.send_task(NOOP).get(timeout=30)
        for number in range(rounds):
            times: tuple[list[float], list[float]] = ([], [])
            for tree in turns(trips):
                started = time.perf_counter()
                apps[tree].send_task(NOOP).get(timeout=30)
                times[tree].append(time.perf_counter() - started)
            this, that = (percentile(sorted(t), 50) * 1000 for t in times)
            log(f"  round {number + 1}: p50 {this:.3f} ms here, {that:.3f} ms in the other "
                f"tree (p90 {percentile(sorted(times[0]), 90) * 1000:.3f} / "
                f"{percentile(sorted(times[1]), 90) * 1000:.3f})")
            results.append((this, that))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="the other celeriac checkout")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trips", type=int, default=2000, help="round trips a round, both "
                        "trees together")
    parser.add_argument("--dbs", default="12,13", help="two empty databases of the Redis "
                        "server on 127.0.0.1:6379")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "celeriac" / "__init__.py").exists():
        raise SystemExit(f"{other} is not a celeriac checkout")
    first, second = (int(d) for d in args.dbs.split(","))
    log(f"{machine_summary()}; this tree {revision()} against {other}; -P {args.pool}")
    results = run(other, args.pool, args.rounds, args.trips, (first, second))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
