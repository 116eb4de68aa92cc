"""The ``celeriac`` command, shaped like Celery's: ``celeriac -A proj worker --loglevel=INFO``.

Layer: cli (may import anything; nothing imports it). Each sub-command is a thin shell over the
library: worker, demo, dlq, purge, call, result, shell, dispatch (``dispatch progress``: a
dispatch's live progress bar, cli/progress.py), beat and schedule (cli/periodic.py), and
dashboard (cli/dashboard.py: the web dashboard), events (cli/events.py: live events), and
inspect, control and status (cli/control.py: remote control), and metrics (cli/metrics.py:
queue depths for Prometheus). Celery commands celeriac has not built yet (multi) exist and say
so in one line.

User mistakes end in one line on stderr and a non-zero exit, never a traceback:
``CeleriacGroup.invoke`` turns the known user-error exceptions (``USER_ERRORS``) and a misplaced
``-A`` into a ``UserError``; commands raise ``UserError`` for their own checks. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import code
import json
import sys
from typing import Any

import click

from .. import exceptions
from ..utils.text import one_line
from ..utils.urls import redact_url
from .base import AppHolder, UserError, _here, _json_option

#: Exceptions that mean the user got something wrong (a setting, a URL, the ``-A`` module, a broker
#: that is not there): shown as one line and a non-zero exit. Anything else is a bug in celeriac
#: and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    exceptions.ImproperlyConfigured,  # includes MissingDependency
    exceptions.OperationalError,
    exceptions.QueueNotFound,
)


def _unreachable(ctx: click.Context, exc: Exception) -> str | None:
    """For an error that means the broker (or, for ``result``, the result store) could not be
    reached: what to say, its URL masked. None for any other error."""
    holder = ctx.find_object(AppHolder)
    app = holder._app if holder is not None else None
    transient: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    if app is not None:
        try:
            transient += tuple(app.transport.transient_errors)
        except Exception:  # noqa: BLE001 - no transport to ask: the built-in errors only
            pass
    if not isinstance(exc, transient):
        return None
    if app is None:
        return f"cannot connect: {one_line(exc)}"
    if ctx.invoked_subcommand == "result":
        where = f"the result store at {redact_url(str(app.conf.get('result_backend') or ''))}"
    else:
        where = f"the broker at {redact_url(str(app.broker_url))}"
    return f"cannot reach {where}: {one_line(exc)}"


def _app_option_value(argv: list[str]) -> str:
    """The value given to a misplaced ``-A``/``--app`` (for the corrected command line)."""
    for i, arg in enumerate(argv):
        if arg in ("-A", "--app"):
            return argv[i + 1] if i + 1 < len(argv) else "proj"
        if arg.startswith("--app="):
            return arg.split("=", 1)[1]
        if arg.startswith("-A") and not arg.startswith("--"):
            return arg[2:]
    return "proj"


class CeleriacGroup(click.Group):
    """The one place user mistakes become one line: known user-error exceptions raised by any
    sub-command, and ``-A``/``--app`` given after the command (Celery 5 also wants it before)."""

    group_class = type  # sub-groups (dlq) are CeleriacGroups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault("celeriac.argv", list(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            if exc.option_name not in ("-A", "--app"):
                raise
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            command = where.split(" ", 1)[1] if " " in where else "COMMAND"
            spec = _app_option_value(ctx.meta.get("celeriac.argv", []))
            raise UserError(f"{where}: -A/--app goes before the command: "
                            f"celeriac -A {spec} {command}", exit_code=2) from exc
        except USER_ERRORS as exc:
            name = ctx.invoked_subcommand
            prefix = f"{ctx.command_path} {name}" if name else ctx.command_path
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise UserError(f"{prefix}: {message}") from exc
        except click.ClickException:
            raise
        except Exception as exc:
            unreachable = _unreachable(ctx, exc)
            if unreachable is None:
                raise
            name = ctx.invoked_subcommand
            prefix = f"{ctx.command_path} {name}" if name else ctx.command_path
            raise UserError(f"{prefix}: {unreachable}") from exc


@click.group(cls=CeleriacGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                  "auto_envvar_prefix": "CELERIAC"})
@click.option("-A", "--app", "app_spec", envvar="CELERIAC_APP",
              help="Module holding the app (before the command: celeriac -A proj worker).")
@click.option("-b", "--broker", help="Broker URL (overrides broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.version_option(package_name="celeriac", prog_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, broker: str | None,
        result_backend: str | None) -> None:
    """celeriac: a Celery-compatible task queue."""
    preset = ctx.obj if isinstance(ctx.obj, AppHolder) else None
    ctx.obj = AppHolder(app_spec, app=preset._app if preset else None, broker=broker,
                        backend=result_backend)


@cli.command()
@click.option("-l", "--loglevel", default="WARNING", show_default=True, help="Logging level.")
@click.option("-c", "--concurrency", type=int, default=None,
              help="Pool size (default: number of CPUs; 100 for asyncio).")
@click.option("-P", "--pool",
              type=click.Choice(["prefork", "processes", "threads", "solo", "asyncio"]),
              default=None, help="Execution pool (default prefork).")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to consume.")
@click.option("-X", "--exclude-queues", default=None,
              help="Comma-separated queues not to consume (of task_queues, or of -Q).")
@click.option("-n", "--hostname", default=None, help="Node name, e.g. name@%h.")
@click.option("--prefetch-multiplier", type=int, default=None,
              help="Messages reserved per pool slot (worker_prefetch_multiplier, default 4).")
@click.option("-f", "--logfile", default=None, help="Log to this file instead of stderr.")
@click.option("--pidfile", default=None,
              help="Write the worker's pid to this file (removed at exit); refuses to start "
                   "while it holds the pid of a running process.")
@click.option("--purge", "--discard", "purge", is_flag=True, default=False,
              help="Delete every waiting message from the worker's queues before starting.")
@click.option("--time-limit", type=float, default=None,
              help="Hard time limit per task, in seconds (task_time_limit).")
@click.option("--soft-time-limit", type=float, default=None,
              help="Soft time limit per task, in seconds (task_soft_time_limit).")
@click.option("--heartbeat-interval", type=float, default=None,
              help="Seconds between the worker's heartbeats in the result store "
                   "(worker_heartbeat_interval).")
@click.option("--metrics-port", default=None, metavar="PORT|LOW-HIGH",
              help="Serve Prometheus metrics on this port, the first free one of a range, or "
                   "any free port with 0 (worker_metrics_port; needs celeriac[metrics]).")
@click.option("-E", "--task-events", is_flag=True, default=False,
              help="Send task events (task-received, -started, -succeeded...) for monitors "
                   "such as Flower and `celeriac events` (worker_send_task_events).")
@click.option("-B", "--beat", is_flag=True, default=False,
              help="Run a beat in this worker too (any number of workers may: each periodic "
                   "run still fires once).")
@click.option("-s", "--schedule", "schedule_filename", default=None,
              help="Accepted for Celery compatibility (with -B): the beat keeps its state in "
                   "the result store, not in a file.")
@click.option("--autoscale", default=None, metavar="MAX,MIN",
              help="Grow the pool up to MAX while tasks wait, shrink it back to MIN when idle "
                   "(prefork and threads pools; the pool starts at MIN).")
@click.option("--max-tasks-per-child", type=int, default=None,
              help="Replace a prefork pool process after it has run this many tasks "
                   "(worker_max_tasks_per_child).")
@click.option("--max-memory-per-child", type=int, default=None,
              help="Replace a prefork pool process after a task leaves it with more than "
                   "this much resident memory, in KiB (worker_max_memory_per_child).")
@click.option("--statedb", default=None,
              help="worker_state_db: not used (revokes are kept in the result store; warned "
                   "at start-up).")
@click.option("-O", "optimization", type=click.Choice(["default", "fair"]), default=None,
              help="Celery's optimization profile: no effect in celeriac (warned at start-up).")
@click.option("--without-gossip", is_flag=True, default=False,
              help="Accepted: celeriac workers do not gossip anyway.")
@click.option("--without-mingle", is_flag=True, default=False,
              help="Accepted: celeriac workers do not mingle at start-up anyway.")
@click.option("--without-heartbeat", is_flag=True, default=False,
              help="Send no worker events (worker-online, -heartbeat, -offline) to monitors; "
                   "the worker's heartbeat in the result store goes on.")
@click.option("-D", "--detach", is_flag=True, default=False,
              help="Not available: run the worker under your service manager instead.")
@click.pass_obj
def worker(obj: AppHolder, loglevel: str, concurrency: int | None, pool: str | None,
           queues: str | None, exclude_queues: str | None, hostname: str | None,
           prefetch_multiplier: int | None, logfile: str | None, task_events: bool,
           detach: bool, without_gossip: bool, without_mingle: bool, without_heartbeat: bool,
           **options: Any) -> None:
    """Start a worker."""
    from ..utils.log import setup_logging

    if detach:
        raise UserError(f"{_here()}: --detach is not available in celeriac: run it under your "
                        "service manager (systemd, supervisord) instead", exit_code=2)
    app = obj.app
    setup_logging(loglevel, logfile, hostname=hostname)
    w = app.Worker(hostname=hostname, concurrency=concurrency, pool=pool, queues=queues,
                   exclude_queues=exclude_queues,
                   prefetch_multiplier=prefetch_multiplier, task_events=task_events,
                   without_heartbeat=without_heartbeat, app_spec=obj.spec, owns_process=True,
                   **options)
    sys.exit(w.start())


@cli.command()
@click.option("-n", "--tasks", "count", type=int, default=5000, show_default=True,
              help="How many tasks to run.")
@click.option("-c", "--concurrency", type=int, default=None, help="Worker pool size.")
@click.option("--url", default=None, help="sqlite:/// URL to use (default: a temporary file).")
@click.option("--broker", "broker", default=None, metavar="URL",
              help="Send the tasks through this broker instead (amqp://guest:guest@localhost//, "
                   "redis://...); results stay in the demo's SQLite file.")
@click.option("--keep", is_flag=True, default=False,
              help="Keep the temporary folder (database and worker log) instead of removing it.")
def demo(count: int, concurrency: int | None, url: str | None, broker: str | None,
         keep: bool) -> None:
    """Start a worker and run a visible workload on the embedded SQLite broker (or --broker)."""
    from .demo import run_demo

    sys.exit(run_demo(count=count, concurrency=concurrency, url=url, keep=keep, broker=broker))


@cli.group()
def dlq() -> None:
    """Inspect and manage the dead-letter store (messages that could never run)."""


@dlq.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_obj
def dlq_list(obj: AppHolder, limit: int) -> None:
    """List dead letters, oldest first."""
    import datetime as dt

    letters = obj.app.transport.dead_letters(limit)
    if not letters:
        click.echo("The dead-letter store is empty.")
        return
    for letter in letters:
        when = dt.datetime.fromtimestamp(letter.created_at, dt.timezone.utc)
        headers = letter.message.headers
        click.echo(f"{letter.id}  {when.isoformat(timespec='seconds')}  queue={letter.queue}  "
                   f"task={headers.get('task')}  id={headers.get('id')}  reason: {letter.reason}")


@dlq.command("show")
@click.argument("dead_letter_id")
@click.pass_obj
def dlq_show(obj: AppHolder, dead_letter_id: str) -> None:
    """Show one dead letter in full (body bytes as text where they decode, else base64)."""
    import base64

    letter = obj.app.transport.dead_letter_get(dead_letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter with id {dead_letter_id!r}")
    message = letter.message
    try:
        body: Any = message.body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode("ascii"), "base64"
    click.echo(json.dumps({
        "id": letter.id, "queue": letter.queue, "reason": letter.reason,
        "created_at": letter.created_at, "content_type": message.content_type,
        "content_encoding": message.content_encoding, "headers": message.headers,
        "properties": message.properties, "body_encoding": encoding, "body": body,
    }, indent=2, default=str))


@dlq.command("replay")
@click.argument("dead_letter_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("-Q", "--queue", default=None, help="Publish to this queue instead of the original.")
@click.pass_obj
def dlq_replay(obj: AppHolder, dead_letter_ids: tuple[str, ...], replay_all: bool,
               queue: str | None) -> None:
    """Publish dead letters again (byte for byte) and remove them from the store."""
    from ..utils.dlq import replay

    if not dead_letter_ids and not replay_all:
        raise click.UsageError("name dead-letter ids to replay, or pass --all")
    transport = obj.app.transport
    if not replay_all:  # all or none: a mistyped id replays nothing
        missing = [i for i in dead_letter_ids if transport.dead_letter_get(i) is None]
        if missing:
            listing = f"celeriac{f' -A {obj.spec}' if obj.spec else ''} dlq list"
            raise UserError(f"{_here()}: no dead letter with id "
                            f"{', '.join(repr(i) for i in missing)}; nothing was replayed "
                            f"(`{listing}` shows the ids)")
    done = replay(transport, None if replay_all else list(dead_letter_ids), queue=queue)
    click.echo(f"Replayed {done} message(s).")


@dlq.command("purge")
@click.option("-f", "--force", is_flag=True, help="Don't ask for confirmation.")
@click.pass_obj
def dlq_purge(obj: AppHolder, force: bool) -> None:
    """Delete every dead letter."""
    if not force:
        click.confirm("Delete every message in the dead-letter store?", abort=True)
    click.echo(f"Purged {obj.app.transport.dead_letter_delete(None)} dead letter(s).")


@cli.command()
@click.option("-Q", "--queues", default=None,
              help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Don't ask for confirmation.")
@click.pass_obj
def purge(obj: AppHolder, queues: str | None, force: bool) -> None:
    """Delete every waiting message from the queues."""
    app = obj.app
    names = list(dict.fromkeys(q.strip() for q in (queues or app.conf.task_default_queue).split(",")
                               if q.strip()))
    if not names:
        raise UserError(f"{_here()}: no queue named in -Q {queues!r}", exit_code=2)
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    counts = {q: app.transport.purge(q) for q in names}
    each = ", ".join(f"{q} ({n})" for q, n in counts.items())
    click.echo(f"Purged {sum(counts.values())} message(s) from {len(names)} queue(s): {each}")


@cli.command()
@click.argument("name")
@click.option("-a", "--args", "args_json", default="[]",
              help="Positional arguments as a JSON list, e.g. -a '[5, 3]'.")
@click.option("-k", "--kwargs", "kwargs_json", default="{}",
              help="Keyword arguments as a JSON object, e.g. -k '{\"y\": 3}'.")
@click.option("--countdown", type=float, default=None)
@click.option("--queue", default=None)
@click.pass_obj
def call(obj: AppHolder, name: str, args_json: str, kwargs_json: str, countdown: float | None,
         queue: str | None) -> None:
    """Send a task by name and print its id."""
    args = _json_option(args_json, list, "--args must be a JSON list, e.g. -a '[5, 3]'")
    kwargs = _json_option(kwargs_json, dict,
                          "--kwargs must be a JSON object, e.g. -k '{\"y\": 3}'")
    result = obj.app.send_task(name, args, kwargs, countdown=countdown, queue=queue)
    click.echo(result.id)


@cli.command()
@click.argument("task_id")
@click.option("-t", "--timeout", type=float, default=None, help="Wait up to this many seconds.")
@click.pass_obj
def result(obj: AppHolder, task_id: str, timeout: float | None) -> None:
    """Print a task's state and result."""
    res = obj.app.AsyncResult(task_id)
    if timeout is not None:
        try:
            res.get(timeout=timeout, propagate=False)
        except exceptions.TimeoutError as exc:
            raise UserError(f"{_here()} {task_id}: {exc}") from exc
    click.echo(f"{res.state}: {res.result!r}")


