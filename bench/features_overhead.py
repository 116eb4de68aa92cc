"""What celeriac's optional features cost the hot path when they are on but not in play
(issue 17, item 7): the same noop drain with nothing extra, with task events (``-E``), with a
rate limit on the task that never binds, and with a batch task and a dispatch main task
registered but never called; then all of them together. The ``-monitored`` variants run with
an event monitor subscribed in the benchmark's process: without one, a worker on Redis finds
that nobody receives its task events and stops encoding them (docs/monitoring.md).

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/features_overhead.py [--broker redis|sqlite] [--pools solo,prefork]
[--variants events,monitored,rate,idle,all,...] [--tasks N] [--rounds N] [--db N] [--callgrind N]``.
Each drain is bench/events_overhead.py's (N noop tasks enqueued, then one worker ``-P <pool>
-c 1`` started, timed from its ready signal to the last result's ``date_done``; the worker's CPU
per task, its main process and its pool children, utime + stime from /proc). The worker learns
its variant from ``CELERIAC_BENCH_FEATURES`` (bench/bench_tasks.py).

This machine's speed can drift by 40% within minutes, more than the 10% to resolve, so each
variant run is bracketed by base runs: a round runs ``base, v1, base, v2, ..., base`` (the
variants' order rotated each round, a base run shared by its two neighbours), and each variant
run gives one pair ratio, its figure over the mean of the base runs right before and after it.
The table gives per variant the median (min-max) of its raw figures and the median (min-max)
of its pair ratios as a change against base, for the rate and for the CPU per task; the base
row's change columns give the ratio of each base run to the one before it: the drift between
neighbouring runs, the noise floor to read the others against. The issue's bound is a loss of
at most 10%. The default run (3,000 tasks, 4 rounds, 7 variants, 2 pools: 114 drains) takes
about 10 minutes on 2 slow cores; on a loaded machine (load average above the core count) even
neighbouring base runs differ by tens of percent, and the base row shows it.

``--callgrind N`` measures instead what does not drift: the user-space instructions per task of
a solo worker under valgrind's callgrind (drains of N and N/6 tasks per variant, their
difference over the tasks between), repeatable to 1-2% at any load. It leaves out the kernel's
side of system calls, and the worker runs 50 times slower, so its event batches are smaller
and its rate blocks cover fewer calls: it overstates per-batch costs (see ``run_callgrind``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/...`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from bench.bench_tasks import FEATURES_ENV  # noqa: E402
from bench.events_overhead import Counter, drain, redis_store, wait_done  # noqa: E402
from bench.run import (  # noqa: E402
    WORKER_CMD,
    WorkerProcess,
    enqueue_noops,
    log,
    machine_summary,
    revision,
)

#: variant -> (features for the worker, whether it runs with -E, whether a monitor listens to its
#: events). Without a monitor, the worker finds nobody gets its task events on Redis and sends one
#: per flush (celeriac/events/dispatcher.py); with one, it encodes and publishes them all.
VARIANTS = {
    "base": ("", False, False),
    "events": ("", True, False),
    "monitored": ("", True, True),
    "rate": ("rate", False, False),
    "idle": ("idle", False, False),
    "all": ("rate,idle", True, False),
    "all-monitored": ("rate,idle", True, True),
    # a registered batch task makes each fetch take up to its flush size more (worker/consumer.py
    # ``_fetch_size``), which lowers the cost per task: "all" without it
    "events-rate-monitored": ("rate", True, True),
}


def run_variant(name: str, broker: str, pool: str, n: int, db: int
                ) -> tuple[float, float, float]:
    features, events, monitor = VARIANTS[name]
    saved = os.environ.get(FEATURES_ENV)
    os.environ[FEATURES_ENV] = features
    try:
        rate, cpu, main_cpu, seen = drain(broker, pool, n, events, db, monitor=monitor)
        if monitor and seen < n:
            raise RuntimeError(f"the monitor saw {seen} task-succeeded events of {n}")
    finally:
        if saved is None:
            os.environ.pop(FEATURES_ENV, None)
        else:
            os.environ[FEATURES_ENV] = saved
    return rate, cpu, main_cpu


def callgrind_instructions(variant: str, n: int, db: int) -> int:
    """User-space instructions a solo worker of ``variant`` runs, from start to shutdown,
    draining ``n`` noops from Redis under callgrind (threads included; the kernel's work in
    system calls is not counted)."""
    features, events, monitor = VARIANTS[variant]
    outdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-callgrind-"))
    command = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={outdir}/out.%p",
               *WORKER_CMD)
    saved = os.environ.get(FEATURES_ENV)
    os.environ[FEATURES_ENV] = features
    try:
        with redis_store(db) as workdir:
            ids = enqueue_noops(n)
            counter = Counter() if monitor else None
            worker = WorkerProcess(workdir, "solo", command=command)
            worker.argv += ["-E"] if events else []
            try:
                with worker:
                    worker.wait_ready(timeout=900)
                    wait_done(ids, worker, timeout=900 + n)
            finally:
                if counter is not None:
                    counter.close()
        total = 0
        for path in outdir.iterdir():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
        if not total:
            raise RuntimeError(f"callgrind wrote no totals in {outdir}")
        return total
    finally:
        if saved is None:
            os.environ.pop(FEATURES_ENV, None)
        else:
            os.environ[FEATURES_ENV] = saved
        shutil.rmtree(outdir, ignore_errors=True)


def run_callgrind(variants: list[str], n: int, db: int) -> None:
    """Instructions per task of each variant on a solo worker: the difference between a drain
    of ``n`` tasks and one of ``n // 6`` (the worker's start and shutdown cancel out), over the
    tasks between. Deterministic to about 1-2% where wall clocks swing 40%, but slowed 50-fold:
    the flusher publishes events in smaller batches and a rate block covers fewer calls than at
    full speed, so per-batch costs weigh more than they do in a real worker."""
    small = max(1, n // 6)
    print(f"\ncallgrind, solo worker, Redis: instructions per task between drains of {small} "
          f"and {n} noops\n| variant | instructions per task | vs base |\n|---|---|---|")
    base = 0.0
    for variant in ["base", *variants]:
        per_task = (callgrind_instructions(variant, n, db)
                    - callgrind_instructions(variant, small, db)) / (n - small)
        base = base or per_task
        log(f"  callgrind {variant}: {per_task:,.0f} instructions per task, "
            f"load {os.getloadavg()[0]:.2f}")
        print(f"| {variant} | {per_task:,.0f} | {(per_task / base - 1) * 100:+.1f}% |",
              flush=True)


def bracketed_sequence(variants: list[str], rounds: int) -> list[str]:
    """The drains in run order: each round's variants (rotated by one per round) each between
    two base runs, a base run shared by its neighbours: ``base, v1, base, v2, base, ...``."""
    sequence = ["base"]
    for round_ in range(rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            sequence += [variant, "base"]
    return sequence


def pair_ratios(sequence: list[str], figures: list[float]) -> dict[str, list[float]]:
    """Each variant run's figure over the mean of the base runs right before and after it; for
    ``base``, each base run's figure over the previous base run's (the neighbours' drift)."""
    ratios: dict[str, list[float]] = {}
    for i, variant in enumerate(sequence):
        if variant == "base":
            if i >= 2:
                ratios.setdefault("base", []).append(figures[i] / figures[i - 2])
            continue
        ratios.setdefault(variant, []).append(
            figures[i] / ((figures[i - 1] + figures[i + 1]) / 2))
    return ratios


def spread(values: list[float], fmt: str) -> str:
    """``median (min-max)`` of ``values`` in format ``fmt``."""
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def change(ratios: list[float]) -> str:
    """The median (min-max) of pair ratios as percentage changes."""
    def percent(ratio: float) -> str:
        return f"{(ratio - 1) * 100:+.0f}%"
    return (f"{percent(statistics.median(ratios))} "
            f"({percent(min(ratios))} to {percent(max(ratios))})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Each round runs every variant once, each between two base runs; a variant's "
               "change against base is the median (min-max) of its pair ratios (its run over "
               "the mean of the base runs around it).")
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="redis")
    parser.add_argument("--pools", default="solo,prefork")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, from %(default)s (base is always run)")
    parser.add_argument("--tasks", type=int, default=3000, help="noop tasks per drain")
    parser.add_argument("--rounds", type=int, default=4,
                        help="pair ratios per variant: each round runs every variant once, "
                             "bracketed by base runs (2 x variants drains a round, plus one)")
    parser.add_argument("--db", type=int, default=5,
                        help="an empty Redis database (flushed after each run)")
    parser.add_argument("--callgrind", type=int, default=0, metavar="N",
                        help="instead of the timed drains: user-space instructions per task "
                             "of a solo worker on Redis under valgrind's callgrind, drains of "
                             "N and N/6 tasks per variant (1200: about 4 minutes a variant)")
    args = parser.parse_args(argv)
    requested = args.variants.split(",")
    unknown = [v for v in requested if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: pick from {', '.join(VARIANTS)}")
    variants = [v for v in dict.fromkeys(requested) if v != "base"]
    if not variants:
        parser.error("name at least one variant besides base")
    if args.callgrind:
        log(f"{machine_summary()}; {revision()}; callgrind, load average "
            f"{os.getloadavg()[0]:.2f}")
        run_callgrind(variants, args.callgrind, args.db)
        return 0
    sequence = bracketed_sequence(variants, args.rounds)
    log(f"{machine_summary()}; {revision()}; broker {args.broker}, {args.tasks} tasks, "
        f"{args.rounds} rounds ({len(sequence)} drains per pool); "
        f"load average {os.getloadavg()[0]:.2f}")
    rows: list[str] = []
    for pool in args.pools.split(","):
        rates: list[float] = []
        cpus: list[float] = []
        for i, variant in enumerate(sequence):
            rate, cpu, main_cpu = run_variant(variant, args.broker, pool, args.tasks, args.db)
            rates.append(rate)
            cpus.append(cpu)
            log(f"  {pool} {i + 1}/{len(sequence)} {variant}: {rate:,.0f} tasks/s, "
                f"{cpu:.0f} us CPU/task ({main_cpu:.0f} in the main process), "
                f"load {os.getloadavg()[0]:.2f}")
        rate_ratios, cpu_ratios = pair_ratios(sequence, rates), pair_ratios(sequence, cpus)
        for variant in ["base", *variants]:
            own_rates = [r for r, v in zip(rates, sequence) if v == variant]
            own_cpus = [c for c, v in zip(cpus, sequence) if v == variant]
            rows.append(f"| {pool} | {variant} | {spread(own_rates, ',.0f')} | "
                        f"{change(rate_ratios[variant])} | {spread(own_cpus, '.0f')} | "
                        f"{change(cpu_ratios[variant])} |")
    print(f"\n{args.broker}: {args.tasks} noop tasks per drain, one worker -c 1, {args.rounds} "
          f"rounds, each variant run between two base runs; load average "
          f"{os.getloadavg()[0]:.2f} at the end. Figures: median (min-max); \"vs base\": median "
          f"(min to max) of the pair ratios (for base: each base run against the one before)")
    print("| pool | variant | tasks/s | vs base | worker CPU µs/task | vs base |\n"
          "|---|---|---|---|---|---|")
    print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
