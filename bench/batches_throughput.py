"""Batches throughput: 100,000 requests through a ``flush_every=100`` batch task, celeriac
against Celery 5 + celery-batches, on one Redis database (broker and result store).

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/batches_throughput.py [--rounds N] [--requests N] [--plain N] [--db N]
[--celery-prefetch M]``.

Each round, for each worker kind (the default worker: prefork, one child per CPU; then
``-P solo -c 1``, a single process), each side in turn: flush the database, enqueue the
requests (timed; celeriac ``app.producer.send_many``, 500 a call, Celery ``apply_async`` in a
loop on one held producer: Celery has no batch publish), start one worker on the full queue
and wait for every request's result. The drain rate is requests / (last ``date_done`` - first
``date_done``), also given from the moment the worker was ready; the worker tree's peak RSS
(VmHWM summed over the main process and its pool children) and CPU are read before it stops.
A plain no-op task's drain on celeriac, same worker kinds, is the "several times" reference.

Celery runs from bench/.venv-celery-batches, created on first use with
``celery[redis]==5.6.*`` and ``celery-batches==0.11``: celery-batches 0.11, the newest,
requires ``celery<5.7``. Its docs ask for ``worker_prefetch_multiplier`` 0, or a value whose
product with the concurrency exceeds ``flush_every``; ``--celery-prefetch`` picks it (default
0). This file is also the app module of both sides' workers and clients: the environment
variable BATCHES_BENCH_APP (``celeriac`` or ``celery``) says which app it defines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/...`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

APP_ENV = "BATCHES_BENCH_APP"  # which app this module defines when imported by a worker
MARK_ENV = "BATCHES_BENCH_MARK"  # celeriac's batch body: none, task or backend
READY_FILE_ENV = "CELERIAC_BENCH_READY_FILE"  # same name as bench.bench_tasks.READY_FILE_ENV
FLUSH_EVERY = 100
FLUSH_INTERVAL = 10.0
SEND_MANY_BATCH = 500
META_PREFIX = "celery-task-meta-"
VENV = ROOT / "bench" / ".venv-celery-batches"
CELERY_REQUIREMENTS = ("celery[redis]==5.6.*", "celery-batches==0.11")


def _write_ready_time(sender: Any = None, **_: Any) -> None:
    """worker_ready: the wall-clock time the worker could take work, for the runner."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    with open(path + ".tmp", "w") as f:  # write then rename: never read half written
        f.write(repr(time.time()))
    os.replace(path + ".tmp", path)


# ---- the two apps: defined only in a worker or client of that side ----------------------------
if os.environ.get(APP_ENV) == "celeriac":
    from celeriac import Celery, signals
    from celeriac.batches import Batches

    app = Celery("bench.batches_throughput")
    MARK = os.environ.get(MARK_ENV, "none")
    if os.environ.get("BATCHES_BENCH_CELERIAC_PREFETCH"):  # a diagnostic: default otherwise
        app.conf.worker_prefetch_multiplier = int(os.environ["BATCHES_BENCH_CELERIAC_PREFETCH"])

    @app.task
    def noop() -> None:
        """The plain-task reference: does nothing."""

    @app.task(base=Batches, flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL)
    def batch(requests: list) -> None:
        """Near no-op: leaves every request unmarked (SUCCESS, None when the call returns),
        or marks each done with the task's method, or stores it as celery-batches users do."""
        if MARK == "task":
            for request in requests:
                batch.mark_as_done(request, None)
        elif MARK == "backend":
            for request in requests:
                app.backend.mark_as_done(request.id, None, request=request)

    signals.worker_ready.connect(_write_ready_time)

elif os.environ.get(APP_ENV) == "celery":
    from celery import Celery, signals  # type: ignore[no-redef]
    from celery_batches import Batches  # type: ignore[no-redef]

    app = Celery("bench.batches_throughput", broker=os.environ.get("CELERIAC_BROKER_URL"),
                 backend=os.environ.get("CELERIAC_RESULT_BACKEND"))
    app.conf.broker_connection_retry_on_startup = True  # silences a start-up warning
    app.conf.worker_prefetch_multiplier = int(os.environ.get("BATCHES_BENCH_PREFETCH", "0"))

    @app.task(base=Batches, flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL)
    def batch(requests: list) -> None:
        """celery-batches stores nothing for an unmarked request: mark each, as its README."""
        for request in requests:
            app.backend.mark_as_done(request.id, None, request=request)

    signals.worker_ready.connect(_write_ready_time)