@cli.group("dispatch")
def dispatch_group() -> None:
    """Watch dispatches: generator main tasks that fan out subtasks (celeriac.dispatch)."""


@dispatch_group.command("progress")
@click.argument("task_id")
@click.option("-i", "--interval", type=float, default=0.5, show_default=True,
              help="Seconds between two reads of the main task's progress.")
@click.option("-t", "--timeout", type=float, default=None,
              help="Give up after this many seconds (exit 1); default: wait until it ends.")
@click.pass_obj
def dispatch_progress(obj: AppHolder, task_id: str, interval: float,
                      timeout: float | None) -> None:
    """Show a live progress bar for the dispatch whose main task is TASK_ID until it ends, then
    its final state; exit 0 when it succeeded, 1 otherwise."""
    from .. import states
    from .progress import Watch

    if interval <= 0:
        raise UserError(f"{_here()}: --interval must be more than 0 seconds (got {interval:g})",
                        exit_code=2)
    app = obj.app
    backend = app.backend
    if not backend.persistent:
        raise UserError(
            f"{_here()}: the result store {redact_url(str(app.conf.get('result_backend')))} "
            "keeps no state another process can read, so a dispatch's progress cannot be "
            "followed from here: use a redis:// or sqlite:// result_backend")
    watch = Watch(read=lambda: backend.get_task_meta(task_id),
                  echo=lambda text, newline: click.echo(text, nl=newline),
                  interactive=_is_tty(sys.stdout), interval=interval, timeout=timeout)
    meta = watch.run()
    if meta is None:
        state = backend.get_task_meta(task_id).get("status")
        raise UserError(f"{_here()} {task_id}: still {state} after {timeout:g}s")
    state = meta.get("status")
    value = (backend.exception_from_meta(meta) if state in states.EXCEPTION_STATES
             else meta.get("result"))
    click.echo(f"{state}: {value!r}")
    sys.exit(0 if state == states.SUCCESS else 1)


