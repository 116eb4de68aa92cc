"""Run Celery's own integration tests against a celeriac worker and a Celery worker, side by side.

    python tests/celery_suite/run.py --broker redis --worker both
    python tests/celery_suite/run.py --broker amqp --worker celeriac -k chord

Celery 5.7.0's ``t/integration`` (from its sdist, downloaded once with ``pip download`` into a
cache directory, never into this repository) runs under pytest with Celery's own fixtures and a
real Celery client. Only the session worker changes: ``--worker celeriac`` starts a celeriac
worker subprocess loading Celery's ``t/integration/tasks.py`` through a ``celery`` shim
(``tests/celery_suite/plugin.py``); ``--worker celery`` keeps Celery's in-process worker. Each
run gets a Redis database of its own (results, the suite's side-channel keys, and the broker on
``--broker redis``) and, on ``--broker amqp``, a RabbitMQ virtual host of its own.

Exit status: 0 when every test that passes on Celery's worker passes on celeriac's or is listed in
``expected_failures.toml``; 1 otherwise (with only ``--worker celeriac``: when a test fails that is
not listed); 2 when the suite could not run at all. Opt-in: the default suite never runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests` importable
    sys.path.insert(0, str(REPO))

from tests.conftest import private_redis_db, private_vhost  # noqa: E402

CELERY_VERSION = "5.7.0"
DEFAULT_FILES = ("test_canvas.py", "test_tasks.py")
#: Redis databases these runs take (a lock file each, see tests/conftest.py); no other test
#: of ours uses them
SUITE_DBS = (7, 9)
REDIS_SERVER = "redis://127.0.0.1:6379"
EXPECTED_FAILURES = Path(__file__).resolve().parent / "expected_failures.toml"
#: xpassed: a test Celery marks as an expected failure (strictly) passes; pytest reports it as a
#: failure, this runner keeps it apart
OUTCOMES = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")


class SuiteError(Exception):
    """The suite could not be run (no sdist, wrong Celery installed, a broker is down)."""


# ---- the suite's files ----------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celeriac" / "celery-suite"


def ensure_suite(cache_dir: Path, sdist: Path | None) -> Path:
    """The directory holding Celery's ``t/`` and ``pyproject.toml`` (its pytest settings),
    extracted from the sdist, which is downloaded into ``cache_dir`` when not given or cached.

    Only ``t/`` and ``pyproject.toml`` are extracted: the sdist's ``celery/`` package would
    otherwise shadow the installed one (and the shim) for anything started in that directory.
    """
    suite_dir = cache_dir / f"celery-{CELERY_VERSION}"
    if (suite_dir / "t" / "integration" / "conftest.py").exists():
        return suite_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = sdist or cache_dir / f"celery-{CELERY_VERSION}.tar.gz"
    if not archive.exists():
        print(f"downloading the celery {CELERY_VERSION} sdist into {cache_dir}", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"celery=={CELERY_VERSION}",
             "--no-binary", ":all:", "--no-deps", "--dest", str(cache_dir)],
            capture_output=True, text=True)
        if done.returncode or not archive.exists():
            raise SuiteError(f"pip download celery=={CELERY_VERSION} failed: "
                             f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    prefix = f"celery-{CELERY_VERSION}/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix + "t/") or m.name == prefix + "pyproject.toml"]
        if not members:
            raise SuiteError(f"{archive} holds no {prefix}t/: not Celery's sdist?")
        tar.extractall(cache_dir, members=members, filter="data")
    return suite_dir


def check_installed_celery() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("celery")
    except PackageNotFoundError:
        raise SuiteError(f"Celery is not installed: pip install celery=={CELERY_VERSION}") from None
    if installed != CELERY_VERSION:
        raise SuiteError(f"Celery {installed} is installed; the suite is pinned to "
                         f"{CELERY_VERSION} (pip install celery=={CELERY_VERSION})")


# ---- one pytest run -------------------------------------------------------------------------
@dataclass
class RunResult:
    worker: str
    broker: str
    outcomes: dict[str, str]
    durations: dict[str, float]
    messages: dict[str, str]
    seconds: float
    returncode: int
    out_dir: Path


@dataclass
class RunSettings:
    suite_dir: Path
    files: list[str]
    keyword: str | None
    pool: str
    concurrency: int
    test_timeout: float
    get_timeout: float
    out_dir: Path
    extra_pytest_args: list[str]


def broker_and_backend(broker: str, stack: ExitStack) -> tuple[str, str, int]:
    """(broker URL, backend URL, Redis db) for one run, each released when ``stack`` closes."""
    backend = stack.enter_context(private_redis_db(REDIS_SERVER, SUITE_DBS, timeout=600))
    db = int(backend.rsplit("/", 1)[1])
    if broker == "redis":
        return backend, backend, db
    try:
        vhost_url = stack.enter_context(private_vhost())
    except BaseException as exc:  # pytest.skip's exception when RabbitMQ is down
        raise SuiteError(f"RabbitMQ: {exc}") from None
    return vhost_url, backend, db


def run_suite(worker: str, broker: str, settings: RunSettings) -> RunResult:
    out = settings.out_dir / f"{broker}-{worker}"
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    with ExitStack() as stack:
        broker_url, backend_url, db = broker_and_backend(broker, stack)
        env = {**os.environ,
               "TEST_BROKER": broker_url, "TEST_BACKEND": backend_url,
               "CELERY_SUITE_REDIS_DB": str(db), "CELERY_SUITE_WORKER": worker,
               "CELERY_SUITE_LOGDIR": str(out),
               "CELERY_SUITE_POOL": settings.pool,
               "CELERY_SUITE_CONCURRENCY": str(settings.concurrency),
               "CELERY_SUITE_TEST_TIMEOUT": str(settings.test_timeout),
               "CELERY_SUITE_GET_TIMEOUT": str(settings.get_timeout),
               "PYTHONPATH": str(REPO)}
        if worker == "celeriac":  # listed failures: a shorter limit, they only need to fail
            listed = out / "expected_failures.txt"
            listed.write_text("\n".join(sorted(load_expected(broker))) + "\n")
            env.update(CELERY_SUITE_EXPECTED_FILE=str(listed),
                       CELERY_SUITE_EXPECTED_TIMEOUT=str(min(settings.test_timeout, 60.0)))
        cmd = [sys.executable, "-m", "pytest",
               "-p", "tests.celery_suite.plugin", "-p", "celery.contrib.pytest",
               "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:timeout",
               "-o", "junit_family=xunit1", f"--junitxml={junit}", "-v", "-rfE",
               *[f"t/integration/{name}" for name in settings.files],
               *(["-k", settings.keyword] if settings.keyword else []),
               *settings.extra_pytest_args]
        print(f"[{broker}/{worker}] pytest running (log: {out / 'pytest.out'})", flush=True)
        started = time.monotonic()
        with open(out / "pytest.out", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=settings.suite_dir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                returncode = proc.wait()
            finally:
                stop_leftovers(proc, out / "celeriac-worker.pgid")
        seconds = time.monotonic() - started
    if not junit.exists():
        raise SuiteError(f"[{broker}/{worker}] pytest exited {returncode} without a "
                         f"report; see {out / 'pytest.out'}")
    outcomes, durations, messages = read_junit(junit, settings.suite_dir)
    print(f"[{broker}/{worker}] done in {seconds:.0f} s: {tally_line(outcomes)}", flush=True)
    return RunResult(worker, broker, outcomes, durations, messages, seconds, returncode, out)


def stop_leftovers(proc: subprocess.Popen, pgid_file: Path) -> None:
    """After pytest ends, or when this runner is interrupted: pytest stopped (SIGTERM, then
    SIGKILL), then the celeriac worker's process group, if pytest could not stop it itself."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        pgid = int(pgid_file.read_text())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(5)


