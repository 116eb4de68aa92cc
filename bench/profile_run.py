"""Profile where the time goes: a solo worker draining noop tasks, or a producer's ``delay()`` loop.

Layer: bench. ``python bench/profile_run.py worker [--tasks N]`` pre-enqueues N noop tasks, runs
one ``-P solo`` worker under ``bench.threadprof`` (cProfile in every thread) until all results
are stored, and prints the top functions by cumulative and by own time, with calls per task.
``python bench/profile_run.py producer [--tasks N]`` does the same for N ``noop.delay()`` calls.
cProfile's per-call overhead inflates small Python functions; read the ratios, not the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_tasks import noop
from bench.run import (
    WorkerProcess,
    enqueue_noops,
    fresh_store,
    log,
    machine_summary,
    wait_for_results,
)


def profile_worker(tasks: int, out: Path, pool: str) -> pstats.Stats:
    command = (sys.executable, "-m", "bench.threadprof", str(out), "celeriac.cli.main")
    with fresh_store() as workdir:
        enqueue_noops(tasks)
        with WorkerProcess(workdir, pool, command=command) as worker:
            worker.wait_ready(60)
            start = time.perf_counter()
            wait_for_results(workdir / "bench.db", tasks, worker, timeout=120 + tasks / 20)
            log(f"drained {tasks} tasks in {time.perf_counter() - start:.2f} s under the profiler")
            code = worker.stop(timeout=60)
        if code != 0 or not out.exists():
            raise RuntimeError(f"the profiled worker exited with {code}; its log ends:\n"
                               f"{worker.log_tail()}")
    return pstats.Stats(str(out))


def profile_producer(tasks: int, out: Path) -> pstats.Stats:
    with fresh_store():
        noop.delay()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(tasks):
            noop.delay()
        profiler.disable()
    profiler.dump_stats(str(out))
    return pstats.Stats(str(out))


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":  # a built-in: cProfile names it "<built-in method ...>"
        return name
    parts = Path(filename).parts
    short = ("/".join(parts[parts.index("celeriac"):]) if "celeriac" in parts
             else Path(filename).name)
    return f"{short}:{line}({name})"


def _ours(func: tuple[str, int, str]) -> bool:
    return "celeriac" in Path(func[0]).parts


def top_table(stats: pstats.Stats, key: str, tasks: int, limit: int) -> str:
    """The ``limit`` costliest functions by ``key`` ("cumulative" or "tottime"), per task too.

    By cumulative time only celeriac's own functions are listed: otherwise thread start-up,
    click and runpy frames, whose totals are mostly idle waiting, fill the table. A
    ``@contextmanager`` generator (``_write``, ``_transaction``) counts two calls per use.
    """
    rows = []
    for func, (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if key == "cumulative" and not _ours(func):
            continue
        rows.append((cumtime if key == "cumulative" else tottime, func, ncalls, tottime, cumtime))
    rows.sort(key=lambda r: r[0], reverse=True)
    lines = [(f"{'calls':>9} {'calls/task':>10} {'own s':>8} {'own us/task':>11} "
              f"{'cum s':>8} {'cum us/task':>11}  function")]
    for _, func, ncalls, tottime, cumtime in rows[:limit]:
        lines.append(f"{ncalls:>9} {ncalls / tasks:>10.2f} {tottime:>8.3f} "
                     f"{tottime / tasks * 1e6:>11.1f} {cumtime:>8.3f} "
                     f"{cumtime / tasks * 1e6:>11.1f}"
                     f"  {_name(func)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("worker", "producer"))
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks to drain or send (default 20000 worker, 5000 producer)")
    parser.add_argument("--pool", default="solo", choices=("solo", "threads", "prefork"),
                        help="worker pool (prefork: only the main process is profiled)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to keep the .prof file (default /tmp/<target>.prof)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    tasks = args.tasks or (20000 if args.target == "worker" else 5000)
    out = (args.out or Path(f"/tmp/{args.target}.prof")).resolve()
    out.unlink(missing_ok=True)
    log(f"profiling the {args.target} on {machine_summary()}")
    stats = (profile_worker(tasks, out, args.pool) if args.target == "worker"
             else profile_producer(tasks, out))
    for key in ("cumulative", "tottime"):
        what = ("cumulative time (celeriac functions)" if key == "cumulative" else
                "own time (lock acquire and poll are mostly threads waiting, not working)")
        print(f"\n{args.target}, {tasks} noop tasks: top {args.top} by {what}")
        print(top_table(stats, key, tasks, args.top))
    print(f"\nfull profile: {out} (python -m pstats {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