# ---- Celery commands celeriac does not have yet -------------------------------------------------
#: command -> what to use instead; each is a real command, so ``celeriac beat`` gets this line
#: instead of click's "No such command".
NOT_YET: dict[str, str] = {
    "multi": "start one `celeriac -A proj worker` per node under your process manager "
             "(systemd, supervisord)",
}


def _not_available(name: str, instead: str) -> click.Command:
    def command(args: tuple[str, ...]) -> None:
        raise UserError(f"{_here()}: not available in celeriac yet ({instead})",
                        exit_code=2)

    return click.Command(
        name, callback=command, help=f"Not available in celeriac yet ({instead}).",
        short_help="Not available yet.", add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)])


for _name, _instead in NOT_YET.items():
    cli.add_command(_not_available(_name, _instead))

from .periodic import beat, schedule_group  # noqa: E402  (after the group they join)

cli.add_command(beat)
cli.add_command(schedule_group)

from .control import control, inspect, status  # noqa: E402  (after the group they join)

cli.add_command(inspect)
cli.add_command(control)
cli.add_command(status)

from .events import events  # noqa: E402  (after the group it joins)

cli.add_command(events)

from .metrics import metrics  # noqa: E402  (after the group it joins)

cli.add_command(metrics)

from .dashboard import dashboard  # noqa: E402  (after the group it joins)