# ---- the client half: runs in either interpreter ----------------------------------------------
def client_main(argv: list[str]) -> None:
    """``client TASK N OUT``: enqueue N calls of ``batch`` or ``noop`` (kwargs ``{"n": i}`` for
    the batch requests): the first, which connects, untimed, then N - 1 timed (so N stays a
    multiple of flush_every: no partial batch waits for flush_interval at the end); writes the
    elapsed time and the N ids."""
    task_name, n, out = argv[0], int(argv[1]), argv[2]
    side = os.environ[APP_ENV]
    task = globals()[task_name]
    kwargs: Any = (lambda i: {"n": i}) if task_name == "batch" else (lambda i: {})
    if side == "celeriac":
        send_many = app.producer.send_many
        ids: list[str] = send_many([(task.name, (), kwargs(0), {})])  # connects, untimed
        start = time.perf_counter()
        for first in range(1, n, SEND_MANY_BATCH):
            ids.extend(send_many([(task.name, (), kwargs(i), {})
                                  for i in range(first, min(first + SEND_MANY_BATCH, n))]))
        elapsed = time.perf_counter() - start
    else:
        with app.producer_or_acquire() as producer:
            ids = [task.apply_async(kwargs=kwargs(0), producer=producer).id]  # connects
            start = time.perf_counter()
            for i in range(1, n):
                ids.append(task.apply_async(kwargs=kwargs(i), producer=producer).id)
            elapsed = time.perf_counter() - start
    Path(out).write_text(json.dumps({"elapsed": elapsed, "ids": ids}))


