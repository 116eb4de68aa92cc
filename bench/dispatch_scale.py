"""Dispatch at scale (issue 13, item 8): one main task fanning out N no-op subtasks, against
Celery 5 sending the same N subtasks as one ``group``, on the same Redis, in the same run.

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/dispatch_scale.py [--sizes 10000,100000,1000000] [--sqlite 100000]
[--celery-sizes 10000,100000] [--rounds N] [--timeout S]``.

For every measure a fresh worker starts (``-P prefork -c 2``, its own process group, killed at
the end even on error) and waits idle; then a client subprocess sends the work and waits for
its result, while the runner samples the worker tree's resident size (the main process and its
pool children, from /proc) every 0.5 s. celeriac's client sends one message, ``fan_out.delay(N)``;
the main task yields ``noop, (i,)`` for i in 0..N-1, and a ``subtask_success`` handler in the
worker counts what it is handed (count, sum of i, sum of i squared), returned as the main
task's value: every result handled exactly once gives N, N(N-1)/2 and the sum of squares.
Celery's client builds ``group(noop.s(i) for i in range(N))``, applies it and ``get()``s the
GroupResult (the same three checks on the returned list).

This file is also the app module of both sides' workers and clients (``-A
bench.dispatch_scale``): the environment variable DISPATCH_SCALE_SIDE (``celeriac`` or
``celery``) picks which library it defines the app with, so a Celery process never imports
celeriac. The runner itself (``__main__`` without that variable) defines no app.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/...`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

SIDE_ENV = "DISPATCH_SCALE_SIDE"
READY_FILE_ENV = "CELERIAC_BENCH_READY_FILE"  # as bench/bench_tasks.py, which is not imported
SAMPLE_EVERY = 0.5  # seconds between two readings of the worker tree's resident size


# ---- the apps: defined only in worker and client processes -----------------------------------
def _write_ready_time(sender: Any = None, **_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        with open(path + ".tmp", "w") as f:  # write then rename: never read half written
            f.write(repr(time.time()))
        os.replace(path + ".tmp", path)


_SIDE = os.environ.get(SIDE_ENV) if __name__ != "__main__" else None

if _SIDE == "celery":
    from celery import Celery as _CeleryApp
    from celery import group  # noqa: F401 - the client's tasks.group
    from celery import signals as _celery_signals

    app = _CeleryApp("bench.dispatch_scale", broker=os.environ.get("CELERIAC_BROKER_URL"),
                     backend=os.environ.get("CELERIAC_RESULT_BACKEND"))
    app.conf.broker_connection_retry_on_startup = True  # silences a start-up warning only

    @app.task
    def noop(i: int) -> int:
        """Returns its index, so the client can check every result came back once."""
        return i

    _celery_signals.worker_ready.connect(_write_ready_time)

elif _SIDE == "celeriac":
    from celeriac import Celery as _CeleriacApp
    from celeriac import signals as _celeriac_signals
    from celeriac.dispatch import dispatch
    from celeriac.dispatch.signals import subtask_success

    app = _CeleriacApp("bench.dispatch_scale")  # broker and results: CELERIAC_* variables

    @app.task
    def noop(i: int) -> int:  # type: ignore[no-redef]
        """Returns its index, so the handler can check every result came back once."""
        return i

    #: main task id -> its tally, while it runs (the handler below fills it)
    _tallies: dict[str, dict[str, Any]] = {}

    @dispatch
    @app.task(bind=True)
    def fan_out(self: Any, n: int) -> Any:
        """Yields N no-op subtasks. Returns the tally, which the handler keeps filling until
        the last outcome is handled: the main task's value is stored only after that."""
        key = str(self.request.root_id or self.request.id)
        tally = _tallies[key] = {"n": n, "count": 0, "sum": 0, "sumsq": 0,
                                 "started": time.time(), "last": None}
        for i in range(n):
            yield noop, (i,)
        return tally

    @subtask_success.connect(sender=fan_out)
    def _count(root_id: str, task_id: str, retval: Any, **_: Any) -> None:
        tally = _tallies[root_id]
        tally["count"] += 1
        tally["sum"] += retval
        tally["sumsq"] += retval * retval
        if tally["count"] == tally["n"]:
            tally["last"] = time.time()
            del _tallies[root_id]  # the generator still holds it, for its return value

    _celeriac_signals.worker_ready.connect(_write_ready_time)


