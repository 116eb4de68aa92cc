"""celeriac side by side with its peers (Celery 5, Dramatiq 2, Huey 2): one command, one table.

Layer: bench (outside the package; pytest never runs it). Run from anywhere as
``python bench/peers.py [--sides ...] [--measures ...] [--rounds N] [--tasks N] [--samples N]
[--json FILE] [--smoke]``; ``--help`` lists the sides and measures. Issue 17's comparison:

- sides: celeriac on Redis, celeriac on SQLite (the embedded default, a temporary file per
  measure), Celery 5 on Redis, Dramatiq 2 on RabbitMQ and on Redis, Huey 2 on Redis (group
  ``issue17``, the default); for issue 12 item 8 (group ``issue12``), celeriac and Celery 5 on
  RabbitMQ, celeriac also without publisher confirms, beside Dramatiq on RabbitMQ. Every peer
  runs from its own virtualenv, bench/.venv-<peer> (git-ignored), made on first use with
  ``python -m venv`` and a pinned major (PEER_REQUIREMENTS), never in this interpreter.
- measures: the ``delay()`` loop, the bulk paths, a drain by a solo/minimal worker and by each
  side's default worker, round trips on the default worker, and a 10k fan-in (chord or its
  nearest equivalent). MEASURE_DOCS says per side exactly what each runs.

Every measure runs each side in turn, the order rotating by one side per round, so a change
in the machine's load spreads over all sides; the table gives each cell's median over the
rounds and its min-max, then issue 17's targets marked met or NOT met, and issue 12 item 8's
when celeriac on RabbitMQ and Dramatiq on RabbitMQ both ran (scaled by Dramatiq's and Celery's
figures in the same run: ISSUE12_NOTE). Workers are real
subprocesses, each in its own process group, killed at the end even on error (bench/run.py's
WorkerProcess); every client (enqueue loop, result wait, round trips, fan-in) is a subprocess
in the side's own interpreter, started as ``python bench/peers.py client KIND MEASURE ...``, so
this file imports neither celeriac nor any peer at the top. A run holds one Redis database
(``--db``, locked against a second run, refused when not empty, flushed before every measure
and at the end) and one RabbitMQ virtual host made for it and deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
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
if str(ROOT) not in sys.path:  # ``python bench/peers.py`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

SEND_MANY_BATCH = 500  # tasks per ``app.producer.send_many`` call in the bulk measure
POLL = 0.02  # seconds between the result waits' cheap checks
PEER_REQUIREMENTS = {
    "celery": ("celery[redis]==5.*",),
    "dramatiq": ("dramatiq[rabbitmq,redis]==2.*",),
    "huey": ("huey==2.*", "redis"),
}
PEER_CHECKS = {  # run in the virtualenv: exit 0 when the right major is installed
    "celery": "import celery, redis, sys; sys.exit(celery.VERSION[0] != 5)",
    "dramatiq": "import dramatiq, pika, redis, sys; sys.exit(dramatiq.__version__[:2] != '2.')",
    "huey": "import huey, redis, sys; sys.exit(huey.__version__[:2] != '2.')",
}
APP_MODULES = {
    "celeriac": "bench.bench_tasks",
    "celery": "bench.celery_bench_tasks",
    "dramatiq": "bench.dramatiq_bench_tasks",
    "huey": "bench.huey_bench_tasks",
}
HUEY_ROUND_TRIP_POLL = 0.0005  # Huey's get(blocking=True) first sleeps 100 ms; capped to this
HUEY_GROUP_POLL = 0.05  # the fan-in's ResultGroup.get() poll cap (Huey's default: 1 s)


# ================================================================================================
# The client half: runs in the side's interpreter, so it imports only that side's library.
# ================================================================================================
class CelerySideClient:
    """celeriac and Celery 5 share an API: ``delay``, ``group``, ``chord``, stored metas."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.module = importlib.import_module(APP_MODULES[kind])
        self.app, self.noop = self.module.app, self.module.noop
        self.group = importlib.import_module(kind).group  # the bench apps do not import it

    def send(self) -> str:
        return str(self.noop.delay().id)

    def send_bulk(self, method: str, n: int) -> list[str]:
        if method == "send_many":
            if self.kind != "celeriac":
                raise SystemExit(f"{self.kind} has no send_many")
            call: tuple[str, tuple[()], dict[str, Any], dict[str, Any]] = (
                self.noop.name, (), {}, {})
            ids: list[str] = []
            for first in range(0, n, SEND_MANY_BATCH):
                ids.extend(self.app.producer.send_many([call] * min(SEND_MANY_BATCH, n - first)))
            return ids
        result = self.group(self.noop.s() for _ in range(n)).apply_async()
        return [r.id for r in result.results]

    def metas(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        backend = self.app.backend
        if self.kind == "celeriac":
            found = backend.get_many_meta(ids)
            return [None if found[i]["status"] == "PENDING" else found[i] for i in ids]
        raws = backend.mget([backend.get_key_for_task(i) for i in ids])
        return [None if raw is None else backend.decode_result(raw) for raw in raws]

    def done_times(self, ids: Sequence[str]) -> list[float | None]:
        out: list[float | None] = []
        for meta in self.metas(ids):
            if meta is None:
                out.append(None)
            elif meta["status"] != "SUCCESS":
                raise SystemExit(f"a task ended {meta['status']}: {meta!r}")
            else:
                out.append(datetime.fromisoformat(meta["date_done"]).timestamp())
        return out

    def round_trip(self) -> None:
        self.noop.delay().get(timeout=30)

    def fan_in(self, n: int, timeout: float) -> dict[str, Any]:
        """``chord([noop.s()] * n)(count.s())``; done when the body's result is stored (its
        ``date_done``), watched every 20 ms (Celery's own ``get()`` on a 10k chord was seen to
        take minutes longer than the body)."""
        header = [self.noop.s() for _ in range(n)]
        started = time.time()
        body = self.module.chord(header)(self.module.count.s())
        submitted = time.time()
        deadline = time.monotonic() + timeout
        while True:
            meta = self.metas([body.id])[0]
            if meta is not None and meta["status"] in ("SUCCESS", "FAILURE"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the chord body had not finished after {timeout:.0f} s")
            time.sleep(POLL)
        if meta["status"] != "SUCCESS" or meta["result"] != n:
            raise SystemExit(f"the chord body did not count {n} results: {meta!r}")
        return {"started": started, "submitted": submitted,
                "done": datetime.fromisoformat(meta["date_done"]).timestamp()}


class DramatiqSideClient:
    """Dramatiq 2: ``send``, ``group`` with a completion callback, the Results middleware."""

    def __init__(self) -> None:
        import dramatiq

        self.dramatiq = dramatiq
        self.module = importlib.import_module(APP_MODULES["dramatiq"])
        self.noop, self.backend = self.module.noop, self.module.result_backend

    def send(self) -> str:
        return str(self.noop.send().message_id)

    def send_bulk(self, method: str, n: int) -> list[str]:
        if method != "group":
            raise SystemExit(f"dramatiq has no {method}")
        messages = [self.noop.message() for _ in range(n)]
        self.dramatiq.group(messages).run()
        return [m.message_id for m in messages]

    def done_times(self, ids: Sequence[str]) -> list[float | None]:
        keys = [self.backend.build_message_key(self.dramatiq.Message(
            queue_name=self.noop.queue_name, actor_name=self.noop.actor_name, args=(),
            kwargs={}, options={}, message_id=i)) for i in ids]
        with self.backend.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lindex(key, 0)
            raws = pipe.execute()
        return [None if raw is None else float(self.backend.unwrap_result(
            self.backend.encoder.decode(raw))) for raw in raws]

    def round_trip(self) -> None:
        self.noop.send().get_result(block=True, timeout=30_000)

    def fan_in(self, n: int, timeout: float) -> dict[str, Any]:
        """``group([noop.message()] * n)`` with ``done`` as its completion callback (Dramatiq's
        nearest to a chord: the callback runs once every member has, but gets no results)."""
        callback = self.module.done.message()
        messages = [self.noop.message() for _ in range(n)]
        started = time.time()
        group = self.dramatiq.group(messages)
        group.add_completion_callback(callback)
        group.run()
        submitted = time.time()
        # Polled, not a blocking get_result: a BRPOPLPUSH longer than the Redis client's socket
        # timeout fails. The callback's return value says when it ran, so polling costs no
        # precision.
        from dramatiq.results import ResultMissing

        deadline = time.monotonic() + timeout
        while True:
            try:
                done = callback.get_result(block=False)
                break
            except ResultMissing:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the completion callback had not run after {timeout:.0f} s"
                                     ) from None
                time.sleep(POLL)
        return {"started": started, "submitted": submitted, "done": float(done)}


class HueySideClient:
    """Huey 2: ``task()``, ``task.map``, results peeked in the storage's hash."""

    def __init__(self) -> None:
        self.module = importlib.import_module(APP_MODULES["huey"])
        self.huey, self.noop = self.module.huey, self.module.noop

    def send(self) -> str:
        return str(self.noop().id)

    def send_bulk(self, method: str, n: int) -> list[str]:
        if method != "group":
            raise SystemExit(f"huey has no {method}")
        return [r.id for r in self.noop.map([()] * n)]

    def done_times(self, ids: Sequence[str]) -> list[float | None]:
        storage = self.huey.storage
        raws = storage.conn.hmget(storage.result_key, list(ids))
        return [None if raw is None else float(self.huey.serializer.deserialize(raw))
                for raw in raws]

    def round_trip(self) -> None:
        self.noop().get(blocking=True, timeout=30, max_delay=HUEY_ROUND_TRIP_POLL)

    def fan_in(self, n: int, timeout: float) -> dict[str, Any]:
        """``noop.map`` of n calls, the client ``get()``s every result, then sends them to
        ``count`` and waits for it (Huey has no chord: this is the group-and-get equivalent)."""
        started = time.time()
        group = self.noop.map([()] * n)
        submitted = time.time()
        values = group.get(blocking=True, timeout=timeout, max_delay=HUEY_GROUP_POLL)
        counted, done = self.module.count(values).get(blocking=True, timeout=timeout,
                                                      max_delay=HUEY_ROUND_TRIP_POLL)
        if counted != n:
            raise SystemExit(f"count saw {counted} results, not {n}")
        return {"started": started, "submitted": submitted, "done": float(done)}


def side_client(kind: str) -> Any:
    if kind in ("celeriac", "celery"):
        return CelerySideClient(kind)
    return DramatiqSideClient() if kind == "dramatiq" else HueySideClient()


def wait_done(client: Any, ids: list[str], timeout: float) -> list[float]:
    """Every task's finish time, once all have one. Only the last still-missing id is read
    each poll (queues are near FIFO, so it is among the last to finish); when it is done, the
    rest of the missing ones are read, in chunks, and the watch moves to the new last one."""
    deadline = time.monotonic() + timeout
    done: dict[str, float] = {}
    missing = list(ids)
    while missing:
        if client.done_times(missing[-1:])[0] is not None:
            for start in range(0, len(missing), 2000):
                chunk = missing[start:start + 2000]
                done.update((i, t) for i, t in zip(chunk, client.done_times(chunk), strict=True)
                            if t is not None)
            missing = [i for i in missing if i not in done]
            continue
        if time.monotonic() > deadline:
            # the watch reads one id a poll: count every one now, so a lost task shows as such
            finished = len(done) + sum(
                t is not None for start in range(0, len(missing), 2000)
                for t in client.done_times(missing[start:start + 2000]))
            raise SystemExit(f"only {finished}/{len(ids)} results after {timeout:.0f} s")
        time.sleep(POLL)
    return [done[i] for i in ids]


def client_main(argv: list[str]) -> None:
    """``client KIND enqueue N OUT``, ``client KIND bulk METHOD N OUT``, ``client KIND wait
    IDS_FILE TIMEOUT OUT``, ``client KIND latency SAMPLES WARMUP OUT`` or ``client KIND fan_in N
    TIMEOUT OUT``."""
    kind, measure, out = argv[0], argv[1], Path(argv[-1])
    client = side_client(kind)
    report: dict[str, Any]
    if measure == "enqueue":
        n = int(argv[2])
        ids = [client.send()]  # connects (and declares) outside the timed loop
        start = time.perf_counter()
        for _ in range(n):
            ids.append(client.send())
        report = {"elapsed": time.perf_counter() - start, "ids": ids}
    elif measure == "bulk":
        method, n = argv[2], int(argv[3])
        ids = [client.send()]
        start = time.perf_counter()
        ids += client.send_bulk(method, n)
        report = {"elapsed": time.perf_counter() - start, "ids": ids}
    elif measure == "wait":
        ids = json.loads(Path(argv[2]).read_text())
        report = {"done": wait_done(client, ids, float(argv[3]))}
    elif measure == "latency":
        samples, warmup = int(argv[2]), int(argv[3])
        for _ in range(warmup):
            client.round_trip()
        trips = []
        for _ in range(samples):
            start = time.perf_counter()
            client.round_trip()
            trips.append(time.perf_counter() - start)
        report = {"trips": trips}
    elif measure == "fan_in":
        report = client.fan_in(int(argv[2]), float(argv[3]))
    else:
        raise SystemExit(f"unknown client measure {measure!r}")
    out.write_text(json.dumps(report))


# ================================================================================================
# The runner half: this interpreter (celeriac's); imports bench.run's helpers where used.
# ================================================================================================
@dataclass(frozen=True)
class SideSpec:
    """One column: which library, on which broker, and its solo and default worker flags."""

    name: str
    title: str
    kind: str
    broker: str  # redis, sqlite or amqp
    solo_args: tuple[str, ...]
    bulk_methods: tuple[str, ...]
    #: "1" or "0": the RabbitMQ publisher-confirm setting its app gets (CONFIRM_PUBLISH_ENV,
    #: read by bench_tasks.py and celery_bench_tasks.py); "": the library's own default
    confirm_publish: str = ""


SIDES = {
    "celeriac-redis": SideSpec("celeriac-redis", "celeriac Redis", "celeriac", "redis",
                               ("-P", "solo", "-c", "1"), ("send_many", "group")),
    "celeriac-sqlite": SideSpec("celeriac-sqlite", "celeriac SQLite", "celeriac", "sqlite",
                                ("-P", "solo", "-c", "1"), ("send_many", "group")),
    "celery-redis": SideSpec("celery-redis", "Celery 5 Redis", "celery", "redis",
                             ("-P", "solo", "-c", "1"), ("group",)),
    "dramatiq-rabbitmq": SideSpec("dramatiq-rabbitmq", "Dramatiq 2 RabbitMQ", "dramatiq", "amqp",
                                  ("--processes", "1", "--threads", "1"), ("group",)),
    "dramatiq-redis": SideSpec("dramatiq-redis", "Dramatiq 2 Redis", "dramatiq", "redis",
                               ("--processes", "1", "--threads", "1"), ("group",)),
    "huey-redis": SideSpec("huey-redis", "Huey 2 Redis", "huey", "redis",
                           ("--workers", "1", "--worker-type", "thread"), ("group",)),
    # Issue 12 item 8: RabbitMQ in the run's vhost as broker, results in the run's Redis db.
    "celeriac-amqp": SideSpec("celeriac-amqp", "celeriac RabbitMQ", "celeriac", "amqp",
                              ("-P", "solo", "-c", "1"), ("send_many", "group")),
    "celeriac-amqp-noconfirm": SideSpec("celeriac-amqp-noconfirm", "celeriac RabbitMQ, no confirms",
                                        "celeriac", "amqp", ("-P", "solo", "-c", "1"),
                                        ("send_many", "group"), confirm_publish="0"),
    "celery-amqp": SideSpec("celery-amqp", "Celery 5 RabbitMQ", "celery", "amqp",
                            ("-P", "solo", "-c", "1"), ("group",)),
}
#: ``--sides`` shorthands. issue17 (the default): its comparison; issue12: item 8's, RabbitMQ.
SIDE_GROUPS = {
    "issue17": ("celeriac-redis", "celeriac-sqlite", "celery-redis", "dramatiq-rabbitmq",
                "dramatiq-redis", "huey-redis"),
    "issue12": ("celeriac-amqp", "celeriac-amqp-noconfirm", "celery-amqp", "dramatiq-rabbitmq"),
}
#: how the bench apps are told the confirm setting (bench_tasks.CONFIRM_PUBLISH_ENV)
CONFIRM_PUBLISH_ENV = "CELERIAC_BENCH_CONFIRM_PUBLISH"
#: the queues a RabbitMQ side's tasks go to: Dramatiq's, then celeriac's and Celery's default
AMQP_QUEUES = ("default", "default.DQ", "default.XQ", "celery")
MEASURES = ("enqueue", "bulk", "drain-solo", "drain-default", "latency", "chord")
MEASURE_DOCS = """\
enqueue        one fresh producer process; one untimed call (connects), then N timed calls:
               celeriac and Celery noop.delay(); Dramatiq noop.send(); Huey noop(). The next
               measure, the solo drain, empties what it left (N + 1 tasks). On RabbitMQ,
               celeriac's delay() returns once the broker confirmed the persistent message
               (its default); celeriac-amqp-noconfirm, Celery and Dramatiq publish without
               publisher confirms (their defaults). Results: the run's Redis db, every side.
bulk           a fresh producer; one untimed call, then N tasks in one timed bulk call:
               celeriac app.producer.send_many (500 a call) and group(noop.s() x N).apply_async();
               Celery group(...).apply_async(); Dramatiq group([noop.message()] x N).run();
               Huey noop.map([()] x N) (the last three publish one message at a time).
drain-solo     the queued tasks, then one worker started; from its ready moment (celeriac and
               Celery: the worker_ready signal; Dramatiq: the first process's after_worker_boot;
               Huey: the worker's on_startup hook) to the latest finish time among the results
               (celeriac and Celery: date_done; Dramatiq and Huey: the time noop returns, as they
               store no finish time). Worker: celeriac and Celery `worker -P solo -c 1`; Dramatiq
               `dramatiq --processes 1 --threads 1`; Huey `huey_consumer --workers 1
               --worker-type thread` (its defaults). Also the worker's CPU (all its processes and
               threads) per task over the drain.
drain-default  the same with each side's default worker, no options: celeriac `worker` and
               Celery `worker` (prefork, one child per CPU); Dramatiq `dramatiq MODULE` (a
               process per CPU x 8 threads); Huey `huey_consumer MODULE.huey` (one thread).
               N tasks queued untimed first (celeriac: send_many; the others: their loop).
latency        the default worker idle and ready; after W untimed warm-up calls, S sequential
               round trips timed in the client: celeriac/Celery noop.delay().get(); Dramatiq
               noop.send().get_result(block=True) (a blocking Redis pop); Huey noop().get(
               blocking=True, max_delay=0.5 ms) (its default first poll sleeps 100 ms).
chord          the default worker idle and ready; from just before the submit to the fan-in
               step's finish: celeriac and Celery chord([noop.s()] x C)(count.s()), the body's
               date_done; Dramatiq group of C with a completion callback (it gets no results),
               the time the callback ran; Huey noop.map of C, the client's ResultGroup.get()
               (polling every 50 ms at most), then count(results) and its run time.
"""
ROW_ORDER = (("enqueue", "enqueue: delay() loop", "tasks/s"),
             ("bulk:send_many", "bulk: send_many, 500 a call", "tasks/s"),
             ("bulk:group", "bulk: group of N", "tasks/s"),
             ("drain-solo", "drain: solo / minimal worker", "tasks/s"),
             ("drain-solo:cpu", "  worker CPU per task, solo", "µs"),
             ("drain-default", "drain: default worker", "tasks/s"),
             ("drain-default:cpu", "  worker CPU per task, default", "µs"),
             ("latency:p50", "round trip p50, default worker", "ms"),
             ("latency:p99", "round trip p99, default worker", "ms"),
             ("chord", "fan-in of C, default worker, done", "s"))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def peer_python(kind: str) -> str:
    """The interpreter of bench/.venv-<kind>, made (venv + pip install of the pinned major)
    the first time; this interpreter for celeriac."""
    if kind == "celeriac":
        return sys.executable
    venv = ROOT / "bench" / f".venv-{kind}"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", PEER_CHECKS[kind]], capture_output=True,
                                          check=False).returncode == 0:
        return str(python)
    log(f"creating {venv} with {' '.join(PEER_REQUIREMENTS[kind])} (once; later runs reuse it)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS[kind]],
                   check=True)
    subprocess.run([python, "-c", PEER_CHECKS[kind]], check=True)
    return str(python)


