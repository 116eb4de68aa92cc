"""What celeriac's optional features cost the hot path when they are on but not in play
(issue 17, item 7): the same noop drain with nothing extra, with task events (``-E``), with a
rate limit on the task that never binds, and with a batch task and a dispatch main task
registered but never called; then all of them together.

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/features_overhead.py [--broker redis|sqlite] [--pools solo,prefork]
[--variants base,events,rate,idle,all] [--tasks N] [--rounds N] [--db N]``. Each drain is
bench/events_overhead.py's (N noop tasks enqueued, then one worker ``-P <pool> -c 1`` started,
timed from its ready signal to the last result's ``date_done``; the worker's CPU per task from
/proc); the variants alternate within each round, so a machine that slows down weighs on all of
them alike. The worker learns its variant from ``CELERIAC_BENCH_FEATURES`` (bench/bench_tasks.py).
The table gives each variant's median rate and CPU per task and their change against ``base``;
the issue's bound is a loss of at most 10%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/...`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from bench.bench_tasks import FEATURES_ENV  # noqa: E402
from bench.events_overhead import drain  # noqa: E402
from bench.run import log, machine_summary, revision  # noqa: E402

#: variant -> (features for the worker, whether it runs with -E)
VARIANTS = {
    "base": ("", False),
    "events": ("", True),
    "rate": ("rate", False),
    "idle": ("idle", False),
    "all": ("rate,idle", True),
}


def run_variant(name: str, broker: str, pool: str, n: int, db: int
                ) -> tuple[float, float, float]:
    features, events = VARIANTS[name]
    saved = os.environ.get(FEATURES_ENV)
    os.environ[FEATURES_ENV] = features
    try:
        rate, cpu, main_cpu, _ = drain(broker, pool, n, events, db, monitor=False)
    finally:
        if saved is None:
            os.environ.pop(FEATURES_ENV, None)
        else:
            os.environ[FEATURES_ENV] = saved
    return rate, cpu, main_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="redis")
    parser.add_argument("--pools", default="solo,prefork")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", type=int, default=5,
                        help="an empty Redis database (flushed after each run)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: pick from {', '.join(VARIANTS)}")
    if "base" not in variants:
        variants.insert(0, "base")
    log(f"{machine_summary()}; {revision()}; broker {args.broker}, {args.tasks} tasks, "
        f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"\n{args.broker}: {args.tasks} noop tasks, one worker -c 1, median (min-max) of "
          f"{args.rounds} rounds, variants interleaved within each round")
    print("| pool | variant | tasks/s | vs base | worker CPU µs/task | vs base |\n"
          "|---|---|---|---|---|---|")
    for pool in args.pools.split(","):
        rates: dict[str, list[float]] = {v: [] for v in variants}
        cpus: dict[str, list[float]] = {v: [] for v in variants}
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
            for variant in order:
                rate, cpu, main_cpu = run_variant(variant, args.broker, pool, args.tasks, args.db)
                rates[variant].append(rate)
                cpus[variant].append(cpu)
                log(f"  {pool} round {round_ + 1} {variant}: {rate:,.0f} tasks/s, "
                    f"{cpu:.0f} us CPU/task ({main_cpu:.0f} in the main process), "
                    f"load {os.getloadavg()[0]:.2f}")
        base_rate, base_cpu = statistics.median(rates["base"]), statistics.median(cpus["base"])
        for variant in variants:
            rate, cpu = statistics.median(rates[variant]), statistics.median(cpus[variant])
            print(f"| {pool} | {variant} | {rate:,.0f} ({min(rates[variant]):,.0f}-"
                  f"{max(rates[variant]):,.0f}) | {(rate - base_rate) / base_rate * 100:+.0f}% | "
                  f"{cpu:.0f} ({min(cpus[variant]):.0f}-{max(cpus[variant]):.0f}) | "
                  f"{(cpu - base_cpu) / base_cpu * 100:+.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
