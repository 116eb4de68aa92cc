"""``celeriac events``: watch the events workers send, live or as one line per event.

Layer: cli. ``celeriac -A proj events`` redraws a plain-text view of the workers and the latest
tasks every ``--frequency`` seconds (no curses: ANSI clear-screen on a terminal, a separator line
otherwise); ``--dump`` prints each event as it comes (like ``celery events --dump``), ``--json``
as one JSON object per line. When nothing arrives for ``--warn-after`` seconds it says so once,
with the likely reason, and keeps listening.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable

import click

from .base import AppHolder, UserError, _here

#: fields every event has, left out of ``--dump`` lines (shown in their own columns)
_COMMON = ("hostname", "timestamp", "type", "utcoffset", "pid", "clock", "local_received",
           "uuid", "name")


def _when(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)):
        return "?"
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def dump_line(event: dict[str, Any], names: dict[str, str]) -> str:
    """One event as a line: time, sender, type, ``name[uuid]`` for a task, then its fields.
    ``names`` remembers each task's name from its ``task-received`` / ``task-sent``."""
    kind = str(event.get("type"))
    parts = [_when(event.get("timestamp")), str(event.get("hostname")), kind]
    task_id = event.get("uuid")
    if task_id:
        if event.get("name"):
            names[task_id] = str(event["name"])
            while len(names) > 10000:  # a long dump stays small
                names.pop(next(iter(names)))
        parts.append(f"{names.get(task_id, '?')}[{task_id}]")
    parts.extend(f"{key}={event[key]}" for key in event if key not in _COMMON)
    return " ".join(parts)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _age(stamp: float | None, now: float) -> str:
    return "never" if stamp is None else f"{max(0.0, now - stamp):.1f} s ago"


def render(state: Any, title: str, max_tasks: int, width: int, notice: str = "") -> str:
    """The live view: a header, the workers, the latest tasks (most recent first)."""
    now = time.time()
    lines = [_fit(f"{title}: {state.event_count} events, {len(state.tasks)} tasks, "
                  f"{len(state.workers)} worker(s)   (Ctrl-C to quit)", width)]
    if notice:
        lines.append(_fit(notice, width))
    lines += ["", "WORKERS"]
    if not state.workers:
        lines.append("  (none seen yet)")
    for worker in list(state.workers.values()):
        load = " ".join(f"{value:.2f}" for value in (worker.loadavg or []))
        last = worker.heartbeats[-1] if worker.heartbeats else None
        lines.append(_fit(
            f"  {_fit(worker.hostname, 28):<28} {worker.status_string:<8}"
            f" active {worker.active or 0:<4} processed {worker.processed or 0:<7}"
            f" load {load or '-':<16} heartbeat {_age(last, now)}", width))
    lines += ["", f"TASKS (latest {max_tasks})",
              _fit(f"  {'STATE':<9} {'NAME':<28} {'UUID':<36} {'WORKER':<20} {'RUNTIME':>9}  "
                   "RESULT / EXCEPTION", width)]
    shown = state.tasks_by_time(max_tasks)
    if not shown:
        lines.append("  (none seen yet)")
    for task_id, task in shown:
        outcome = task.result if task.result is not None else (task.exception or "")
        runtime = f"{task.runtime:.3f}s" if isinstance(task.runtime, (int, float)) else ""
        name, worker = _fit(str(task.name or "?"), 28), _fit(str(task.worker or ""), 20)
        lines.append(_fit(f"  {task.state:<9} {name:<28} {task_id:<36} {worker:<20} "
                          f"{runtime:>9}  {outcome}", width))
    return "\n".join(lines)


def _no_events_line(url: str, seconds: float) -> str:
    return (f"no event received in {seconds:g} s from {url}: running workers send a heartbeat "
            "every 2 s (unless started with --without-heartbeat), task events need workers "
            "started with -E (or worker_send_task_events=True)")


@click.command()
@click.option("-d", "--dump", is_flag=True, default=False,
              help="Print each event as one line instead of the live view.")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="With --dump: each event as one JSON object per line.")
