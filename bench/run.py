"""Benchmarks on the embedded SQLite broker: enqueue rate, one-worker drain, round-trip latency.

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/run.py [--tasks N] [--samples N] [--only MEASURE[,MEASURE...]]``. Every measure
gets a fresh temporary SQLite file holding both the queue and the results; workers are real
``celeriac worker`` subprocesses, each in its own process group, killed at the end even on error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/run.py`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from bench.bench_tasks import READY_FILE_ENV, app, noop
from celeriac import states
from celeriac.backends.base import TASK_KEY_PREFIX

MEASURES = ("delay", "send_many", "drain-solo", "drain-prefork", "latency")
GROUPS = {"enqueue": ("delay", "send_many"), "drain": ("drain-solo", "drain-prefork"),
          "all": MEASURES}
BATCH = 500
WORKER_CMD = (sys.executable, "-m", "celeriac.cli.main")


@dataclass
class Row:
    """One line of the final table."""

    measure: str
    n: int
    value: float
    unit: str
    note: str = ""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- the store ---------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_store() -> Iterator[Path]:
    """A new temporary directory and SQLite file; the bench app uses it until the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    db = workdir / "bench.db"
    url = f"sqlite:///{db}"  # an absolute path gives sqlite://// as the URL rules require
    saved = {k: os.environ.get(k) for k in ("CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND")}
    os.environ["CELERIAC_BROKER_URL"] = url
    os.environ["CELERIAC_RESULT_BACKEND"] = url
    app.close()  # the app reads the URLs again on next use
    try:
        yield workdir
    finally:
        app.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(workdir, ignore_errors=True)


def enqueue_noops(n: int) -> list[str]:
    """Publish ``n`` noop tasks in batches (the fast path), returning their ids."""
    ids: list[str] = []
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        ids.extend(app.producer.send_many([(noop.name, (), {}, {})] * count))
    return ids


def count_results(db: Path) -> int:
    """Task results stored, counted on a separate read-only connection (cheap, no decoding)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)
    try:
        # A key range on the primary key: task results only (the worker keeps other keys there).
        return conn.execute("SELECT count(*) FROM celeriac_result WHERE key >= ? AND key < ?",
                            (TASK_KEY_PREFIX, TASK_KEY_PREFIX[:-1] + ".")).fetchone()[0]
    except sqlite3.OperationalError as exc:  # the worker has not created the table yet
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


# ---- the worker subprocess --------------------------------------------------------------------
def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the worker if this runner dies without cleaning up (kill -9)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """One ``celeriac worker`` in its own process group; ``stop`` leaves nothing behind."""

    def __init__(self, workdir: Path, pool: str, *, concurrency: int = 1,
                 command: Sequence[str] = WORKER_CMD, root: Path = ROOT) -> None:
        self.pool = pool
        #: the celeriac tree the worker runs (another checkout's, to compare two side by side)
        self.root = root
        self.ready_file = workdir / f"ready-{pool}"
        self.log_path = workdir / f"worker-{pool}.log"
        self.argv = [*command, "-A", "bench.bench_tasks", "worker", "-P", pool,
                     "-c", str(concurrency), "-l", "WARNING", "-n", f"bench-{pool}@%h"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def __enter__(self) -> WorkerProcess:
        env = dict(os.environ)
        env[READY_FILE_ENV] = str(self.ready_file)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root),
                                                          env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as out:
            self.started_at = time.time()
            # preexec_fn is safe here: the runner starts no threads of its own.
            self.proc = subprocess.Popen(self.argv, cwd=self.root, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent)  # noqa: PLW1509
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.pool} worker exited with code {self.proc.returncode}; "
                               f"its log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait for the worker_ready signal; returns the wall-clock time the worker wrote."""
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.pool} worker was not ready after {timeout:.0f}s; "
                                   f"its log ends:\n{self.log_tail()}")
            time.sleep(0.005)
        return float(self.ready_file.read_text())

    def stop(self, timeout: float = 20.0) -> int | None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL whatever is left in the
        group."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log(f"  the {self.pool} worker ignored SIGTERM for {timeout:.0f}s; killing it")
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # pool children and anything they started
            proc.wait()
        return proc.returncode


def wait_for_results(db: Path, n: int, worker: WorkerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while count_results(db) < n:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_results(db)}/{n} results after {timeout:.0f}s")
        time.sleep(0.05)


def done_times(ids: list[str]) -> list[float]:
    """Each task's ``date_done`` (stamped by the worker) after checking every one succeeded."""
    metas = app.backend.get_many_meta(ids)
    bad = [m for m in metas.values() if m["status"] != states.SUCCESS]
    if bad:
        raise RuntimeError(f"{len(bad)} task(s) did not succeed, e.g. {bad[0]!r}")
    return [datetime.fromisoformat(m["date_done"]).timestamp() for m in metas.values()]


# ---- the measures ------------------------------------------------------------------------------
def measure_delay(n: int) -> Row:
    with fresh_store():
        noop.delay()  # creates the file and tables outside the timed loop
        start = time.perf_counter()
        for _ in range(n):
            noop.delay()
        elapsed = time.perf_counter() - start
    return Row("enqueue: noop.delay() in a loop", n, n / elapsed, "tasks/s", f"{elapsed:.2f} s")