def peer_version(python: str, kind: str) -> str:
    module = {"celeriac": "celeriac", "celery": "celery", "dramatiq": "dramatiq",
              "huey": "huey"}[kind]
    out = subprocess.run([python, "-c", f"import {module}; print({module}.__version__)"],
                         capture_output=True, text=True, check=False, cwd=ROOT)
    return f"{kind} {out.stdout.strip() or '?'}"


class RedisDatabase:
    """The run's Redis database, held through the lock file the tests' databases use
    (/tmp/celeriac-test-redis-db<N>.lock, so neither a test nor a second run shares it) and
    taken only when empty; flushed before every measure and at the end."""

    # No database is free of every user here. The tests' sets (1-9, 11-15) take this lock; a
    # contract test uses 0 and other benches default to 0, 7, 10 and 14 without it. First come
    # the interop tests' (they have four to choose from), then the rest, 0 last.
    PREFERENCE = (15, 12, 13, 10, 9, 7, 14, 11, 8, 6, 5, 4, 3, 2, 1, 0)

    def __init__(self, server: str, db: int | None) -> None:
        import fcntl

        import redis

        tried = []
        for number in (db,) if db is not None else self.PREFERENCE:
            lock = open(f"/tmp/celeriac-test-redis-db{number}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                tried.append(f"{number} (locked)")
                continue
            client = redis.Redis.from_url(f"{server.rstrip('/')}/{number}")
            keys = client.dbsize()
            if keys:
                client.close()
                lock.close()
                tried.append(f"{number} ({keys} keys)")
                continue
            self.db, self.url, self.client, self._lock = (
                number, f"{server.rstrip('/')}/{number}", client, lock)
            self.version = client.info("server")["redis_version"]
            return
        raise SystemExit(f"no Redis database free for the run: {', '.join(tried)}; "
                         f"pick an empty one with --db")

    def flush(self) -> None:
        self.client.flushdb()

    def close(self) -> None:
        try:
            self.client.flushdb()
            self.client.close()
        finally:
            self._lock.close()


class Bench:
    """Where each side's broker and store are, and running its clients and workers there."""

    def __init__(self, workdir: Path, redis_db: RedisDatabase, vhost: Any | None,
                 pythons: dict[str, str]) -> None:
        self.workdir = workdir
        self.redis = redis_db
        self.vhost = vhost
        self.pythons = pythons
        self.sqlite_dir: Path | None = None

    def prepare(self, side: SideSpec) -> None:
        """Empty stores for the next measure: the Redis database flushed, the vhost's task
        queues purged, a new SQLite file; the URLs (and the side's confirm setting) go to the
        environment the subprocesses get."""
        self.redis.flush()
        broker = result = self.redis.url
        if side.broker == "amqp":
            assert self.vhost is not None
            for queue in AMQP_QUEUES:
                self.vhost.empty(queue)
            broker = self.vhost.url
        elif side.broker == "sqlite":
            if self.sqlite_dir is not None:
                shutil.rmtree(self.sqlite_dir, ignore_errors=True)
            self.sqlite_dir = Path(tempfile.mkdtemp(prefix="sqlite-", dir=self.workdir))
            broker = result = f"sqlite:///{self.sqlite_dir / 'peers.db'}"
        os.environ["CELERIAC_BROKER_URL"], os.environ["CELERIAC_RESULT_BACKEND"] = broker, result
        if side.confirm_publish:
            os.environ[CONFIRM_PUBLISH_ENV] = side.confirm_publish
        else:
            os.environ.pop(CONFIRM_PUBLISH_ENV, None)

    def _client_cmd(self, side: SideSpec, args: Sequence[object], out: Path) -> list[str]:
        return [self.pythons[side.kind], str(Path(__file__).resolve()), "client", side.kind,
                *map(str, args), str(out)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def client(self, side: SideSpec, *args: object, timeout: float = 900) -> dict[str, Any]:
        out = self.workdir / f"client-{side.name}.json"
        out.unlink(missing_ok=True)
        proc = subprocess.run(self._client_cmd(side, args, out), cwd=ROOT, env=self._env(),
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the {side.name} client ({args[0]}) failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())

    def wait_done(self, side: SideSpec, ids: list[str], worker: Any,
                  timeout: float) -> list[float]:
        """A waiting client in the side's interpreter, the worker checked alive meanwhile."""
        ids_file, out = self.workdir / "ids.json", self.workdir / f"wait-{side.name}.json"
        ids_file.write_text(json.dumps(ids))
        out.unlink(missing_ok=True)
        errors = self.workdir / "wait.err"
        with open(errors, "w") as err:
            proc = subprocess.Popen(self._client_cmd(side, ["wait", ids_file, timeout], out),
                                    cwd=ROOT, env=self._env(), stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        try:
            while proc.poll() is None:
                worker.check_alive()
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode != 0:
            log(self.stall_report(side, worker))
            raise RuntimeError(f"waiting for {side.name}'s results failed: "
                               f"{errors.read_text().strip()[-2000:]}")
        done: list[float] = json.loads(out.read_text())["done"]
        return done

    def stall_report(self, side: SideSpec, worker: Any) -> str:
        """What a failed wait leaves to go on (the run's files are deleted at its end): on
        RabbitMQ the vhost's queues (ready, unacked, consumers), and the worker's last lines."""
        parts = []
        if side.broker == "amqp" and self.vhost is not None:
            proc = subprocess.run(
                ["rabbitmqctl", "list_queues", "-q", "-p", self.vhost.name, "name",
                 "messages_ready", "messages_unacknowledged", "consumers"],
                capture_output=True, text=True, timeout=60, check=False)
            parts.append("queues (name, ready, unacked, consumers):\n"
                         + (proc.stdout.strip() or proc.stderr.strip()))
        parts.append("worker log:\n" + worker.log_tail(15))
        return "\n".join(f"    {line}" for part in parts for line in part.splitlines())

    @contextlib.contextmanager
    def worker(self, side: SideSpec, pool: str) -> Iterator[Any]:
        """A running worker of ``side``: ``pool`` is "solo" (the side's minimal flags) or
        "default" (no options at all)."""
        from bench.run import WorkerProcess

        python = self.pythons[side.kind]
        extra = list(side.solo_args) if pool == "solo" else []
        module = APP_MODULES[side.kind]
        if side.kind in ("celeriac", "celery"):
            main = "celeriac.cli.main" if side.kind == "celeriac" else "celery"
            argv = [python, "-m", main, "-A", module, "worker", *extra, "-l", "WARNING",
                    "-n", f"peers-{side.name}@%h"]
        elif side.kind == "dramatiq":
            argv = [python, "-m", "dramatiq", *extra, module]
        else:
            argv = [python, "-m", "huey.bin.huey_consumer", f"{module}.huey", *extra]
        worker = WorkerProcess(self.workdir, f"{side.name}-{pool}")
        worker.argv = argv
        worker.ready_file.unlink(missing_ok=True)
        with worker:
            yield worker


# ---- the measures: one cell (side x measure) each, returning {row key: figure} ---------------
def drain(bench: Bench, side: SideSpec, pool: str, ids: list[str]) -> dict[str, float]:
    from bench.redis_vs_celery import tree_cpu

    with bench.worker(side, pool) as worker:
        ready = worker.wait_ready(90)
        cpu_before = tree_cpu(worker.proc.pid)
        done = bench.wait_done(side, ids, worker, timeout=120 + len(ids) / 50)
        cpu = tree_cpu(worker.proc.pid) - cpu_before  # up to 0.1 s of polling lag included
    return {f"drain-{pool}": len(ids) / (max(done) - ready),
            f"drain-{pool}:cpu": cpu / len(ids) * 1e6}


def fill(bench: Bench, side: SideSpec, n: int) -> list[str]:
    """N tasks queued untimed, by the side's fastest path that publishes plain noop calls."""
    if "send_many" in side.bulk_methods:
        ids: list[str] = bench.client(side, "bulk", "send_many", n)["ids"]
    else:
        ids = bench.client(side, "enqueue", n)["ids"]
    return ids


def run_cell(bench: Bench, side: SideSpec, measure: str, args: argparse.Namespace,
             chosen: Sequence[str]) -> dict[str, float]:
    from bench.run import percentile

    bench.prepare(side)
    if measure == "enqueue":
        report = bench.client(side, "enqueue", args.tasks)
        figures = {"enqueue": args.tasks / report["elapsed"]}
        if "drain-solo" in chosen:  # the solo drain empties what the loop queued
            figures |= drain(bench, side, "solo", report["ids"])
        return figures
    if measure == "bulk":
        figures = {}
        for method in side.bulk_methods:
            bench.prepare(side)
            report = bench.client(side, "bulk", method, args.tasks)
            figures[f"bulk:{method}"] = args.tasks / report["elapsed"]
        return figures
    if measure in ("drain-solo", "drain-default"):
        pool = measure.removeprefix("drain-")
        return drain(bench, side, pool, fill(bench, side, args.tasks))
    if measure == "latency":
        with bench.worker(side, "default") as worker:
            worker.wait_ready(90)
            trips = sorted(bench.client(side, "latency", args.samples, args.warmup)["trips"])
        return {"latency:p50": percentile(trips, 50) * 1000,
                "latency:p99": percentile(trips, 99) * 1000}
    if measure == "chord":
        with bench.worker(side, "default") as worker:
            worker.wait_ready(90)
            report = bench.client(side, "fan_in", args.chord, args.chord_timeout,
                                  timeout=args.chord_timeout + 120)
        return {"chord": report["done"] - report["started"]}
    raise ValueError(measure)


@dataclass
class Results:
    """Every round's figure per (row key, side), and the cells that failed."""

    rounds: list[dict[str, dict[str, float]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def values(self, key: str, side: str) -> list[float]:
        return [r[key][side] for r in self.rounds if side in r.get(key, {})]

    def median(self, key: str, side: str) -> float | None:
        got = self.values(key, side)
        return statistics.median(got) if got else None


def run_round(bench: Bench, sides: list[SideSpec], measures: Sequence[str],
              args: argparse.Namespace, number: int, results: Results) -> None:
    figures: dict[str, dict[str, float]] = {}
    results.rounds.append(figures)
    order = [m for m in MEASURES if m in measures and not (m == "drain-solo" and "enqueue"
                                                              in measures)]
    for measure in order:
        shift = (number - 1) % len(sides)
        for side in sides[shift:] + sides[:shift]:
            label = "enqueue, then solo drain" if (measure == "enqueue" and "drain-solo"
                                                   in measures) else measure
            log(f"  {side.name}: {label} ...")
            try:
                got = run_cell(bench, side, measure, args, measures)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                first = str(exc).strip().splitlines()
                results.failures.append(f"round {number}, {side.name}, {measure}: "
                                        f"{first[-1] if first else exc!r}")
                log(f"    FAILED: {exc}")
                continue
            for key, value in got.items():
                figures.setdefault(key, {})[side.name] = value
            log("    " + ", ".join(f"{k} {fmt_number(v, k)}" for k, v in got.items()))


# ---- reporting ---------------------------------------------------------------------------------
def unit_of(key: str) -> str:
    return next(unit for k, _, unit in ROW_ORDER if k == key)


def fmt_number(value: float, key: str) -> str:
    unit = unit_of(key)
    if unit in ("tasks/s", "µs"):
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def format_table(results: Results, sides: list[SideSpec], args: argparse.Namespace) -> str:
    """A Markdown table: median (min-max) per cell over the rounds."""
    header = ["measure (unit)", *(s.title for s in sides)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key, title, unit in ROW_ORDER:
        if not any(results.values(key, s.name) for s in sides):
            continue
        title = title.replace("of C", f"of {args.chord:,}").replace("of N", f"of {args.tasks:,}")
        cells = [f"{title} ({unit})"]
        for side in sides:
            got = results.values(key, side.name)
            if not got:
                cells.append("-")
                continue
            cell = fmt_number(statistics.median(got), key)
            if len(got) > 1:
                cell += f" ({fmt_number(min(got), key)}-{fmt_number(max(got), key)})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: Results) -> list[str]:
    """Issue 17's targets from the medians; a target whose figures are missing is said so."""
    def m(key: str, side: str) -> float | None:
        return results.median(key, side)

    checks: list[tuple[str, str, bool] | str] = []

    def ratio(what: str, mine: float | None, theirs: float | None, bound: float,
              at_least: bool, theirs_name: str) -> None:
        if mine is None or theirs is None or theirs == 0:
            checks.append(f"  (not measured)  {what}")
            return
        r = mine / theirs
        ok = r >= bound if at_least else r <= bound
        checks.append((what, f"{r:.2f}x ({fmt_plain(mine)} vs {theirs_name} "
                             f"{fmt_plain(theirs)})", ok))

    def best(key: str, names: Sequence[str], low: bool = False) -> tuple[float | None, str]:
        got = [(v, n) for n in names if (v := m(key, n)) is not None]
        if not got:
            return None, "-"
        return (min(got) if low else max(got))

    for name in ("celeriac-redis", "celeriac-sqlite"):
        where = name.split("-")[1]
        ratio(f"default worker >= 1.6x solo, {where}", m("drain-default", name),
              m("drain-solo", name), 1.6, True, "solo")
        theirs, who = best("drain-default", ("dramatiq-rabbitmq", "dramatiq-redis"))
        ratio(f"default worker >= Dramatiq's default, {where}", m("drain-default", name), theirs,
              1.0, True, who)
    for key, what in (("enqueue", "enqueue"), ("drain-default", "default drain"),
                      ("drain-solo", "solo drain")):
        ratio(f"SQLite {what} within 1.5x of Redis (>= 0.67x)", m(key, "celeriac-sqlite"),
              m(key, "celeriac-redis"), 1 / 1.5, True, "Redis")
    ratio("SQLite p50 within 1.5x of Redis", m("latency:p50", "celeriac-sqlite"),
          m("latency:p50", "celeriac-redis"), 1.5, False, "Redis")
    ratio("SQLite chord within 1.5x of Redis", m("chord", "celeriac-sqlite"),
          m("chord", "celeriac-redis"), 1.5, False, "Redis")
    ratio("p50 <= 0.7x Dramatiq-on-RabbitMQ (Redis)", m("latency:p50", "celeriac-redis"),
          m("latency:p50", "dramatiq-rabbitmq"), 0.7, False, "Dramatiq RabbitMQ")
    ratio("p99 < 2x p50 (Redis)", m("latency:p99", "celeriac-redis"),
          m("latency:p50", "celeriac-redis"), 2.0, False, "p50")
    for peer in ("huey-redis", "dramatiq-rabbitmq", "dramatiq-redis"):
        ratio(f"enqueue >= 1.5x {peer} (Redis)", m("enqueue", "celeriac-redis"),
              m("enqueue", peer), 1.5, True, peer)
    for method in ("send_many", "group"):
        ratio(f"bulk ({method}) >= 10x the delay() loop (Redis)",
              m(f"bulk:{method}", "celeriac-redis"), m("enqueue", "celeriac-redis"), 10, True,
              "delay()")
    theirs, who = best("drain-solo", [s for s in SIDES if not s.startswith("celeriac")])
    ratio("solo drain >= 2x the best peer's single process (Redis)",
          m("drain-solo", "celeriac-redis"), theirs, 2.0, True, who)
    ratio("chord <= 0.5x Huey's (Redis)", m("chord", "celeriac-redis"), m("chord", "huey-redis"),
          0.5, False, "Huey")
    lines = []
    for check in checks:
        if isinstance(check, str):
            lines.append(check)
        else:
            what, got, ok = check
            lines.append(f"  {'met    ' if ok else 'NOT met'}  {what}: {got}")
    return lines


def fmt_plain(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


#: Issue 12 item 8, each check as (row key, what, celeriac's absolute target, the peer's figure
#: the issue set it against, that peer's side, whether more is better). The issue's figures
#: were measured on this machine on a faster day (one worker process), so a run compares with
#: the peer measured alongside: target / reference x the peer's figure now.
ISSUE12_CHECKS = (
    ("enqueue", "enqueue, delay() loop, vs Dramatiq RabbitMQ", 20000.0, 19000.0,
     "dramatiq-rabbitmq", True),
    ("drain-solo", "solo drain vs Dramatiq RabbitMQ's single process", 6000.0, 4800.0,
     "dramatiq-rabbitmq", True),
    ("latency:p50", "round trip p50, default worker, Redis results, vs Dramatiq RabbitMQ",
     0.6, 0.61, "dramatiq-rabbitmq", False),
    ("enqueue", "enqueue, delay() loop, vs Celery RabbitMQ", 20000.0, 4000.0, "celery-amqp",
     True),
)
ISSUE12_SIDES = ("celeriac-amqp", "celeriac-amqp-noconfirm")
ISSUE12_NOTE = """\
The issue's targets are absolute (enqueue >= 20,000/s, solo drain >= 6,000/s, p50 <= 0.6 ms),
written against Dramatiq on RabbitMQ at ~19,000/s, ~4,800/s and 0.61 ms and Celery on RabbitMQ
at ~4,000/s, measured here on a faster day. They are checked as the scaled reference: the ratio
to the same peer in this run must reach target/reference (20/19, 6.0/4.8, 0.6/0.61, 20/4); the
absolute figures are beside. Publishing differs: celeriac's delay() returns once RabbitMQ has
confirmed the persistent message (confirm_publish=True, its default); Dramatiq and Celery
publish without publisher confirms by default. celeriac-amqp-noconfirm sets
confirm_publish=False, as they do."""


def issue12_targets(results: Results, sides: Sequence[str]) -> list[str]:
    """Issue 12 item 8's checks for each celeriac RabbitMQ side in ``sides``, from the medians;
    empty unless one of them and Dramatiq on RabbitMQ both ran."""
    if "dramatiq-rabbitmq" not in sides:
        return []
    lines = []
    for mine in (s for s in ISSUE12_SIDES if s in sides):
        lines.append(f"  {SIDES[mine].title}:")
        for key, what, target, reference, peer, at_least in ISSUE12_CHECKS:
            bound = target / reference
            rule = f"{'>=' if at_least else '<='} {bound:.2f}x ({fmt_plain(target)}/" \
                   f"{fmt_plain(reference)})"
            got, theirs = results.median(key, mine), results.median(key, peer)
            if got is None or theirs is None or theirs == 0:
                lines.append(f"    (not measured)  {what} {rule}")
                continue
            ratio = got / theirs
            ok = ratio >= bound if at_least else ratio <= bound
            unit = unit_of(key)
            lines.append(f"    {'met    ' if ok else 'NOT met'}  {what} {rule}: {ratio:.2f}x; "
                         f"{fmt_plain(got)} vs {fmt_plain(theirs)} {unit}, scaled target "
                         f"{fmt_plain(bound * theirs)}, absolute target {fmt_plain(target)} "
                         f"{unit}")
    return lines


def parse_list(value: str, allowed: Sequence[str], what: str,
               groups: dict[str, Sequence[str]] | None = None) -> list[str]:
    """The comma-separated names, each group name replaced by its members (once each)."""
    chosen: list[str] = []
    for v in (v.strip() for v in value.split(",")):
        for name in (groups or {}).get(v, (v,) if v else ()):
            if name not in chosen:
                chosen.append(name)
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(allowed)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        client_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="what each measure runs, per side:\n" + MEASURE_DOCS)
    parser.add_argument("--sides", type=lambda v: parse_list(v, list(SIDES), "side",
                                                             SIDE_GROUPS),
                        default=list(SIDE_GROUPS["issue17"]),
                        help="comma-separated, from: " + ", ".join(SIDES) + "; or a group: "
                             + "; ".join(f"{g} = {', '.join(m)}" for g, m in SIDE_GROUPS.items())
                             + " (default: issue17)")
    parser.add_argument("--measures", type=lambda v: parse_list(v, MEASURES, "measure"),
                        default=list(MEASURES), help="comma-separated: " + ", ".join(MEASURES))
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each measure runs every side in turn, the order rotating "
                             "by one side per round (default 3)")
    parser.add_argument("--tasks", type=int, default=20000,
                        help="tasks per enqueue, bulk and drain measure (default 20000)")
    parser.add_argument("--samples", type=int, default=2000,
                        help="timed round trips per side (default 2000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips before them (default 200)")
    parser.add_argument("--chord", type=int, default=10000, metavar="C",
                        help="fan-in size (default 10000)")
    parser.add_argument("--chord-timeout", type=float, default=180.0,
                        help="seconds a fan-in may take before its cell counts as failed "
                             "(default 180)")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that every side runs: --tasks 300 --samples 50 "
                             "--warmup 10 --chord 300 --rounds 1 (explicit options still win)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server, without a database (default redis://127.0.0.1:6379)")
    parser.add_argument("--db", type=int, default=None,
                        help="Redis database for the run (default: the first of "
                             f"{', '.join(map(str, RedisDatabase.PREFERENCE))} that is empty and "
                             "not locked by a test or another run); locked, flushed before every "
                             "measure and at the end")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672",
                        help="RabbitMQ server, without a vhost; a vhost is made for the run with "
                             "rabbitmqctl and deleted at the end")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every round's figures (and failures) to FILE")
    args = parser.parse_args(argv)
    if args.smoke:
        given = set(argv)
        for option, value in (("--tasks", 300), ("--samples", 50), ("--warmup", 10),
                              ("--chord", 300), ("--rounds", 1)):
            if option not in given and not any(a.startswith(option + "=") for a in argv):
                setattr(args, option[2:], value)
    if min(args.tasks, args.samples, args.rounds, args.chord) < 1 or args.warmup < 0:
        parser.error("--tasks, --samples, --rounds and --chord must be at least 1, "
                     "--warmup at least 0")

    from bench.redis_vs_celery import AmqpVhost, calibration
    from bench.run import _exit_on_signal, machine_summary, revision

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    sides = [SIDES[name] for name in args.sides]
    pythons = {side.kind: peer_python(side.kind) for side in sides}
    library = ", ".join(peer_version(pythons[k], k) for k in dict.fromkeys(pythons))
    # A copy outside git (``git archive`` of a commit, to measure it while the shared tree
    # changes) names its commit through CELERIAC_BENCH_REVISION.
    measured = os.environ.get("CELERIAC_BENCH_REVISION") or revision()
    load_before, started = os.getloadavg(), time.perf_counter()
    log(f"celeriac {measured}; {library}; sides {', '.join(args.sides)}; measures "
        f"{', '.join(args.measures)}; {args.rounds} round(s)")
    results = Results()
    redis_db = RedisDatabase(args.redis, args.db)
    vhost = None
    try:
        if any(s.broker == "amqp" for s in sides):
            vhost = AmqpVhost(args.amqp)
        with tempfile.TemporaryDirectory(prefix="celeriac-peers-") as tmp:
            bench = Bench(Path(tmp), redis_db, vhost, pythons)
            speed = calibration()
            for number in range(1, args.rounds + 1):
                log(f"---- round {number} of {args.rounds} (load {os.getloadavg()[0]:.2f})")
                run_round(bench, sides, args.measures, args, number, results)
            speed_after = calibration()
    finally:
        if vhost is not None:
            vhost.close()
        redis_db.close()
    load_after = os.getloadavg()
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"commit": measured, "libraries": library,
                                         "settings": settings, "redis_db": redis_db.db,
                                         "rounds": results.rounds, "failures": results.failures,
                                         "load_before": load_before, "load_after": load_after},
                                        indent=1))
    print()
    print(f"celeriac {measured} against {library}; redis-server {redis_db.version} (db "
          f"{redis_db.db})" + (f", RabbitMQ {vhost.server_version} (vhost made for the run)"
                           if vhost is not None else ""))
    print(f"machine: {machine_summary()}; a fixed Python loop took {speed * 1000:.0f} ms "
          f"before and {speed_after * 1000:.0f} ms after (lower is faster)")
    print(f"run at {datetime.now().astimezone().isoformat(timespec='seconds')}, took "
          f"{time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) "
          f"{', '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{', '.join(f'{x:.2f}' for x in load_after)} after")
    print(f"{args.tasks:,} tasks per enqueue/bulk/drain, {args.samples:,} round trips after "
          f"{args.warmup} warm-up, fan-in of {args.chord:,}; median (min-max) of "
          f"{args.rounds} interleaved round(s); `--help` says what each row runs per side")
    print()
    print(format_table(results, sides, args))
    if results.failures:
        print("\nfailed cells (left out of the table):")
        print("\n".join(f"  {f}" for f in results.failures))
    issue17 = targets(results)
    if all("(not measured)" in line for line in issue17):
        print("\nissue 17's targets: none measured by these sides")
    else:
        print("\nissue 17's targets (medians):")
        print("\n".join(issue17))
    issue12 = issue12_targets(results, args.sides)
    if issue12:
        print("\nissue 12 item 8's targets (medians), scaled by the peers in this run:")
        print(ISSUE12_NOTE)
        print("\n".join(issue12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