def read_junit(path: Path, suite_dir: Path) -> tuple[dict[str, str], dict[str, float],
                                                     dict[str, str]]:
    """Per test id (``t/integration/test_canvas.py::test_chain::test_simple_chain``): outcome,
    seconds, and the first line of a failure's message."""
    outcomes: dict[str, str] = {}
    durations: dict[str, float] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = junit_test_id(case)
        failure, error, skipped = (case.find(tag) for tag in ("failure", "error", "skipped"))
        if failure is not None:
            strict_xpass = (failure.get("message") or "").startswith("[XPASS(strict)]")
            outcome, detail = ("xpassed" if strict_xpass else "failed"), failure
        elif error is not None:
            outcome, detail = "error", error
        elif skipped is not None:
            outcome = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
            detail = skipped
        else:
            outcome, detail = "passed", None
        outcomes[test_id] = outcome
        durations[test_id] = float(case.get("time") or 0)
        if detail is not None:
            lines = (detail.get("message") or "").strip().splitlines()
            messages[test_id] = lines[0][:200] if lines else ""
    return outcomes, durations, messages


def junit_test_id(case: ET.Element) -> str:
    """pytest's node id from a junit (xunit1) testcase: its file, classes and name."""
    file = case.get("file") or ""
    classname = case.get("classname") or ""
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    classes = classname[len(module) + 1:] if module and classname.startswith(module) else ""
    parts = [file or classname, *[c for c in classes.split(".") if c], case.get("name") or ""]
    return "::".join(parts)


# ---- expected failures and the comparison ----------------------------------------------------
def load_expected(broker: str) -> dict[str, str]:
    """Test id (or id without parameters) -> reason, for every broker and for ``broker``."""
    data = tomllib.loads(EXPECTED_FAILURES.read_text())
    expected: dict[str, str] = {}
    for section in ("all", broker):
        for test_id, reason in data.get(section, {}).items():
            expected[test_id] = reason
    return expected