# ---- the client half: a subprocess of either side ------------------------------------------
def _checks(n: int, count: int, total: int, squares: int) -> dict[str, Any]:
    expected = {"count": n, "sum": n * (n - 1) // 2, "sumsq": (n - 1) * n * (2 * n - 1) // 6}
    got = {"count": count, "sum": total, "sumsq": squares}
    return {"got": got, "exactly_once": got == expected}


def client_main(argv: list[str]) -> None:
    """``client N TIMEOUT OUT``: send the work, wait for its result, write a JSON report."""
    import importlib

    n, timeout, out = int(argv[0]), float(argv[1]), Path(argv[2])
    tasks = importlib.import_module("bench.dispatch_scale")
    side = os.environ[SIDE_ENV]
    report: dict[str, Any] = {"side": side, "n": n}
    started = time.time()
    if side == "celeriac":
        result = tasks.fan_out.delay(n)
        report["sent"] = time.time()
        try:
            tally = result.get(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a timeout: say how far it got, then stop it
            report["error"] = repr(exc)
            with contextlib.suppress(Exception):
                report["progress"] = result.info if result.state == "PROGRESS" else None
            with contextlib.suppress(Exception):
                result.revoke(terminate=True, signal="SIGUSR1")
        else:
            report["done"] = time.time()
            report["worker_started"], report["worker_last"] = tally["started"], tally["last"]
            report.update(_checks(n, tally["count"], tally["sum"], tally["sumsq"]))
    else:
        job = tasks.group(tasks.noop.s(i) for i in range(n))
        report["built"] = time.time()
        result = job.apply_async()
        report["sent"] = time.time()
        try:
            values = result.get(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a timeout: the runner counts what is stored
            report["error"] = repr(exc)
        else:
            report["done"] = time.time()
            report.update(_checks(n, len(values), sum(values), sum(v * v for v in values)))
    report["client_started"] = started
    report["client_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.write_text(json.dumps(report))


# ---- the runner --------------------------------------------------------------------------------
def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError, ValueError):
            for thread in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (thread / "children").read_text().split())
    return found


def status_kb(pid: int, field_name: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class RssSampler:
    """The worker tree's resident size (sum of VmRSS), read every ``SAMPLE_EVERY`` s."""

    pid: int
    peak_tree_kb: int = 0
    peak_main_kb: int = 0
    samples: int = 0
    readings: list[tuple[float, int]] = field(default_factory=list)

    def sample(self) -> int:
        pids = tree_pids(self.pid)
        main = status_kb(self.pid, "VmRSS")
        total = main + sum(status_kb(p, "VmRSS") for p in pids[1:])
        self.peak_tree_kb = max(self.peak_tree_kb, total)
        self.peak_main_kb = max(self.peak_main_kb, main)
        self.samples += 1
        self.readings.append((time.time(), total))
        return total

    def hwm_kb(self) -> int:
        """Sum of each process's own peak (VmHWM): an upper bound of the tree's peak that
        no sampling interval can miss."""
        return sum(status_kb(p, "VmHWM") for p in tree_pids(self.pid))


@dataclass
class Result:
    """One measure's figures."""

    side: str
    store: str
    n: int
    wall: float | None = None  # client: from just before sending to the result in hand
    rate: float | None = None
    tree_peak_mb: float = 0.0
    tree_idle_mb: float = 0.0
    main_peak_mb: float = 0.0
    hwm_mb: float = 0.0
    client_mb: float = 0.0
    cpu_us: float | None = None  # worker tree CPU per subtask
    ok: bool = False
    note: str = ""


class Runner:
    def __init__(self, redis_url: str, workdir: Path, celery_python: str,
                 timeout: float) -> None:
        import redis

        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.redis.ping()
        self.workdir = workdir
        self.celery_python = celery_python
        self.timeout = timeout

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.redis.flushdb()
        self.redis.close()

    def measure(self, side: str, store: str, n: int) -> Result:
        from bench.redis_vs_celery import tree_cpu
        from bench.run import WorkerProcess

        result = Result(side, store, n)
        db = self.workdir / f"{side}-{n}.db"
        url = f"sqlite:///{db}" if store == "sqlite" else self.redis_url
        self.redis.flushdb()
        db.unlink(missing_ok=True)
        os.environ.update({SIDE_ENV: side, "CELERIAC_BROKER_URL": url,
                           "CELERIAC_RESULT_BACKEND": url})
        python = sys.executable if side == "celeriac" else self.celery_python
        module = "celeriac.cli.main" if side == "celeriac" else "celery"
        worker = WorkerProcess(self.workdir, f"{side}-{store}-{n}")
        worker.argv = [python, "-m", module, "-A", "bench.dispatch_scale", "worker",
                       "-P", "prefork", "-c", "2", "-l", "WARNING",
                       "-n", f"dscale-{side}@%h"]
        worker.ready_file.unlink(missing_ok=True)
        out = self.workdir / f"client-{side}-{n}.json"
        out.unlink(missing_ok=True)
        with worker:
            worker.wait_ready(60)
            assert worker.proc is not None
            sampler = RssSampler(worker.proc.pid)
            time.sleep(0.5)  # let the pool children settle before the idle reading
            result.tree_idle_mb = sampler.sample() / 1024
            sampler.peak_tree_kb = sampler.peak_main_kb = 0
            cpu_before = tree_cpu(worker.proc.pid)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                              env.get("PYTHONPATH")]))
            client = subprocess.Popen(
                [python, str(Path(__file__).resolve()), "client", str(n), str(self.timeout),
                 str(out)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                stderr=open(self.workdir / f"client-{side}-{n}.log", "wb"),  # noqa: SIM115
                start_new_session=True)
            try:
                deadline = time.monotonic() + self.timeout + 60
                last_log = time.monotonic()
                while client.poll() is None:
                    sampler.sample()
                    worker.check_alive()
                    if time.monotonic() > deadline:
                        raise RuntimeError("the client outlived its own timeout by 60 s")
                    if time.monotonic() - last_log > 60:
                        last_log = time.monotonic()
                        log(f"    ... tree RSS {sampler.readings[-1][1] / 1024:.0f} MB, "
                            f"peak {sampler.peak_tree_kb / 1024:.0f} MB"
                            + (f", {self._celery_stored()} results stored"
                               if side == "celery" else ""))
                    time.sleep(SAMPLE_EVERY)
                sampler.sample()
            finally:
                if client.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(client.pid, signal.SIGKILL)
                client.wait()
            cpu = tree_cpu(worker.proc.pid) - cpu_before
            result.hwm_mb = sampler.hwm_kb() / 1024
            stored = self._celery_stored() if side == "celery" else None
        result.tree_peak_mb = sampler.peak_tree_kb / 1024
        result.main_peak_mb = sampler.peak_main_kb / 1024
        if not out.exists():
            raise RuntimeError(f"the {side} client exited with {client.returncode} and no "
                               f"report:\n{(self.workdir / f'client-{side}-{n}.log').read_text()}")
        report = json.loads(out.read_text())
        result.client_mb = report["client_maxrss_kb"] / 1024
        if "error" in report:
            done = None
            if side == "celeriac" and report.get("progress"):
                done = report["progress"].get("completed_count")
            elif stored is not None:
                done = stored
            spent = self.timeout
            result.note = (f"stopped after {spent:.0f} s: {report['error'][:80]}"
                           + (f"; {done:,} of {n:,} done then (~{done / spent:,.0f}/s)"
                              if done else ""))
            result.cpu_us = cpu / done * 1e6 if done else None
            return result
        result.wall = report["done"] - report["client_started"]
        result.rate = n / result.wall
        result.cpu_us = cpu / n * 1e6
        result.ok = bool(report["exactly_once"])
        notes = []
        if not result.ok:
            notes.append(f"CHECK FAILED: got {report['got']}")
        if side == "celery":
            built = report["built"] - report["client_started"]
            notes.append(f"client built the group in {built:.1f} s, sent it in "
                         f"{report['sent'] - report['built']:.1f} s")
        else:
            worker_span = report["worker_last"] - report["worker_started"]
            notes.append(f"main task: first yield to last outcome {worker_span:.1f} s")
        result.note = "; ".join(notes)
        return result

    def _celery_stored(self) -> int:
        """Celery results stored so far (every key but a few of the worker's own)."""
        return sum(1 for _ in self.redis.scan_iter(match="celery-task-meta-*", count=10000))


def fmt_range(values: list[float], spec: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, spec)
    return f"{format(middle, spec)} ({format(min(values), spec)}-{format(max(values), spec)})"


def format_table(runs: list[list[Result]]) -> str:
    """One row per measure: the median of the rounds, with min-max when there were several."""
    header = ("measure", "N", "wall s", "subtasks/s", "worker tree peak RSS MB",
              "idle MB", "main proc MB", "client MB", "worker CPU µs/subtask", "exactly once",
              "notes")
    rows = []
    for same in zip(*runs, strict=True):
        first = same[0]
        done = [r for r in same if r.wall is not None]
        label = ("celeriac dispatch" if first.side == "celeriac" else "Celery group") + \
            f", {'SQLite' if first.store == 'sqlite' else 'Redis'}"
        cpu = [r.cpu_us for r in same if r.cpu_us is not None]
        rows.append((
            label, f"{first.n:,}",
            fmt_range([r.wall for r in done], ".1f") if done else "-",  # type: ignore[misc]
            fmt_range([r.rate for r in done], ",.0f") if done else "-",  # type: ignore[misc]
            fmt_range([r.tree_peak_mb for r in same], ".0f"),
            fmt_range([r.tree_idle_mb for r in same], ".0f"),
            fmt_range([r.main_peak_mb for r in same], ".0f"),
            fmt_range([r.client_mb for r in same], ".0f"),
            fmt_range(cpu, ",.0f") if cpu else "-",
            ("yes" if all(r.ok for r in same) else "NO") if len(done) == len(same) else
            "unfinished",
            " | ".join(r.note for r in same if r.note)))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for i, row in enumerate([header, *rows]):
        cells = [f"{row[0]:<{widths[0]}}"] + [f"{row[j]:>{widths[j]}}"
                                              for j in range(1, len(widths))]
        lines.append("  ".join(cells) + f"  {row[-1]}".rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def plan(sizes: list[int], sqlite: list[int], celery: list[int]) -> list[tuple[str, str, int]]:
    """Each size for celeriac then Celery, smallest first, so load drift hits both alike."""
    steps = []
    for n in sorted(set(sizes) | set(celery)):
        if n in sizes:
            steps.append(("celeriac", "redis", n))
        if n in celery:
            steps.append(("celery", "redis", n))
        if n in sqlite:
            steps.append(("celeriac", "sqlite", n))
    steps += [("celeriac", "sqlite", n) for n in sorted(sqlite) if n not in sizes and
              n not in celery]
    return steps


def sizes_arg(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()] if text else []


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="celeriac-dispatch-scale-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        client_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=sizes_arg, default=[10_000, 100_000, 1_000_000],
                        help="celeriac on Redis: subtasks per main task, comma-separated "
                             "(default 10000,100000,1000000)")
    parser.add_argument("--sqlite", type=sizes_arg, default=[100_000],
                        help="celeriac on SQLite (broker and results): sizes (default 100000)")
    parser.add_argument("--celery-sizes", type=sizes_arg, default=[10_000, 100_000],
                        help="Celery's group on Redis: sizes (default 10000,100000; '' skips)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the whole plan")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one measure may take before it is stopped and reported "
                             "as unfinished, with how far it got (default 900)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server, without a database")
    parser.add_argument("--db", type=int, default=14,
                        help="database, flushed before every measure (default 14: no test "
                             "or other benchmark uses it)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure")
    args = parser.parse_args(argv)

    from bench.redis_vs_celery import calibration, celery_python, versions
    from bench.run import _exit_on_signal, machine_summary, revision

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    python = celery_python() if args.celery_sizes else sys.executable
    against = versions(python) if args.celery_sizes else "no Celery"
    steps = plan(args.sizes, args.sqlite, args.celery_sizes)
    url = f"{args.redis.rstrip('/')}/{args.db}"
    measured, load_before, started = revision(), os.getloadavg()[0], time.perf_counter()
    log(f"celeriac {measured} against {against} on {url}: "
        + ", ".join(f"{s} {b} {n:,}" for s, b, n in steps))
    speed = calibration()
    runs: list[list[Result]] = []
    with workdir() as tmp:
        runner = Runner(url, tmp, python, args.timeout)
        try:
            for number in range(1, args.rounds + 1):
                log(f"---- round {number} of {args.rounds}")
                current: list[Result] = []
                for side, store, n in steps:
                    log(f"{side} on {store}, {n:,} subtasks ...")
                    got = runner.measure(side, store, n)
                    current.append(got)
                    log(f"  wall {got.wall if got.wall is None else round(got.wall, 1)} s, "
                        f"{got.rate or 0:,.0f}/s, tree peak {got.tree_peak_mb:.0f} MB "
                        f"(idle {got.tree_idle_mb:.0f}), client {got.client_mb:.0f} MB, "
                        f"exactly once: {got.ok} {got.note}")
                runs.append(current)
                if args.rounds > 1:
                    print(f"\nround {number}\n{format_table([current])}", flush=True)
        finally:
            runner.close()
    speed_after = calibration()
    if args.json:
        args.json.write_text(json.dumps([[r.__dict__ for r in one] for one in runs], indent=1))
    print()
    print(f"celeriac {measured} against {against}; redis-server at {url}; workers "
          "-P prefork -c 2, one per measure, started fresh and idle before the client sends")
    print(f"machine: {machine_summary()}; a fixed Python loop took {speed * 1000:.0f} ms "
          f"before and {speed_after * 1000:.0f} ms after (lower is faster)")
    print(f"run at {datetime.now().astimezone().isoformat(timespec='seconds')}, took "
          f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print()
    print(format_table(runs))
    growth = [(r.n, r.tree_peak_mb) for one in runs for r in one
              if r.side == "celeriac" and r.store == "redis"]
    if growth:
        smallest, largest = min(n for n, _ in growth), max(n for n, _ in growth)
        low = [mb for n, mb in growth if n == smallest]
        high = [mb for n, mb in growth if n == largest]
        delta = statistics.median(high) - statistics.median(low)
        print(f"\nceleriac worker-tree peak RSS growth from {smallest:,} to {largest:,} subtasks "
              f"(medians): {delta:+.0f} MB ({'met' if delta < 50 else 'NOT met'}: < 50 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
