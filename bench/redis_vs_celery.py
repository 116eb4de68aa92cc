"""Side-by-side benchmarks: celeriac against Celery 5, same workloads, one table.

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/redis_vs_celery.py [--broker redis|amqp] [--confirm-publish default|on|off]
[--rounds N] [--tasks N] [--samples N] [--db N]``. Celery runs from bench/.venv-celery when
that virtualenv exists, else from this interpreter if it has Celery 5, else from the
virtualenv this script then creates (``python -m venv`` and
``pip install 'celery[redis]==5.*'``). With ``--broker redis`` (the default) both sides use one
Redis database as broker and result store; with ``--broker amqp``
RabbitMQ is the broker, in a private virtual host made for the run (``rabbitmqctl add_vhost``,
deleted at the end), and that Redis database the result store. Both are emptied before every
measure; workers are real subprocesses, each in its own process group, killed at the end even on
error. The clients (enqueue loop, round trips)
are subprocesses too, this interpreter for celeriac and the virtualenv's for Celery, started as
``python bench/redis_vs_celery.py client APP_MODULE MEASURE ...``. The helpers shared with
bench/run.py import celeriac, which the virtualenv lacks, so the runner imports them where used.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pstats
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/...`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

VENV = ROOT / "bench" / ".venv-celery"
CELERY_REQUIREMENT = "celery[redis]==5.*"
META_PREFIX = "celery-task-meta-"  # the result key layout both sides share
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SEND_MANY_BATCH = 500  # tasks per ``app.producer.send_many`` call in the batch enqueue measure
QUEUE = "celery"  # the default queue both apps use


@dataclass(frozen=True)
class Side:
    """How to run one implementation: its interpreter, app module and worker command."""

    name: str
    python: str
    app_module: str
    worker_module: str


# ---- the client half: runs in either interpreter, so it imports neither library up front -----
def client_main(argv: list[str]) -> None:
    """``client APP_MODULE enqueue N OUT``, ``client APP_MODULE enqueue_many N BATCH OUT``,
    ``client APP_MODULE latency SAMPLES WARMUP OUT`` or ``client APP_MODULE chord N TIMEOUT
    OUT``."""
    module = importlib.import_module(argv[0])
    noop = module.noop
    measure, out = argv[1], argv[-1]
    if measure == "chord":
        n, timeout = int(argv[2]), float(argv[3])
        noop.delay().get(timeout=30)  # connected, and a worker is serving
        header = [noop.s() for _ in range(n)]
        started = time.time()
        result = module.chord(header)(module.count.s())
        submitted = time.time()
        try:
            value, returned = result.get(timeout=timeout), time.time()
        except Exception as exc:  # noqa: BLE001 - Celery's get() may outlast the timeout
            value, returned = repr(exc), None
        report = {"started": started, "submitted": submitted, "returned": returned,
                  "body_id": result.id, "value": value}
        Path(out).write_text(json.dumps(report))
        return
    if measure == "enqueue":
        n = int(argv[2])
        ids = [noop.delay().id]  # connects to the broker outside the timed loop
        start = time.perf_counter()
        for _ in range(n):
            ids.append(noop.delay().id)
        report: dict[str, Any] = {"elapsed": time.perf_counter() - start, "ids": ids}
    elif measure == "enqueue_many":  # celeriac's batch path: app.producer.send_many
        n, batch = int(argv[2]), int(argv[3])
        send_many, call = module.app.producer.send_many, (noop.name, (), {}, {})
        ids = [noop.delay().id]
        start = time.perf_counter()
        for first in range(0, n, batch):
            ids.extend(send_many([call] * min(batch, n - first)))
        report = {"elapsed": time.perf_counter() - start, "ids": ids}
    else:
        samples, warmup = int(argv[2]), int(argv[3])
        for _ in range(warmup):
            noop.delay().get(timeout=30)
        trips = []
        for _ in range(samples):
            sent_at = time.time()
            start = time.perf_counter()
            result = noop.delay()
            result.get(timeout=30)
            elapsed = time.perf_counter() - start
            trips.append((result.id, sent_at, time.time(), elapsed))
        report = {"trips": trips}
    Path(out).write_text(json.dumps(report))


# ---- the runner half --------------------------------------------------------------------------
def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def celery_python() -> str:
    """The virtualenv's interpreter; else this one if it has Celery 5 (kombu brings py-amqp);
    else the virtualenv, created and given Celery now."""
    python = VENV / "bin" / "python"
    check = "import celery, redis, amqp, sys; sys.exit(celery.VERSION[0] != 5)"
    for candidate in ([python] if python.exists() else []) + [Path(sys.executable)]:
        if subprocess.run([candidate, "-c", check], capture_output=True,
                          check=False).returncode == 0:
            return str(candidate)
    log(f"creating {VENV} with {CELERY_REQUIREMENT} (once; later runs reuse it) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", CELERY_REQUIREMENT], check=True)
    subprocess.run([python, "-c", check], check=True)
    return str(python)


def versions(python: str) -> str:
    code = ("import amqp, celery, kombu, redis; "
            "print(celery.__version__, kombu.__version__, redis.__version__, amqp.__version__)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    celery, kombu, redis_py, py_amqp = out.stdout.split()
    return f"celery {celery}, kombu {kombu}, redis-py {redis_py}, py-amqp {py_amqp}"


class AmqpVhost:
    """A RabbitMQ virtual host made for one run (``rabbitmqctl``, so the runner must be on the
    broker's machine) and deleted by ``close``; its default queue is purged between measures."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.user = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        self.hostport = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"
        self.name = f"celeriac-bench-{os.getpid()}-{secrets.token_hex(3)}"
        self._ctl("add_vhost", self.name)
        try:
            self._ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
            self.server_version = self._connect().server_properties.get("version", "?")
        except BaseException:
            self.close()
            raise
        self.url = f"amqp://{parts.netloc or 'guest:guest@127.0.0.1:5672'}/{self.name}"

    @staticmethod
    def _ctl(*args: str) -> None:
        proc = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                              timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()}")

    def _connect(self) -> Any:
        import amqp

        conn = amqp.Connection(host=self.hostport, userid=self.user, password=self.password,
                               virtual_host=self.name)
        conn.connect()
        return conn

    def empty(self, queue: str = QUEUE, timeout: float = 30.0) -> None:
        """Purge ``queue`` once no worker consumes it any more (what a stopped worker held
        unacked goes back to the queue when its connection closes: purge after that)."""
        from amqp.exceptions import NotFound

        conn = self._connect()
        try:
            channel = conn.channel()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    _, _, consumers = channel.queue_declare(queue, passive=True)
                except NotFound:
                    return  # not declared yet: nothing to purge
                if not consumers:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"queue {queue!r} still has {consumers} consumer(s)")
                time.sleep(0.05)
            channel.queue_purge(queue)
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            self._ctl("delete_vhost", self.name)