def expected_reason(test_id: str, expected: dict[str, str]) -> str | None:
    if test_id in expected:
        return expected[test_id]
    base = test_id.split("[", 1)[0]
    return expected.get(base)


def tally(outcomes: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for outcome in outcomes.values():
        counts[outcome] += 1
    return counts


def tally_line(outcomes: dict[str, str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in tally(outcomes).items())


def compare(broker: str, runs: dict[str, RunResult]) -> int:
    """Print per-test outcomes and tallies side by side; return the number of regressions."""
    expected = load_expected(broker)
    celeriac, celery = runs.get("celeriac"), runs.get("celery")
    ids = sorted(set().union(*(r.outcomes for r in runs.values())))
    kinds = [k for k in ("celeriac", "celery") if k in runs]
    print(f"\n== {broker}: per test ({' | '.join(kinds)}) ==")
    for test_id in ids:
        cells = []
        for kind in kinds:
            run = runs[kind]
            outcome = run.outcomes.get(test_id, "-")
            cells.append(f"{outcome:<8} {run.durations.get(test_id, 0):6.1f}s")
        note = ""
        if celeriac and celeriac.outcomes.get(test_id) in ("failed", "error"):
            reason = expected_reason(test_id, expected)
            note = f"  [expected: {reason}]" if reason else \
                f"  {celeriac.messages.get(test_id, '')}"
        print(f"{' | '.join(cells)} | {test_id}{note}")

    print(f"\n== {broker}: tallies ==")
    print(f"{'':<9}" + "".join(f"{name:>9}" for name in OUTCOMES) + f"{'total':>8}{'time':>8}")
    for kind in kinds:
        counts = tally(runs[kind].outcomes)
        print(f"{kind:<9}" + "".join(f"{counts[name]:>9}" for name in OUTCOMES)
              + f"{len(runs[kind].outcomes):>8}{runs[kind].seconds:>7.0f}s")

    if celeriac is None:
        return 0
    bad = ("failed", "error")
    regressions = []
    for test_id in ids:
        if celeriac.outcomes.get(test_id) not in bad or expected_reason(test_id, expected):
            continue
        # with a Celery run to compare against, only what passes there counts
        if celery is None or celery.outcomes.get(test_id) == "passed":
            regressions.append(test_id)
    stale = [t for t in ids if expected_reason(t, expected)
             and celeriac.outcomes.get(t) == "passed"]
    for title, items in (("not expected to fail on celeriac", regressions),
                         ("listed as expected failures but passed on celeriac", stale)):
        if items:
            print(f"\n{broker}: {len(items)} {title}:")
            for test_id in items:
                print(f"  {test_id}")
    return len(regressions)


# ---- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Celery's t/integration against a celeriac worker (and a Celery worker).")
    parser.add_argument("--broker", choices=("redis", "amqp", "both"), default="redis",
                        help="amqp: RabbitMQ broker, results in Redis (default: redis)")
    parser.add_argument("--worker", choices=("celeriac", "celery", "both"), default="both")
    parser.add_argument("--files", default=",".join(DEFAULT_FILES),
                        help="comma-separated files of t/integration (default: %(default)s)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"),
                        help="celeriac worker pool (Celery's fixture: prefork, 1 process)")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--test-timeout", type=float, default=300.0,
                        help="hard limit on each test's call, in seconds (enforced by the plugin; "
                             "the suite's own marks say 300)")
    parser.add_argument("--get-timeout", type=float, default=20.0,
                        help="the test modules' TIMEOUT for result.get() (the suite's: 60)")
    parser.add_argument("--out", type=Path,
                        default=Path("/tmp") / f"celery-suite-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="where junit reports and logs go")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--sdist", type=Path, help=f"a local celery-{CELERY_VERSION}.tar.gz")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    return parser.parse_args(argv)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: pytest and the worker are stopped, the vhost is deleted
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        check_installed_celery()
        suite_dir = ensure_suite(args.cache_dir, args.sdist)
        settings = RunSettings(
            suite_dir=suite_dir, files=[f.strip() for f in args.files.split(",") if f.strip()],
            keyword=args.keyword, pool=args.pool, concurrency=args.concurrency,
            test_timeout=args.test_timeout, get_timeout=args.get_timeout, out_dir=args.out,
            extra_pytest_args=args.pytest_args)
        for name in settings.files:
            if not (suite_dir / "t" / "integration" / name).exists():
                raise SuiteError(f"no t/integration/{name} in {suite_dir}")
        brokers = ("redis", "amqp") if args.broker == "both" else (args.broker,)
        workers = ("celeriac", "celery") if args.worker == "both" else (args.worker,)
        regressions = 0
        summary = []
        for broker in brokers:
            runs = {worker: run_suite(worker, broker, settings) for worker in workers}
            regressions += compare(broker, runs)
            summary += [{"broker": broker, "worker": r.worker, "seconds": round(r.seconds),
                         **tally(r.outcomes)} for r in runs.values()]
    except SuiteError as exc:
        print(f"celery suite: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nreports and worker logs: {args.out}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