# ---- the runner half --------------------------------------------------------------------------
def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def celery_python() -> str:
    python = VENV / "bin" / "python"
    check = ("import celery, celery_batches, redis, sys; "
             "sys.exit(celery.VERSION[0] != 5)")
    if python.exists() and subprocess.run([python, "-c", check], capture_output=True,
                                          check=False).returncode == 0:
        return str(python)
    log(f"creating {VENV} with {' '.join(CELERY_REQUIREMENTS)} (once) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *CELERY_REQUIREMENTS], check=True)
    subprocess.run([python, "-c", check], check=True)
    return str(python)


def celery_versions(python: str) -> str:
    code = ("import celery, kombu, redis; from importlib.metadata import version; "
            "print(celery.__version__, version('celery-batches'), kombu.__version__, "
            "redis.__version__)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    celery, batches, kombu, redis_py = out.stdout.split()
    return f"celery {celery}, celery-batches {batches}, kombu {kombu}, redis-py {redis_py}"


@dataclass(frozen=True)
class Side:
    name: str  # celeriac or celery
    python: str
    worker_module: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Drain:
    """One measure: enqueue then drain of ``n`` calls on one worker."""

    enqueue_rate: float
    rate: float  # n / (last date_done - first date_done)
    rate_from_ready: float  # n / (last date_done - worker ready)
    rss_mb: float
    cpu_us: float  # worker tree CPU per request
    load: float
    missing: int = 0  # requests with no result when the results stopped coming


class Bench:
    def __init__(self, url: str, workdir: Path) -> None:
        import redis

        self.url = url
        self.workdir = workdir
        self.redis = redis.Redis.from_url(url)
        self.redis.ping()
        os.environ["CELERIAC_BROKER_URL"] = url
        os.environ["CELERIAC_RESULT_BACKEND"] = url

    def env(self, side: Side) -> dict[str, str]:
        env = dict(os.environ)
        env.update(side.env)
        env[APP_ENV] = side.name
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def enqueue(self, side: Side, task: str, n: int) -> dict[str, Any]:
        out = self.workdir / f"client-{side.name}.json"
        out.unlink(missing_ok=True)
        env = self.env(side)
        if side.name == "celery":
            # No result backend in Celery's client: with Redis results, each apply_async also
            # subscribes to the task's result channel (550 calls/s here); the worker stores
            # the results all the same, and the runner reads them from Redis.
            env.pop("CELERIAC_RESULT_BACKEND", None)
        proc = subprocess.run([side.python, str(Path(__file__).resolve()), "client", task,
                               str(n), str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the {side.name} client failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())

    @contextlib.contextmanager
    def worker(self, side: Side, pool: str | None, label: str) -> Iterator[Any]:
        from bench.run import WorkerProcess

        worker = WorkerProcess(self.workdir, label)
        pool_args = ["-P", pool, "-c", "1"] if pool else []
        worker.argv = [side.python, "-m", side.worker_module, "-A", "bench.batches_throughput",
                       "worker", *pool_args, "-l", "WARNING", "-n", f"bench-{label}@%h"]
        worker.ready_file.unlink(missing_ok=True)
        saved = dict(os.environ)
        os.environ.update(self.env(side))  # WorkerProcess copies os.environ
        try:
            with worker:
                yield worker
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def done_times(self, ids: Sequence[str], worker: Any, timeout: float,
                   stall: float) -> list[float]:
        """Wait for every result (the last id sent is watched first), check each succeeded,
        return each ``date_done`` as a timestamp. When no result was added for ``stall``
        seconds (celery-batches left the last requests of a 100,000 buffered for minutes),
        the results stored so far are returned; the caller counts the missing."""
        deadline = time.monotonic() + timeout
        keys, moved = -1, time.monotonic()
        while True:
            if self.redis.exists(META_PREFIX + ids[-1]):
                metas = self.metas(ids)
                if all(metas):
                    break
            now, size = time.monotonic(), self.redis.dbsize()
            if size != keys:
                keys, moved = size, now
            elif now - moved > stall:
                metas = self.metas(ids)
                log(f"  no result stored for {stall:.0f} s: "
                    f"{sum(1 for m in metas if m is None)} request(s) of {len(ids):,} never "
                    "got one")
                break
            worker.check_alive()
            if now > deadline:
                done = sum(1 for m in self.metas(ids) if m)
                raise RuntimeError(f"only {done}/{len(ids)} results after {timeout:.0f}s; "
                                   f"worker log:\n{worker.log_tail()}")
            time.sleep(0.05)
        found = [m for m in metas if m is not None]
        bad = [m for m in found if m["status"] != "SUCCESS"]
        if bad:
            raise RuntimeError(f"{len(bad)} request(s) did not succeed, e.g. {bad[0]!r}")
        return [datetime.fromisoformat(m["date_done"]).timestamp() for m in found]

    def metas(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        found: list[dict[str, Any] | None] = []
        for start in range(0, len(ids), 5000):
            keys = [META_PREFIX + i for i in ids[start:start + 5000]]
            found.extend(json.loads(v) if v is not None else None for v in self.redis.mget(keys))
        return found

    def measure(self, side: Side, task: str, pool: str | None, n: int) -> Drain:
        from bench.redis_vs_celery import peak_rss_mb, tree_cpu

        self.redis.flushdb()
        load = os.getloadavg()[0]
        sent = self.enqueue(side, task, n)
        ids = sent["ids"]
        label = f"{side.name}-{task}-{pool or 'default'}"
        with self.worker(side, pool, label) as worker:
            ready = worker.wait_ready(120)
            cpu_before = tree_cpu(worker.proc.pid)
            done = self.done_times(ids, worker, timeout=120 + n / 100,
                                   stall=6 * FLUSH_INTERVAL)
            cpu = tree_cpu(worker.proc.pid) - cpu_before
            rss = peak_rss_mb(worker.proc.pid)
        first, last = min(done), max(done)
        return Drain(enqueue_rate=(n - 1) / sent["elapsed"], rate=len(done) / (last - first),
                     rate_from_ready=len(done) / (last - ready), rss_mb=rss,
                     cpu_us=cpu / len(done) * 1e6, load=load, missing=n - len(done))


def summary(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """Median (min-max) over the rounds, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def format_table(results: dict[str, list[Drain]], requests: int, plain: int) -> str:
    header = ("measure", "N", "enqueue/s", "drain req/s (first->last)", "from ready",
              "worker peak RSS MB", "worker CPU µs/req", "no result")
    rows = [header]
    for name, drains in results.items():
        n = plain if name.startswith("celeriac plain") else requests
        rows.append((name, f"{n:,}", summary([d.enqueue_rate for d in drains]),
                     summary([d.rate for d in drains]),
                     summary([d.rate_from_ready for d in drains]),
                     summary([d.rss_mb for d in drains]),
                     summary([d.cpu_us for d in drains]),
                     summary([d.missing for d in drains])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        client_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000,
                        help="batch requests per measure (default 100000)")
    parser.add_argument("--plain", type=int, default=20_000,
                        help="plain no-op tasks per reference drain (default 20000; 0 skips)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server, without a database")
    parser.add_argument("--db", type=int, default=10,
                        help="database, flushed before every measure (default 10: no test or "
                             "other bench uses it)")
    parser.add_argument("--celery-prefetch", type=int, default=0, metavar="M",
                        help="Celery's worker_prefetch_multiplier (default 0, the first of "
                             "celery-batches' two settings; the other: M x concurrency > 100)")
    parser.add_argument("--mark", choices=["none", "task", "backend"], default="none",
                        help="celeriac's batch body: leave requests unmarked (default), "
                             "batch.mark_as_done(request, None) each, or "
                             "app.backend.mark_as_done(request.id, None, request=request) each")
    parser.add_argument("--pools", default="default,solo",
                        help="worker kinds, comma separated: default (no -P/-c), solo, prefork "
                             "(-c 1 each for the last two)")
    parser.add_argument("--celery-pools", default="solo",
                        help="worker kinds for celery-batches (default solo: one process, "
                             "as the issue asks; the default worker takes twice as long)")
    parser.add_argument("--celeriac-prefetch", type=int, metavar="M",
                        help="a diagnostic: celeriac's worker_prefetch_multiplier (default: "
                             "not set, celeriac's default)")
    parser.add_argument("--celeriac-only", action="store_true", help="skip Celery")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure")
    args = parser.parse_args(argv)

    from bench.run import _exit_on_signal, machine_summary, revision

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    celeriac_env = {MARK_ENV: args.mark}
    if args.celeriac_prefetch is not None:
        celeriac_env["BATCHES_BENCH_CELERIAC_PREFETCH"] = str(args.celeriac_prefetch)
    sides = [Side("celeriac", sys.executable, "celeriac.cli.main", celeriac_env)]
    against = "no Celery"
    if not args.celeriac_only:
        python = celery_python()
        sides.append(Side("celery", python, "celery",
                          {"BATCHES_BENCH_PREFETCH": str(args.celery_prefetch)}))
        against = celery_versions(python)
    pools = [None if p == "default" else p for p in args.pools.split(",")]
    celery_pools = [None if p == "default" else p for p in args.celery_pools.split(",")]
    url = f"{args.redis.rstrip('/')}/{args.db}"
    measured, started = revision(), time.perf_counter()
    loads = [os.getloadavg()]
    log(f"celeriac {measured} against {against} on {url}")
    results: dict[str, list[Drain]] = {}
    with tempfile.TemporaryDirectory(prefix="celeriac-batches-bench-") as tmp:
        bench = Bench(url, Path(tmp))
        server = bench.redis.info("server")["redis_version"]
        try:
            for number in range(1, args.rounds + 1):
                log(f"---- round {number} of {args.rounds}")
                for pool in pools:
                    kind = f"-P {pool} -c 1" if pool else "default worker"
                    for side in sides:
                        if side.name == "celery" and pool not in celery_pools:
                            continue
                        who = ("celeriac Batches" if side.name == "celeriac"
                               else "celery-batches")
                        name = f"{who}, {kind}"
                        log(f"{name}: enqueue {args.requests:,}, then drain ...")
                        d = bench.measure(side, "batch", pool, args.requests)
                        results.setdefault(name, []).append(d)
                        log(f"  {d.enqueue_rate:,.0f} enqueued/s, {d.rate:,.0f} req/s "
                            f"({d.rate_from_ready:,.0f} from ready), RSS {d.rss_mb:.0f} MB, "
                            f"load {d.load:.1f}, {d.missing} without a result")
                    if args.plain:
                        name = f"celeriac plain noop, {kind}"
                        log(f"{name}: enqueue {args.plain:,}, then drain ...")
                        d = bench.measure(sides[0], "noop", pool, args.plain)
                        results.setdefault(name, []).append(d)
                        log(f"  {d.enqueue_rate:,.0f} enqueued/s, {d.rate:,.0f} tasks/s "
                            f"({d.rate_from_ready:,.0f} from ready), load {d.load:.1f}")
                loads.append(os.getloadavg())
                if args.rounds > 1:
                    print(f"\nround {number}\n" + format_table(
                        {k: [v[-1]] for k, v in results.items()}, args.requests, args.plain),
                        flush=True)
        finally:
            bench.redis.flushdb()
    if args.json:
        args.json.write_text(json.dumps({k: [vars(d) for d in v] for k, v in results.items()},
                                        indent=1))
    print()
    print(f"celeriac {measured} against {against}; redis-server {server} at {url} as broker "
          f"and result store; celeriac batch body: mark={args.mark}"
          + ("" if args.celeriac_prefetch is None else
             f", celeriac worker_prefetch_multiplier={args.celeriac_prefetch} (diagnostic)")
          + f"; Celery worker_prefetch_multiplier={args.celery_prefetch}")
    print(f"machine: {machine_summary()}")
    print(f"run at {datetime.now().astimezone().isoformat(timespec='seconds')}, took "
          f"{time.perf_counter() - started:.0f} s; load averages (1/5/15 min) at the start and "
          "after each round: " + "; ".join("/".join(f"{x:.1f}" for x in la) for la in loads))
    print()
    print(format_table(results, args.requests, args.plain))
    for pool in pools:
        kind = f"-P {pool} -c 1" if pool else "default worker"
        mine = results.get(f"celeriac Batches, {kind}")
        plain = results.get(f"celeriac plain noop, {kind}")
        theirs = results.get(f"celery-batches, {kind}")
        if mine:
            rate = statistics.median(d.rate for d in mine)
            line = f"{kind}: celeriac Batches {rate:,.0f} req/s (target 10,000: " \
                   f"{'met' if rate >= 10000 else 'NOT met'})"
            if plain:
                line += f", {rate / statistics.median(d.rate for d in plain):.1f}x plain noop"
            if theirs:
                line += f", {rate / statistics.median(d.rate for d in theirs):.1f}x celery-batches"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
