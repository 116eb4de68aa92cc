"""``celeriac inspect``, ``celeriac control`` and ``celeriac status``: remote control from the
shell, shaped like Celery's commands.

Layer: cli. ``inspect COMMAND`` asks the workers (``ping``, ``active``, ``stats``...),
``control COMMAND [ARGS]`` changes something in them (``rate_limit tasks.add 10/m``,
``add_consumer images``, ``shutdown``...), ``status`` lists the workers that answer a ping.
All take ``-d/--destination`` (comma-separated node names), ``-t/--timeout`` (seconds to wait for
answers, 1.0) and ``-j/--json``. Each answer is printed as it arrives; when no worker answers
within the timeout the command says so in one line and exits with 1.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from ..control.client import flatten_reply
from ..control.mailbox import DEFAULT_TIMEOUT
from ..utils.text import one_line
from ..utils.urls import redact_url
from .base import AppHolder, UserError, _here


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


class Command:
    """One remote command as the shell takes it: its positional arguments (name, type) in
    order, then, if ``variadic`` names one, every remaining word as a list."""

    def __init__(self, help: str, args: tuple[tuple[str, Callable[[str], Any]], ...] = (),  # noqa: A002
                 variadic: str | None = None, signature: str = "") -> None:
        self.help = help
        self.args = args
        self.variadic = variadic
        self.signature = signature

    def arguments(self, name: str, words: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        rest = list(words)
        for (arg, kind) in self.args:
            if not rest:
                break
            word = rest.pop(0)
            try:
                out[arg] = kind(word)
            except ValueError as exc:
                raise UserError(f"{_here()}: {name} {self.signature}: {arg} {word!r} is not "
                                f"valid ({one_line(exc)})", exit_code=2) from None
        if self.variadic:
            out[self.variadic] = rest
        elif rest:
            raise UserError(f"{_here()}: {name} takes {self.signature or 'no arguments'} "
                            f"(got {' '.join(words)})", exit_code=2)
        return out


INSPECT: dict[str, Command] = {
    "active": Command("Tasks each worker is running."),
    "active_queues": Command("Queues each worker consumes."),
    "clock": Command("Each worker's logical clock."),
    "conf": Command("Each worker's settings (those changed; with true: all).",
                    (("with_defaults", _flag),), signature="[include_defaults=False]"),
    "ping": Command("Ping the workers."),
    "query_task": Command("What the workers know of these task ids.", variadic="ids",
                          signature="[id1 [id2 [... [idN]]]]"),
    "registered": Command("Tasks each worker can run.", variadic="taskinfoitems",
                          signature="[attr1 [attr2 [... [attrN]]]]"),
    "report": Command("Software and settings of each worker, for bug reports."),
    "reserved": Command("Tasks each worker holds, waiting for a slot."),
    "revoked": Command("Revoked task ids each worker knows."),
    "scheduled": Command("Tasks with an ETA each worker holds (RabbitMQ)."),
    "stats": Command("Each worker's statistics."),
}

CONTROL: dict[str, Command] = {
    "add_consumer": Command("Make the workers consume a queue too.",
                            (("queue", str), ("exchange", str), ("exchange_type", str),
                             ("routing_key", str)),
                            signature="<queue> [exchange [type [routing_key]]]"),
    "autoscale": Command("Change the --autoscale bounds.", (("max", int), ("min", int)),
                         signature="[max [min]]"),
    "cancel_consumer": Command("Make the workers stop consuming a queue.", (("queue", str),),
                               signature="<queue>"),
    "disable_events": Command("Stop sending task events."),
    "enable_events": Command("Send task events (for Flower, celeriac events)."),
    "pool_grow": Command("Add pool slots.", (("n", int),), signature="[N=1]"),
    "pool_shrink": Command("Retire idle pool slots.", (("n", int),), signature="[N=1]"),
    "rate_limit": Command("Set a task's rate (for every worker together: '10/m', 0 for none).",
                          (("task_name", str), ("rate_limit", str)),
                          signature="<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>"),
    "revoke": Command("Never run these tasks (kept for workers started later too).",
                      variadic="task_id", signature="[id1 [id2 [... [idN]]]]"),
    "shutdown": Command("Warm shutdown of the workers."),
    "terminate": Command("Revoke these tasks and stop them where they run.",
                         (("signal", str),), variadic="task_id",
                         signature="<signal> [id1 [id2 [... [idN]]]]"),
    "time_limit": Command("Set a task's time limits on the running workers.",
                          (("task_name", str), ("soft", float), ("hard", float)),
                          signature="<task_name> <soft_secs> [hard_secs]"),
}


def _destination(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> list[str] | None:
    if not value:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    return names or None


def _remote_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("-j", "--json", "as_json", is_flag=True,
                            help="Print the answers as JSON.")(function)
    function = click.option("-d", "--destination", callback=_destination,
                            help="Comma-separated node names to ask (default: every worker).")(
        function)
    function = click.option("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT,
                            show_default=True, help="Seconds to wait for answers.")(function)
    return function


def _list_option(table: dict[str, Command], kind: str) -> Callable[..., Any]:
    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value:
            return
        width = max(len(f"{name} {c.signature}".strip()) for name, c in table.items())
        click.echo(f"{kind.capitalize()} commands:")
        for name, command in table.items():
            click.echo(f"  {f'{name} {command.signature}'.strip():<{width}}  {command.help}")
        ctx.exit()

    return click.option("--list", "list_", is_flag=True, expose_value=False, is_eager=True,
                        callback=show, help=f"List the {kind} commands and exit.")


def _pretty(value: Any) -> tuple[str, str]:
    """(status, body) of one node's answer, as Celery's commands print it."""
    if isinstance(value, dict) and ("ok" in value or "error" in value):
        status = "OK" if "ok" in value else "ERROR"
        return status, _indent(_pretty(value.get("ok", value.get("error")))[1])
    if isinstance(value, list):
        return "OK", "\n".join(f"* {item if isinstance(item, str) else json.dumps(item)}"
                               for item in value) or "- empty -"
    if isinstance(value, dict):
        return "OK", json.dumps(value, sort_keys=True, indent=4, default=repr)
    return "OK", value if isinstance(value, str) else repr(value)


def _indent(text: str, by: int = 4) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())


def _printer(show_body: bool) -> Callable[[dict[str, Any]], None]:
    def say(reply: dict[str, Any]) -> None:
        for node, value in reply.items():
            status, body = _pretty(value)
            click.echo(f"->  {node}: {status}")
            if show_body and body:
                click.echo(_indent(body))

    return say


def _none_answered(app: Any, timeout: float, destination: list[str] | None) -> UserError:
    who = f"none of {', '.join(destination)}" if destination else "no worker"
    return UserError(
        f"{_here()}: No nodes replied within time constraint ({who} answered within "
        f"{timeout:g}s on the broker at {redact_url(str(app.broker_url))}; is a worker running "
        f"there? A busy broker may need a longer -t)")


def _online(count: int) -> str:
    return f"\n{count} node{'' if count == 1 else 's'} online."


def _unknown(kind: str, name: str, table: dict[str, Command]) -> UserError:
    return UserError(f"{_here()}: unknown {kind} command {name!r}; the {kind} commands are: "
                     f"{', '.join(table)} (see --list)", exit_code=2)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("command")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_list_option(INSPECT, "inspect")
@_remote_options
@click.pass_obj
def inspect(obj: AppHolder, command: str, args: tuple[str, ...], timeout: float,
            destination: list[str] | None, as_json: bool) -> None:
    """Ask the workers: COMMAND is ping, active, reserved, scheduled, registered, stats,
    revoked, active_queues, conf, query_task, report or clock (--list shows them)."""
    spec = INSPECT.get(command)
    if spec is None:
        raise _unknown("inspect", command, INSPECT)
    arguments = spec.arguments(command, list(args))
    app = obj.app
    replies = app.control.broadcast(command, arguments=arguments, destination=destination,
                                    reply=True, timeout=timeout,
                                    callback=None if as_json else _printer(True))
    if not replies:
        raise _none_answered(app, timeout, destination)
    by_node = flatten_reply(replies)
    if as_json:
        click.echo(json.dumps(by_node, default=repr))
        return
    click.echo(_online(len(by_node)))


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("command")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_list_option(CONTROL, "control")
@_remote_options
@click.pass_obj
def control(obj: AppHolder, command: str, args: tuple[str, ...], timeout: float,
            destination: list[str] | None, as_json: bool) -> None:
    """Change something in the workers: COMMAND is revoke, terminate, rate_limit, time_limit,
    add_consumer, cancel_consumer, pool_grow, pool_shrink, autoscale, enable_events,
    disable_events or shutdown (--list shows their arguments)."""
    spec = CONTROL.get(command)
    if spec is None:
        raise _unknown("control", command, CONTROL)
    arguments = spec.arguments(command, list(args))
    app = obj.app
    options: dict[str, Any] = {"destination": destination, "reply": True, "timeout": timeout,
                               "callback": None if as_json else _printer(True)}
    control_ = app.control
    try:
        if command in ("revoke", "terminate"):
            if not arguments["task_id"]:
                raise UserError(f"{_here()}: name the task ids to {command}", exit_code=2)
            replies = control_.revoke(arguments["task_id"], terminate=command == "terminate",
                                      signal=arguments.get("signal") or "SIGTERM", **options)
        elif command == "rate_limit":
            if "rate_limit" not in arguments:
                raise UserError(f"{_here()}: rate_limit takes <task_name> <rate_limit>",
                                exit_code=2)
            if destination:
                raise UserError(f"{_here()}: celeriac's rate limits hold for every worker "
                                f"together: leave -d out", exit_code=2)
            options.pop("destination")
            replies = control_.rate_limit(arguments["task_name"], arguments["rate_limit"],
                                          **options)
        else:
            replies = control_.broadcast(command, arguments=arguments, **options)
    except ValueError as exc:
        raise UserError(f"{_here()}: {one_line(exc)}") from None
    if not replies:
        raise _none_answered(app, timeout, destination)
    if as_json:
        click.echo(json.dumps(replies, default=repr))


@click.command()
@_remote_options
@click.pass_obj
def status(obj: AppHolder, timeout: float, destination: list[str] | None,
           as_json: bool) -> None:
    """List the workers that answer a ping."""
    app = obj.app
    replies = app.control.inspect(timeout=timeout, destination=destination,
                                  callback=None if as_json else _printer(False)).ping()
    if not replies:
        raise _none_answered(app, timeout, destination)
    if as_json:
        click.echo(json.dumps(replies))
    click.echo(_online(len(replies)))
