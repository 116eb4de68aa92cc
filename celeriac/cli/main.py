"""The ``celeriac`` command, shaped like Celery's: ``celeriac -A proj worker --loglevel=INFO``.

Layer: cli (may import anything; nothing imports it). Each sub-command is a thin shell over the
library: worker, demo, dlq, purge, call, result.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..exceptions import ImproperlyConfigured
from ..utils.imports import find_app as load_app


def find_app(spec: str) -> Any:
    """``-A`` loading (see ``celeriac.utils.imports.find_app``), errors shown as usage errors."""
    try:
        return load_app(spec)
    except ImproperlyConfigured as exc:
        raise click.UsageError(str(exc)) from exc


class AppHolder:
    def __init__(self, spec: str | None, app: Any = None, broker: str | None = None,
                 backend: str | None = None) -> None:
        self.spec = spec
        self._app = app
        self.broker = broker
        self.backend = backend

    @property
    def app(self) -> Any:
        if self._app is None:
            if not self.spec:
                raise click.UsageError("no app given: use -A module (or set CELERIAC_APP)")
            self._app = find_app(self.spec)
            if self.broker:
                self._app.conf["broker_url"] = self.broker
            if self.backend:
                self._app.conf["result_backend"] = self.backend
        return self._app


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "auto_envvar_prefix": "CELERIAC"})
@click.option("-A", "--app", "app_spec", envvar="CELERIAC_APP", help="Module holding the app.")
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
@click.option("-n", "--hostname", default=None, help="Node name, e.g. name@%h.")
@click.option("--prefetch-multiplier", type=int, default=None)
@click.option("-f", "--logfile", default=None)
@click.option("-E", "--task-events", is_flag=True, default=False, help="Send task events.")
@click.pass_obj
def worker(obj: AppHolder, loglevel: str, concurrency: int | None, pool: str | None,
           queues: str | None, hostname: str | None, prefetch_multiplier: int | None,
           logfile: str | None, task_events: bool) -> None:
    """Start a worker."""
    from ..utils.log import setup_logging

    app = obj.app
    try:
        setup_logging(loglevel, logfile, hostname=hostname)
        w = app.Worker(hostname=hostname, concurrency=concurrency, pool=pool, queues=queues,
                       prefetch_multiplier=prefetch_multiplier, task_events=task_events,
                       app_spec=obj.spec)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(w.start())


@cli.command()
@click.option("-n", "--tasks", "count", type=int, default=5000, show_default=True,
              help="How many tasks to run.")
@click.option("-c", "--concurrency", type=int, default=None, help="Worker pool size.")
@click.option("--url", default=None, help="sqlite:/// URL to use (default: a temporary file).")
def demo(count: int, concurrency: int | None, url: str | None) -> None:
    """Start a worker and run a visible workload on the embedded SQLite broker."""
    from .demo import run_demo

    sys.exit(run_demo(count=count, concurrency=concurrency, url=url))


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
    done = replay(obj.app.transport, None if replay_all else list(dead_letter_ids), queue=queue)
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
    names = [q for q in (queues or app.conf.task_default_queue).split(",") if q]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    total = sum(app.transport.purge(q) for q in names)
    click.echo(f"Purged {total} message(s) from {len(names)} queue(s).")


@cli.command()
@click.argument("name")
@click.option("-a", "--args", "args_json", default="[]", help="Positional arguments as JSON.")
@click.option("-k", "--kwargs", "kwargs_json", default="{}", help="Keyword arguments as JSON.")
@click.option("--countdown", type=float, default=None)
@click.option("--queue", default=None)
@click.pass_obj
def call(obj: AppHolder, name: str, args_json: str, kwargs_json: str, countdown: float | None,
         queue: str | None) -> None:
    """Send a task by name and print its id."""
    try:
        args, kwargs = json.loads(args_json), json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"arguments must be JSON: {exc}") from exc
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
        res.get(timeout=timeout, propagate=False)
    click.echo(f"{res.state}: {res.result!r}")


def main(argv: list[str] | None = None, app: Any = None) -> None:
    """Console entry point (also ``app.worker_main``)."""
    obj = AppHolder(None, app=app) if app is not None else None
    cli.main(args=argv, prog_name="celeriac", obj=obj)


if __name__ == "__main__":  # pragma: no cover
    main()