cli.add_command(dashboard)


@cli.command()
@click.pass_obj
def shell(obj: AppHolder) -> None:
    """An interactive Python with `app` and the app's tasks (by their short names) loaded.

    Code piped in runs as typed; the exit status is 1 when any of it raised."""
    from .. import chain, chord, group, signature, states

    if sys.stdin is None or sys.stdin.closed:  # `celeriac shell <&-`
        raise UserError(f"{_here()}: no input (stdin is closed)")
    app = obj.app
    namespace: dict[str, Any] = {"app": app, "celery": app, "chain": chain, "chord": chord,
                                 "group": group, "signature": signature, "states": states}
    tasks = {name: task for name, task in sorted(app.tasks.items())
             if not name.startswith("celery.")}
    for name, task in tasks.items():
        namespace.setdefault(name.rsplit(".", 1)[-1], task)
    console = _Console(namespace)
    try:
        console.interact(banner=f"celeriac shell: app = {app!r}; tasks: "
                                f"{', '.join(tasks) or '(none registered)'}", exitmsg="")
    except RuntimeError as exc:  # input() lost its stdin while reading
        if "lost sys.stdin" not in str(exc):
            raise
        raise UserError(f"{_here()}: no input (stdin is closed)") from exc
    if console.failed and not _is_tty(sys.stdin):
        sys.exit(1)  # a piped script that raised: the traceback is shown, the status says so


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Console(code.InteractiveConsole):
    """The stdlib console, remembering whether any code it ran raised."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        super().__init__(namespace)
        self.failed = False

    def showtraceback(self) -> None:
        self.failed = True
        super().showtraceback()

    def showsyntaxerror(self, filename: str | None = None, **kwargs: Any) -> None:
        self.failed = True
        super().showsyntaxerror(filename, **kwargs)


def main(argv: list[str] | None = None, app: Any = None) -> None:
    """Console entry point (also ``app.worker_main``)."""
    obj = AppHolder(None, app=app) if app is not None else None
    cli.main(args=argv, prog_name="celeriac", obj=obj)


if __name__ == "__main__":  # pragma: no cover
    main()