def measure_send_many(n: int) -> Row:
    with fresh_store():
        noop.delay()
        start = time.perf_counter()
        enqueue_noops(n)
        elapsed = time.perf_counter() - start
    return Row(f"enqueue: producer.send_many, batches of {BATCH}", n, n / elapsed, "tasks/s",
               f"{elapsed:.2f} s")


def measure_drain(n: int, pool: str) -> Row:
    with fresh_store() as workdir:
        ids = enqueue_noops(n)
        with WorkerProcess(workdir, pool) as worker:
            ready = worker.wait_ready()
            wait_for_results(workdir / "bench.db", n, worker, timeout=60 + n / 50)
            startup = ready - worker.started_at
        finished = done_times(ids)
    last, first = max(finished), min(finished)
    elapsed = last - ready
    note = (f"{elapsed:.2f} s from ready; start-up {startup:.2f} s; from process start "
            f"{n / (last - worker.started_at):,.0f}/s; first result {first - ready:.3f} s")
    return Row(f"drain: one worker, -P {pool} -c 1", n, n / elapsed, "tasks/s", note)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of samples at or below it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def measure_latency(samples: int, warmup: int) -> list[Row]:
    with fresh_store() as workdir, WorkerProcess(workdir, "solo") as worker:
        worker.wait_ready()
        for _ in range(warmup):
            noop.delay().get(timeout=30)
        times, to_stored, to_seen = [], [], []
        for _ in range(samples):
            sent_at = time.time()
            start = time.perf_counter()
            result = noop.delay()
            result.get(timeout=30)
            times.append(time.perf_counter() - start)
            seen_at = time.time()
            # Split the round trip at the worker's date_done (same clock, same machine); the
            # extra read happens after the timed window.
            done = datetime.fromisoformat(app.backend.get_task_meta(result.id)["date_done"])
            to_stored.append(done.timestamp() - sent_at)
            to_seen.append(seen_at - done.timestamp())
    times.sort()
    name = "latency: noop.delay().get(), -P solo"
    rows = [Row(f"{name}, p{p}", samples, percentile(times, p) * 1000, "ms") for p in (50, 90, 99)]
    split = (f"medians: send to result stored {percentile(sorted(to_stored), 50) * 1000:.2f} ms, "
             f"stored to get() returning {percentile(sorted(to_seen), 50) * 1000:.2f} ms")
    rows[0].note = split
    rows.append(Row(f"{name}, max", samples, times[-1] * 1000, "ms",
                    f"mean {sum(times) / len(times) * 1000:.2f} ms, after {warmup} warm-up calls"))
    return rows


# ---- running and reporting ---------------------------------------------------------------------
def machine_summary() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}")


def revision() -> str:
    """The celeriac commit measured, marked ``-dirty`` when the work tree has changes."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown revision"
    return out.stdout.strip() or "unknown revision"


def format_table(rows: list[Row]) -> str:
    header = ("measure", "N", "value", "unit", "notes")
    cells = [(r.measure, f"{r.n:,}", f"{r.value:,.0f}" if r.unit == "tasks/s" else f"{r.value:.2f}",
              r.unit, r.note) for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(4)]
    lines = []
    for i, c in enumerate([header, *cells]):
        lines.append(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  "
                     f"{c[3]:<{widths[3]}}  {c[4]}".rstrip())
        if i == 0:
            lines.append("-" * max(len(line) for line in lines))
    return "\n".join(lines)


def parse_only(value: str) -> list[str]:
    chosen: list[str] = []
    for name in (v.strip() for v in value.split(",") if v.strip()):
        names = GROUPS.get(name, (name,))
        unknown = [x for x in names if x not in MEASURES]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown measure {name!r}; choose from {', '.join([*MEASURES, *GROUPS])}")
        chosen.extend(x for x in names if x not in chosen)
    return chosen


def run(measures: list[str], tasks: int, samples: int, warmup: int) -> list[Row]:
    rows: list[Row] = []
    for measure in measures:
        log(f"running {measure} ...")
        if measure == "delay":
            rows.append(measure_delay(tasks))
        elif measure == "send_many":
            rows.append(measure_send_many(tasks))
        elif measure.startswith("drain-"):
            rows.append(measure_drain(tasks, measure.removeprefix("drain-")))
        else:
            rows.extend(measure_latency(samples, warmup))
        for row in rows[-1:] if measure != "latency" else rows[-4:]:
            log(f"  {row.measure}: {row.value:,.2f} {row.unit}")
    return rows


def _exit_on_signal(signum: int, frame: Any) -> None:
    # Turn SIGTERM/SIGHUP into an exception so every ``finally`` runs and workers are stopped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000,
                        help="tasks per enqueue and drain measure (default 20000)")
    parser.add_argument("--samples", type=int, default=2000,
                        help="timed round trips for the latency measure (default 2000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips before the latency samples (default 200)")
    parser.add_argument("--only", type=parse_only, default=list(MEASURES),
                        help="comma-separated measures: " + ", ".join([*MEASURES, *GROUPS]))
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.samples < 1 or args.warmup < 0:
        parser.error("--tasks and --samples must be at least 1, --warmup at least 0")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    log(f"celeriac benchmarks on {machine_summary()}")
    measured = revision()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = run(args.only, args.tasks, args.samples, args.warmup)
    print()
    print(f"celeriac {measured} benchmarks, embedded SQLite broker and result store")
    print(f"machine: {machine_summary()}")
    print(f"run at {datetime.now().astimezone().isoformat(timespec='seconds')}, "
          f"took {time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after (other processes skew the figures)")
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