@click.option("-F", "--frequency", "--freq", type=float, default=1.0, show_default=True,
              help="Seconds between two redraws of the live view.")
@click.option("--max-tasks", type=int, default=20, show_default=True,
              help="Tasks shown in the live view (the latest first).")
@click.option("--limit", type=int, default=None,
              help="Stop after this many events (default: run until Ctrl-C).")
@click.option("--warn-after", type=float, default=5.0, show_default=True,
              help="Seconds without any event before saying so (once).")
@click.pass_obj
def events(obj: AppHolder, dump: bool, as_json: bool, frequency: float, max_tasks: int,
           limit: int | None, warn_after: float) -> None:
    """Watch the events workers send: a live view of workers and tasks, or --dump."""
    from ..events import EventReceiver, State
    from ..utils.urls import display_url

    if frequency <= 0:
        raise UserError(f"{_here()}: --frequency must be more than 0 seconds", exit_code=2)
    if limit is not None and limit < 1:
        raise UserError(f"{_here()}: --limit must be 1 or more", exit_code=2)
    if as_json and not dump:
        raise UserError(f"{_here()}: --json goes with --dump (one JSON event per line)",
                        exit_code=2)
    app = obj.app
    url = display_url(app.broker_url)
    receiver = EventReceiver(app)
    receiver.subscribe()  # now: a bad broker URL or an unreachable broker ends it here
    try:
        if dump:
            _dump(receiver, url, as_json, limit, warn_after)
        else:
            _live(receiver, State(), url, frequency, max_tasks, limit, warn_after)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()


def _capture(receiver: Any, limit: int | None, warn_after: float,
             on_silence: Callable[[], None]) -> None:
    """Run the receiver until ``limit`` events (or until stopped); ``on_silence`` once if
    nothing has arrived ``warn_after`` seconds after the start."""
    seen = 0

    def check() -> None:
        if not seen and not receiver.should_stop:
            on_silence()

    timer = threading.Timer(warn_after, check)
    timer.daemon = True
    timer.start()
    try:
        for _ in receiver.itercapture(limit=limit):
            seen += 1
    finally:
        timer.cancel()


def _dump(receiver: Any, url: str, as_json: bool, limit: int | None,
          warn_after: float) -> None:
    names: dict[str, str] = {}

    def show(event: dict[str, Any]) -> None:
        line = json.dumps(event, default=repr) if as_json else dump_line(dict(event), names)
        click.echo(line)

    receiver.handlers["*"] = show
    click.echo(f"-> celeriac events: listening on {url} (Ctrl-C to quit)", err=True)
    silence = f"{_here()}: {_no_events_line(url, warn_after)}"  # said from the timer's thread
    _capture(receiver, limit, warn_after, lambda: click.echo(silence, err=True))


def _live(receiver: Any, state: Any, url: str, frequency: float, max_tasks: int,
          limit: int | None, warn_after: float) -> None:
    receiver.handlers["*"] = state.event
    notice: list[str] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def listen() -> None:
        try:
            _capture(receiver, limit, warn_after,
                     lambda: notice.append(_no_events_line(url, warn_after)))
        except BaseException as exc:  # shown by the main thread
            failure.append(exc)
        finally:
            done.set()

    listener = threading.Thread(target=listen, name="celeriac-events-listener", daemon=True)
    listener.start()
    tty = sys.stdout.isatty()
    title = f"celeriac events on {url}"
    try:
        while True:
            finished = done.wait(frequency)
            width = shutil.get_terminal_size((120, 40)).columns if tty else 160
            shown = notice[-1] if notice and not state.event_count else ""
            screen = render(state, title, max_tasks, width, shown)
            click.echo(("\x1b[H\x1b[2J" + screen) if tty else screen + "\n" + "-" * 40)
            if finished:
                break
    finally:
        receiver.stop()
        listener.join(timeout=2.0)
    if failure:
        raise UserError(f"{_here()}: stopped listening: {failure[0]}")