class Bench:
    """The Redis database both sides share (the broker too, unless ``vhost`` is given: then
    RabbitMQ is), and the runs of clients and workers against them."""

    def __init__(self, url: str, workdir: Path, vhost: AmqpVhost | None = None) -> None:
        self.url = url
        self.workdir = workdir
        self.vhost = vhost
        self.broker = "RabbitMQ" if vhost is not None else "Redis"
        self.redis = redis.Redis.from_url(url)
        self.redis.ping()  # fail early, with redis-py's message, if no server listens
        os.environ["CELERIAC_BROKER_URL"] = vhost.url if vhost is not None else url
        os.environ["CELERIAC_RESULT_BACKEND"] = url

    def close(self) -> None:
        self.redis.flushdb()
        self.redis.close()

    def flush(self) -> None:
        self.redis.flushdb()
        if self.vhost is not None:
            self.vhost.empty()

    def client(self, side: Side, *args: object, wrapper: Sequence[str] = ()) -> dict[str, Any]:
        """Run a client measure; ``wrapper`` goes between the interpreter and this script."""
        out = self.workdir / f"client-{side.name}.json"
        out.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [side.python, *wrapper, str(Path(__file__).resolve()), "client", side.app_module,
               *map(str, args), str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the {side.name} client failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())

    @contextlib.contextmanager
    def worker(self, side: Side, pool: str | None, *, wrapper: Sequence[str] = (),
               concurrency: int = 1) -> Iterator[Any]:
        """A running worker; ``wrapper`` goes between the interpreter and the worker's module.
        ``pool`` None: the default worker (no ``-P``/``-c``: prefork, one child per CPU)."""
        from bench.run import WorkerProcess

        worker = WorkerProcess(self.workdir, f"{side.name}-{pool or 'default'}")
        pool_args = ["-P", pool, "-c", str(concurrency)] if pool else []
        # The shared runner names the celeriac app; both sides get the same flags otherwise.
        worker.argv = [side.python, "-m", *wrapper, side.worker_module, "-A", side.app_module,
                       "worker", *pool_args, "-l", "WARNING", "-n", f"bench-{side.name}@%h"]
        worker.ready_file.unlink(missing_ok=True)
        with worker:
            yield worker

    def metas(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        found: list[dict[str, Any] | None] = []
        for start in range(0, len(ids), 1000):
            keys = [META_PREFIX + i for i in ids[start:start + 1000]]
            found.extend(json.loads(v) if v is not None else None for v in self.redis.mget(keys))
        return found

    def done_times(self, ids: Sequence[str], worker: Any, timeout: float) -> list[float]:
        """Wait until every task has a result (cheap: the last one sent is watched first),
        check they all succeeded, and return each ``date_done`` as a timestamp."""
        deadline = time.monotonic() + timeout
        while True:
            if self.redis.exists(META_PREFIX + ids[-1]):
                metas = self.metas(ids)
                if all(metas):
                    break
            worker.check_alive()
            if time.monotonic() > deadline:
                done = sum(1 for m in self.metas(ids) if m)
                raise RuntimeError(f"only {done}/{len(ids)} results after {timeout:.0f}s")
            time.sleep(0.02)
        bad = [m for m in metas if m["status"] != "SUCCESS"]
        if bad:
            raise RuntimeError(f"{len(bad)} task(s) did not succeed, e.g. {bad[0]!r}")
        return [datetime.fromisoformat(m["date_done"]).timestamp() for m in metas]


@dataclass
class Row:
    """One line of the table: a measure with both sides' figures."""

    measure: str
    n: int
    unit: str
    values: dict[str, float]
    note: str = ""
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # min-max over rounds


def measure_enqueue_and_solo_drain(bench: Bench, side: Side, n: int) -> tuple[float, float, str]:
    """The enqueue loop fills the queue the solo drain then empties: one flush, two figures."""
    bench.flush()
    report = bench.client(side, "enqueue", n)
    enqueue_rate = n / report["elapsed"]
    drain_rate, note = drain(bench, side, "solo", report["ids"])
    return enqueue_rate, drain_rate, note


def measure_prefork_drain(bench: Bench, side: Side, n: int) -> tuple[float, str]:
    bench.flush()
    return drain(bench, side, "prefork", bench.client(side, "enqueue", n)["ids"])


def tree_cpu(pid: int) -> float:
    """CPU seconds a process and its descendants (every thread) have used, from Linux's /proc."""
    total, pending = 0.0, [pid]
    while pending:
        proc = Path(f"/proc/{pending.pop()}")
        with contextlib.suppress(OSError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
            for thread in (proc / "task").iterdir():
                pending.extend(int(c) for c in (thread / "children").read_text().split())
    return total


def drain(bench: Bench, side: Side, pool: str, ids: list[str]) -> tuple[float, str]:
    with bench.worker(side, pool) as worker:
        ready = worker.wait_ready(60)
        cpu_before = tree_cpu(worker.proc.pid)
        finished = bench.done_times(ids, worker, timeout=60 + len(ids) / 50)
        cpu = tree_cpu(worker.proc.pid) - cpu_before  # also counts up to 20 ms of polling lag
    rate = len(ids) / (max(finished) - ready)
    return rate, (f"{side.name} start-up {ready - worker.started_at:.2f} s, "
                  f"CPU {cpu / len(ids) * 1e6:.0f} µs/task")


def measure_send_many(bench: Bench, side: Side, n: int) -> float:
    """The batch enqueue path (``app.producer.send_many``, 500 a call), into a flushed queue."""
    bench.flush()
    return n / bench.client(side, "enqueue_many", n, SEND_MANY_BATCH)["elapsed"]


def measure_latency(bench: Bench, side: Side, samples: int, warmup: int,
                    pool: str | None = "solo") -> tuple[list[float], str]:
    bench.flush()
    with bench.worker(side, pool) as worker:
        worker.wait_ready(60)
        trips = bench.client(side, "latency", samples, warmup)["trips"]
    metas = bench.metas([t[0] for t in trips])
    stored = sorted(datetime.fromisoformat(m["date_done"]).timestamp() - t[1]
                    for m, t in zip(metas, trips, strict=True) if m)
    seen = sorted(t[2] - datetime.fromisoformat(m["date_done"]).timestamp()
                  for m, t in zip(metas, trips, strict=True) if m)
    note = (f"{side.name}: to stored {stored[len(stored) // 2] * 1000:.2f} ms, "
            f"then to get() {seen[len(seen) // 2] * 1000:.2f} ms")
    return sorted(t[3] * 1000 for t in trips), note


def peak_rss_mb(pid: int) -> float:
    """The largest resident size a process and its children reached (VmHWM), in MB."""
    total, pending = 0, [pid]
    while pending:
        proc = Path(f"/proc/{pending.pop()}")
        with contextlib.suppress(OSError, ValueError):
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            for thread in (proc / "task").iterdir():
                pending.extend(int(c) for c in (thread / "children").read_text().split())
    return total / 1024


def measure_chord(bench: Bench, side: Side, n: int, pool: str, timeout: float,
                  concurrency: int = 1) -> tuple[float, float | None, str]:
    """A chord of ``n`` noop tasks and a body that counts them, sent to an idle worker:
    (seconds from the first submit to the body's date_done, seconds from that to get()
    returning or None if it had not returned after ``timeout``, notes)."""
    bench.flush()
    with bench.worker(side, pool, concurrency=concurrency) as worker:
        worker.wait_ready(60)
        report = bench.client(side, "chord", n, timeout)
        rss = peak_rss_mb(worker.proc.pid)
    meta = bench.metas([report["body_id"]])[0]
    if meta is None or meta["status"] != "SUCCESS" or meta["result"] != n:
        raise RuntimeError(f"{side.name}: the chord body did not count {n} results: {meta!r}, "
                           f"client saw {report['value']!r}")
    body_done = datetime.fromisoformat(meta["date_done"]).timestamp()
    to_body = body_done - report["started"]
    to_get = None if report["returned"] is None else report["returned"] - body_done
    note = (f"{side.name}: submit {report['submitted'] - report['started']:.2f} s, "
            f"worker peak RSS {rss:.0f} MB")
    return to_body, to_get, note


def calibration() -> float:
    """Seconds this machine takes for a fixed pure-Python loop right now: the figures of a run
    scale with it (the machine's speed was seen to vary by 2x within minutes)."""
    best = float("inf")
    for _ in range(3):
        start, x = time.perf_counter(), 0
        for i in range(2_000_000):
            x += i
        best = min(best, time.perf_counter() - start)
    return best


def profile(bench: Bench, side: Side, tasks: int, out: Path) -> None:
    """celeriac's ``noop.delay()`` loop under cProfile (saved next to ``out`` as
    ``NAME-enqueue.prof``), then a solo drain of what it sent with the worker under
    bench/threadprof.py (cProfile, every thread), saved as ``out``."""
    from bench.profile_run import top_table

    bench.flush()
    enqueue_out = out.with_name(f"{out.stem}-enqueue{out.suffix}")
    enqueue_out.unlink(missing_ok=True)
    report = bench.client(side, "enqueue", tasks,
                          wrapper=("-m", "cProfile", "-o", str(enqueue_out)))
    ids = report["ids"]
    log(f"enqueued {tasks} tasks in {report['elapsed']:.2f} s under the profiler")
    stats = pstats.Stats(str(enqueue_out))
    for key in ("cumulative", "tottime"):
        print(f"\nnoop.delay() loop on {bench.broker}, {tasks} tasks (and start-up): top 25 by "
              f"{key} time")
        print(top_table(stats, key, tasks, 25))
    out.unlink(missing_ok=True)
    with bench.worker(side, "solo", wrapper=("bench.threadprof", str(out))) as worker:
        ready = worker.wait_ready(60)
        finished = bench.done_times(ids, worker, timeout=120 + len(ids) / 20)
        log(f"drained {len(ids)} tasks in {max(finished) - ready:.2f} s under the profiler")
        code = worker.stop(timeout=60)
    if code != 0 or not out.exists():
        raise RuntimeError(f"the profiled worker exited with {code}:\n{worker.log_tail()}")
    stats = pstats.Stats(str(out))
    for key in ("cumulative", "tottime"):
        print(f"\nsolo worker on {bench.broker}, {len(ids)} noop tasks: top 25 by {key} time")
        print(top_table(stats, key, len(ids), 25))
    print(f"\nfull profiles: {enqueue_out}, {out} (python -m pstats FILE)")


def run(bench: Bench, sides: dict[str, Side], tasks: int, samples: int, warmup: int,
        chord_size: int = 0, chord_pool: str = "solo", chord_timeout: float = 300.0,
        only: Sequence[str] = (), chord_concurrency: int = 1) -> list[Row]:
    """Each measure for both sides back to back, so drifting machine load hits both alike."""
    from bench.run import percentile

    if only and set(only) <= {"chord"}:
        return chord_rows(bench, sides, chord_size, chord_pool, chord_timeout, chord_concurrency)

    enqueue = Row("enqueue: noop.delay() in a loop", tasks, "tasks/s", {})
    batch = Row(f"enqueue: app.producer.send_many, {SEND_MANY_BATCH} a call", tasks, "tasks/s",
                {}, "celeriac only (Celery has no batch publish)")
    solo = Row("drain: one worker, -P solo -c 1", tasks + 1, "tasks/s", {})
    prefork = Row("drain: one worker, -P prefork -c 1", tasks + 1, "tasks/s", {})
    notes: dict[str, list[str]] = {"solo": [], "prefork": [], "latency": [], "default": []}
    latencies: dict[str, list[float]] = {}
    default_latencies: dict[str, list[float]] = {}
    for name, side in sides.items():
        log(f"{name}: enqueue, then solo drain ...")
        enqueue.values[name], solo.values[name], note = measure_enqueue_and_solo_drain(
            bench, side, tasks)
        notes["solo"].append(note)
        log(f"  {enqueue.values[name]:,.0f} enqueued/s, {solo.values[name]:,.0f} drained/s")
    if "celeriac" in sides:
        log("celeriac: enqueue with send_many ...")
        batch.values["celeriac"] = measure_send_many(bench, sides["celeriac"], tasks)
        log(f"  {batch.values['celeriac']:,.0f} enqueued/s")
    for name, side in sides.items():
        log(f"{name}: prefork drain ...")
        prefork.values[name], note = measure_prefork_drain(bench, side, tasks)
        notes["prefork"].append(note)
        log(f"  {prefork.values[name]:,.0f} drained/s")
    for name, side in sides.items():
        log(f"{name}: {samples} round trips after {warmup} warm-up ...")
        latencies[name], note = measure_latency(bench, side, samples, warmup)
        notes["latency"].append(note)
        log(f"  p50 {percentile(latencies[name], 50):.2f} ms")
    for name, side in sides.items():
        log(f"{name}: {samples} round trips on a default worker (prefork, -c CPUs) ...")
        default_latencies[name], note = measure_latency(bench, side, samples, warmup, None)
        notes["default"].append(note)
        log(f"  p50 {percentile(default_latencies[name], 50):.2f} ms")
    solo.note, prefork.note = "; ".join(notes["solo"]), "; ".join(notes["prefork"])
    rows = [enqueue, batch, solo, prefork]
    for p in (50, 90, 99):
        rows.append(Row(f"latency: noop.delay().get(), -P solo, p{p}", samples, "ms",
                        {k: percentile(v, p) for k, v in latencies.items()}))
    rows[-3].note = "medians " + "; ".join(notes["latency"])
    for p in (50, 99):
        rows.append(Row(f"latency: noop.delay().get(), default worker, p{p}", samples, "ms",
                        {k: percentile(v, p) for k, v in default_latencies.items()}))
    rows[-2].note = "medians " + "; ".join(notes["default"])
    if chord_size:
        rows += chord_rows(bench, sides, chord_size, chord_pool, chord_timeout, chord_concurrency)
    return rows


def chord_rows(bench: Bench, sides: dict[str, Side], n: int, pool: str, timeout: float,
               concurrency: int = 1) -> list[Row]:
    to_body = Row(f"chord: first submit -> body done, -P {pool} -c {concurrency}", n, "s", {})
    to_get = Row("chord: body done -> get() returns", n, "ms", {})
    notes = []
    for name, side in sides.items():
        log(f"{name}: a chord of {n} noop tasks on an idle -P {pool} -c {concurrency} worker ...")
        body, got, note = measure_chord(bench, side, n, pool, timeout, concurrency)
        to_body.values[name] = body
        if got is not None:
            to_get.values[name] = got * 1000
        else:
            note += f"; get() had not returned {timeout:.0f} s after the submit"
        notes.append(note)
        log(f"  body after {body:.2f} s, get() " + (f"{got * 1000:.1f} ms later" if got is not None
                                                      else "did not return"))
    to_body.note = "; ".join(notes)
    return [to_body, to_get]


def merge_rounds(rounds: list[list[Row]]) -> list[Row]:
    """One row per measure: each side's median over the rounds, and its min-max range."""
    merged = []
    for same in zip(*rounds, strict=True):
        row = Row(same[0].measure, same[0].n, same[0].unit, {},
                  same[0].note if len(rounds) == 1 else f"median of {len(rounds)} rounds")
        for side in dict.fromkeys(k for r in same for k in r.values):
            got = [r.values[side] for r in same if side in r.values]
            row.values[side] = statistics.median(got)
            row.ranges[side] = (min(got), max(got))
        if len(rounds) == 1:
            row.ranges = {}
        merged.append(row)
    return merged


def format_table(rows: list[Row]) -> str:
    header = ("measure", "N", "celeriac", "Celery", "unit", "celeriac/Celery", "notes")

    def number(value: float, unit: str) -> str:
        return f"{value:,.0f}" if unit == "tasks/s" else f"{value:.2f}"

    def fmt(row: Row, side: str) -> str:
        value = row.values.get(side)
        if value is None:
            return "-"
        if side in row.ranges:
            low, high = row.ranges[side]
            return (f"{number(value, row.unit)} ({number(low, row.unit)}-"
                    f"{number(high, row.unit)})")
        return number(value, row.unit)

    cells = [(r.measure, f"{r.n:,}", fmt(r, "celeriac"), fmt(r, "celery"), r.unit,
              f"{r.values['celeriac'] / r.values['celery']:.2f}" if len(r.values) == 2 else "-",
              r.note) for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(6)]
    lines = []
    for i, c in enumerate([header, *cells]):
        lines.append(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  "
                     f"{c[3]:>{widths[3]}}  {c[4]:<{widths[4]}}  {c[5]:>{widths[5]}}  "
                     f"{c[6]}".rstrip())
        if i == 0:
            lines.append("-" * max(len(line) for line in lines))
    return "\n".join(lines)


def targets(rows: list[Row], broker: str = "redis") -> list[str]:
    """The issues' targets, each marked met or not met from this run's figures (the medians
    when there were several rounds)."""
    checks = []
    by_name = {r.measure: r for r in rows}
    drains = [r for r in rows if r.measure.startswith("drain") and "solo" in r.measure]
    if drains and broker == "amqp":  # issue 12
        one = by_name["enqueue: noop.delay() in a loop"].values["celeriac"]
        many = by_name[f"enqueue: app.producer.send_many, {SEND_MANY_BATCH} a call"]
        mine = drains[0].values["celeriac"]
        p50 = by_name["latency: noop.delay().get(), -P solo, p50"].values["celeriac"]
        checks += [
            ("enqueue >= 20,000 tasks/s, delay() loop", f"{one:,.0f}", one >= 20000),
            ("enqueue >= 20,000 tasks/s, send_many", f"{many.values['celeriac']:,.0f}",
             many.values["celeriac"] >= 20000),
            ("solo drain >= 6,000 tasks/s", f"{mine:,.0f}", mine >= 6000),
            ("round trip p50 <= 0.6 ms (Redis results)", f"{p50:.2f} ms", p50 <= 0.6),
        ]
    elif drains:
        enqueue, solo = by_name["enqueue: noop.delay() in a loop"], drains[0]
        p50 = by_name["latency: noop.delay().get(), -P solo, p50"]
        mine, theirs = solo.values["celeriac"], solo.values.get("celery")
        checks += [
            ("solo drain >= 5,000 tasks/s", f"{mine:,.0f}", mine >= 5000),
            ("enqueue >= 10,000 tasks/s per producer", f"{enqueue.values['celeriac']:,.0f}",
             enqueue.values["celeriac"] >= 10000),
            ("round trip p50 < 1 ms", f"{p50.values['celeriac']:.2f} ms",
             p50.values["celeriac"] < 1),
        ]
        if theirs:
            checks.insert(1, ("solo drain >= 3x Celery", f"{mine / theirs:.2f}x",
                              mine >= 3 * theirs))
    chord = [r for r in rows if r.measure.startswith("chord:")]
    if chord:
        body, got = chord[0].values.get("celeriac"), chord[1].values.get("celeriac")
        checks.append((f"{chord[0].n:,}-task chord body within 3 s of the first submit",
                       f"{body:.2f} s", body <= 3))
        checks.append(("get() within 50 ms of the body finishing",
                       "did not return" if got is None else f"{got:.1f} ms",
                       got is not None and got <= 50))
    return [f"  {'met    ' if ok else 'NOT met'}  {what}: {got}" for what, got, ok in checks]


def confirm_modes(option: str) -> str:
    """Which publish mode each side measured on RabbitMQ (``--confirm-publish``)."""
    if option == "on":
        return ("publisher confirms ON for both sides (confirm_publish=True): delay() returns "
                "once RabbitMQ has confirmed the (persistent) message")
    if option == "off":
        return ("publisher confirms OFF for both sides (confirm_publish=False): delay() returns "
                "once the message is written to the socket, unconfirmed")
    return ("each side's default: celeriac's delay() returns once RabbitMQ has confirmed the "
            "(persistent) message (confirm_publish=True); Celery publishes without publisher "
            "confirms (kombu's default)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        client_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000,
                        help="tasks per enqueue and drain measure (default 10000)")
    parser.add_argument("--samples", type=int, default=2000,
                        help="timed round trips per side (default 2000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips before the samples (default 200)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server, without a database (default redis://127.0.0.1:6379)")
    parser.add_argument("--db", type=int, default=7,
                        help="database number, flushed before every measure: one no test uses "
                             "(default 7)")
    parser.add_argument("--broker", choices=["redis", "amqp"], default="redis",
                        help="redis (default): that database is the broker too; amqp: RabbitMQ "
                             "in a private vhost made for the run, results still in Redis")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672",
                        help="RabbitMQ server, without a vhost (default "
                             "amqp://guest:guest@127.0.0.1:5672); needs rabbitmqctl")
    parser.add_argument("--confirm-publish", choices=["default", "on", "off"],
                        default="default",
                        help="with --broker amqp: publisher confirms for both sides' task "
                             "publishes (confirm_publish); default: each side's own (celeriac "
                             "on, Celery off)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of every measure (each side in turn within a round); "
                             "the table gives medians and min-max (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every round's figures to FILE")
    parser.add_argument("--celeriac-only", action="store_true",
                        help="skip Celery (and its virtualenv)")
    parser.add_argument("--chord", type=int, default=10000, metavar="N",
                        help="header size of the chord measure (default 10000; 0 skips it)")
    parser.add_argument("--chord-pool", default="solo",
                        help="pool of the worker the chord runs on (default solo, -c 1)")
    parser.add_argument("--chord-concurrency", type=int, default=1,
                        help="that worker's concurrency (default 1)")
    parser.add_argument("--chord-timeout", type=float, default=300.0,
                        help="how long the chord's get() may wait (default 300 s)")
    parser.add_argument("--only", choices=["chord"], action="append", default=[],
                        help="run only this measure (chord)")
    parser.add_argument("--profile", type=Path, metavar="OUT.prof",
                        help="instead: profile a celeriac solo worker draining --tasks tasks")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.samples < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--tasks, --samples and --rounds must be at least 1, --warmup at least 0")
    if args.confirm_publish != "default":
        if args.broker != "amqp":
            parser.error("--confirm-publish needs --broker amqp")
        os.environ["CELERIAC_BENCH_CONFIRM_PUBLISH"] = "1" if args.confirm_publish == "on" else "0"

    from bench.run import _exit_on_signal, machine_summary, revision

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    sides = {"celeriac": Side("celeriac", sys.executable, "bench.bench_tasks", "celeriac.cli.main")}
    if not (args.celeriac_only or args.profile):
        python = celery_python()
        sides["celery"] = Side("celery", python, "bench.celery_bench_tasks", "celery")
    measured, load_before, started = revision(), os.getloadavg()[0], time.perf_counter()
    url = f"{args.redis.rstrip('/')}/{args.db}"
    against = versions(sides["celery"].python) if "celery" in sides else "no Celery"
    log(f"celeriac {measured} against {against} on {url}")
    vhost = AmqpVhost(args.amqp) if args.broker == "amqp" else None
    rounds: list[list[Row]] = []
    with tempfile.TemporaryDirectory(prefix=f"celeriac-{args.broker}-bench-") as tmp:
        try:
            bench = Bench(url, Path(tmp), vhost)
            try:
                server = bench.redis.info("server")["redis_version"]
                if args.profile:
                    profile(bench, sides["celeriac"], args.tasks, args.profile.resolve())
                    return 0
                speed = calibration()
                for number in range(1, args.rounds + 1):
                    log(f"---- round {number} of {args.rounds}")
                    rounds.append(run(bench, sides, args.tasks, args.samples, args.warmup,
                                      chord_size=args.chord, chord_pool=args.chord_pool,
                                      chord_timeout=args.chord_timeout, only=args.only,
                                      chord_concurrency=args.chord_concurrency))
                    if args.rounds > 1:
                        print(f"\nround {number}\n{format_table(rounds[-1])}", flush=True)
                speed_after = calibration()
            finally:
                bench.close()
        finally:
            if vhost is not None:
                vhost.close()
    rows = merge_rounds(rounds)
    if args.json:
        args.json.write_text(json.dumps([[{"measure": r.measure, "n": r.n, "unit": r.unit,
                                           "values": r.values, "note": r.note} for r in one]
                                         for one in rounds], indent=1))
    print()
    if vhost is not None:
        print(f"celeriac {measured} against {against}; RabbitMQ {vhost.server_version} as "
              f"broker (vhost {vhost.name}, made for this run and deleted), redis-server "
              f"{server} at {url} as result store, for both sides")
        print(confirm_modes(args.confirm_publish))
    else:
        print(f"celeriac {measured} against {against}; redis-server {server} at {url} as "
              f"broker and result store")
    print(f"machine: {machine_summary()}; a fixed Python loop took {speed * 1000:.0f} ms "
          f"before and {speed_after * 1000:.0f} ms after (lower is faster)")
    print(f"run at {datetime.now().astimezone().isoformat(timespec='seconds')}, "
          f"took {time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after (other processes skew the figures)")
    print()
    print(format_table(rows))
    print()
    print("targets (celeriac" + (f", medians of {args.rounds} rounds" if args.rounds > 1 else "")
          + "):")
    print("\n".join(targets(rows, args.broker)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
