"""``celeriac beat`` and ``celeriac schedule ...``: run the beat, and read or edit the stored
schedule while beats run (docs/periodic-tasks.md).

Layer: cli. Thin shells over celeriac/beat/: ``beat`` runs ``Beat.run()`` until SIGTERM or Ctrl-C;
``schedule`` calls ``app.periodic_tasks`` (list, show, add, change, pause, resume, remove).
"""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import click

from .base import AppHolder, UserError, _here, _json_option


@click.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Logging level.")
@click.option("-f", "--logfile", default=None, help="Log to this file instead of stderr.")
@click.option("-s", "--schedule", "schedule_filename", default=None,
              help="Accepted for Celery compatibility: the state is kept in the result store, "
                   "not in a file (said at start-up when given).")
@click.option("-S", "--scheduler", default=None,
              help="Accepted for Celery compatibility: celeriac's beat has one scheduler, with "
                   "its state in the result store (said at start-up when given).")
@click.option("--max-interval", type=float, default=None,
              help="Longest sleep between two looks at the schedule (beat_max_loop_interval).")
@click.option("--pidfile", default=None, help="Write the beat's pid to this file.")
@click.pass_obj
def beat(obj: AppHolder, loglevel: str, logfile: str | None, schedule_filename: str | None,
         scheduler: str | None, max_interval: float | None, pidfile: str | None) -> None:
    """Run a beat: send periodic tasks when they are due. Any number may run at once: one leads
    and fires, the others take over when it stops (each run fires once)."""
    import logging

    from ..beat import Beat
    from ..utils.log import setup_logging

    if max_interval is not None and max_interval <= 0:
        raise UserError(f"{_here()}: --max-interval must be more than 0 seconds", exit_code=2)
    setup_logging(loglevel, logfile)
    log = logging.getLogger("celeriac.beat")
    app = obj.app
    if schedule_filename:
        log.info("-s %s is not used: the beat keeps its state in the result store",
                 schedule_filename)
    if scheduler:
        log.warning("-S %s is not loaded: celeriac's beat has one scheduler, with its state in "
                    "the result store", scheduler)
    from ..config import ineffective_settings

    for line in ineffective_settings(app.conf):  # the beat's own: its scheduler, its file
        if line.startswith("beat_"):
            log.warning("%s", line)
    service = Beat(app, max_interval=max_interval)
    with _pidfile(pidfile):
        def stop(signum: int, _frame: Any) -> None:
            log.info("beat: %s received, stopping", signal.Signals(signum).name)
            service.stop(timeout=0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        click.echo(f"celeriac beat: app {app.main or '__main__'}, schedule in the result store; "
                   f"Ctrl-C to stop", err=True)
        service.run()


@contextmanager
def _pidfile(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    from ..worker.worker import Pidfile

    pidfile = Pidfile(path)
    pidfile.acquire()
    try:
        yield
    finally:
        pidfile.release()


# ---- the stored schedule -----------------------------------------------------------------------
@click.group("schedule")
def schedule_group() -> None:
    """List and edit the periodic tasks every beat fires, while beats run."""


def _book(obj: AppHolder) -> Any:
    return obj.app.periodic_tasks


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "never"


@schedule_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@click.pass_obj
def schedule_list(obj: AppHolder, as_json: bool) -> None:
    """Every periodic task: its schedule, whether it is paused, its last run."""
    entries = _book(obj).list()
    if as_json:
        for entry in entries:
            click.echo(json.dumps({**entry.to_record(), "last_run_at": _iso(entry.last_run_at),
                                   "total_run_count": entry.total_run_count}, default=repr))
        return
    if not entries:
        click.echo("no periodic tasks (add one to beat_schedule, or: celeriac schedule add)")
        return
    rows = [("NAME", "TASK", "SCHEDULE", "STATE", "LAST RUN", "NEXT RUN", "RUNS", "FROM")]
    rows += [(e.name, e.task, e.describe_schedule(), "active" if e.enabled else "paused",
              _when(e.last_run_at) if e.total_run_count else "never", _next_run(e),
              str(e.total_run_count), e.origin) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _next_run(entry: Any) -> str:
    """When the entry is due next, as a beat sees it now ("-" when paused or not seen yet)."""
    if not entry.enabled or entry.schedule is None or entry.last_run_at is None:
        return "-"
    try:
        remaining = entry.schedule.remaining_estimate(entry.last_run_at)
    except Exception:  # noqa: BLE001 - a listing must not fail on one odd schedule
        return "?"
    due = datetime.now(timezone.utc) + max(remaining, timedelta(0))
    return _when(due)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@schedule_group.command("show")
@click.argument("name")
@click.pass_obj
def schedule_show(obj: AppHolder, name: str) -> None:
    """One periodic task in full."""
    entry = _edited(lambda: _book(obj).get(name))
    click.echo(json.dumps({**entry.to_record(), "last_run_at": _iso(entry.last_run_at),
                           "total_run_count": entry.total_run_count}, indent=2, default=repr))


def _schedule_options(command: Any) -> Any:
    for option in reversed([
        click.option("--every", type=float, default=None, metavar="SECONDS",
                     help="Run every this many seconds."),
        click.option("--crontab", "cron", default=None, metavar="'M H DOM MON DOW'",
                     help="Run on a crontab, e.g. '30 7 * * 1' (in the app's timezone)."),
        click.option("--solar", default=None, metavar="EVENT,LAT,LON",
                     help="Run at a solar event, e.g. sunset,51.5,-0.12."),
        click.option("-a", "--args", "args_json", default=None, help="JSON list of arguments."),
        click.option("-k", "--kwargs", "kwargs_json", default=None,
                     help="JSON object of keyword arguments."),
        click.option("--queue", default=None, help="Send to this queue."),
        click.option("--priority", type=int, default=None, help="Message priority."),
        click.option("--expires", type=float, default=None,
                     help="Seconds after sending when a run not started yet is dropped."),
    ]):
        command = option(command)
    return command


def _schedule_from(every: float | None, cron: str | None, solar_spec: str | None,
                   required: bool) -> Any:
    from ..schedules import crontab, solar

    given = [flag for flag, value in (("--every", every), ("--crontab", cron),
                                      ("--solar", solar_spec)) if value is not None]
    if len(given) > 1:
        raise UserError(f"{_here()}: give one of --every, --crontab, --solar (got "
                        f"{', '.join(given)})", exit_code=2)
    if not given:
        if required:
            raise UserError(f"{_here()}: give a schedule: --every SECONDS, --crontab "
                            f"'M H DOM MON DOW' or --solar EVENT,LAT,LON", exit_code=2)
        return None
    try:
        if every is not None:
            if every <= 0:
                raise ValueError(f"--every must be more than 0 seconds (got {every:g})")
            return every
        if cron is not None:
            return crontab.from_string(cron)
        event, lat, lon = (part.strip() for part in str(solar_spec).split(","))
        return solar(event, float(lat), float(lon))
    except ValueError as exc:
        raise UserError(f"{_here()}: {exc}", exit_code=2) from exc


def _options(queue: str | None, priority: int | None, expires: float | None) -> dict[str, Any]:
    return {key: value for key, value in (("queue", queue), ("priority", priority),
                                          ("expires", expires)) if value is not None}


@schedule_group.command("add")
@click.argument("name")
@click.argument("task")
@_schedule_options
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--replace", "replace_existing", is_flag=True,
              help="Replace an entry of the same name.")
@click.pass_obj
def schedule_add(obj: AppHolder, name: str, task: str, every: float | None, cron: str | None,
                 solar: str | None, args_json: str | None, kwargs_json: str | None,
                 queue: str | None, priority: int | None, expires: float | None, paused: bool,
                 replace_existing: bool) -> None:
    """Add periodic task NAME sending TASK (its registered name) on a schedule."""
    schedule = _schedule_from(every, cron, solar, required=True)
    args = _json_option(args_json, list, "--args must be a JSON list") if args_json else []
    kwargs = _json_option(kwargs_json, dict, "--kwargs must be a JSON object") \
        if kwargs_json else {}
    entry = _edited(lambda: _book(obj).add(
        name, task, schedule, args, kwargs, _options(queue, priority, expires),
        enabled=not paused, replace_existing=replace_existing))
    click.echo(f"added {entry.name}: {entry.task} {entry.describe_schedule()}"
               f"{' (paused)' if paused else ''}")


@schedule_group.command("change")
@click.argument("name")
@click.option("--task", default=None, help="Send this task instead.")
@_schedule_options
@click.pass_obj
def schedule_change(obj: AppHolder, name: str, task: str | None, every: float | None,
                    cron: str | None, solar: str | None, args_json: str | None,
                    kwargs_json: str | None, queue: str | None, priority: int | None,
                    expires: float | None) -> None:
    """Change some fields of periodic task NAME; the others keep their values."""
    book = _book(obj)
    schedule = _schedule_from(every, cron, solar, required=False)
    args = _json_option(args_json, list, "--args must be a JSON list") if args_json else None
    kwargs = _json_option(kwargs_json, dict, "--kwargs must be a JSON object") \
        if kwargs_json else None
    options = _options(queue, priority, expires)
    if options:
        options = {**_edited(lambda: book.get(name)).options, **options}
    if not any(v is not None for v in (task, schedule, args, kwargs)) and not options:
        raise UserError(f"{_here()}: nothing to change: give --task, a schedule, --args, "
                        f"--kwargs, --queue, --priority or --expires", exit_code=2)
    entry = _edited(lambda: book.change(name, task=task, schedule=schedule, args=args,
                                        kwargs=kwargs, options=options or None))
    click.echo(f"changed {entry.name}: {entry.task} {entry.describe_schedule()}")


@schedule_group.command("pause")
@click.argument("name")
@click.pass_obj
def schedule_pause(obj: AppHolder, name: str) -> None:
    """Stop firing periodic task NAME until it is resumed."""
    _edited(lambda: _book(obj).pause(name))
    click.echo(f"paused {name}")


@schedule_group.command("resume")
@click.argument("name")
@click.pass_obj
def schedule_resume(obj: AppHolder, name: str) -> None:
    """Fire periodic task NAME again (from its next due time)."""
    _edited(lambda: _book(obj).resume(name))
    click.echo(f"resumed {name}")


@schedule_group.command("remove")
@click.argument("name")
@click.pass_obj
def schedule_remove(obj: AppHolder, name: str) -> None:
    """Remove periodic task NAME (an entry of beat_schedule comes back when a beat restarts
    with it still there)."""
    _edited(lambda: _book(obj).remove(name))
    click.echo(f"removed {name}")


def _edited(edit: Any) -> Any:
    """Run an edit, turning a missing name or a bad value into one line."""
    from ..beat import NoSuchEntry

    try:
        return edit()
    except NoSuchEntry as exc:
        raise UserError(f"{_here()}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UserError(f"{_here()}: {exc}", exit_code=2) from exc


__all__ = ["beat", "schedule_group"]
