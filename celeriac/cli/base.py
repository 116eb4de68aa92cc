"""What every ``celeriac`` sub-command shares: the app holder, one-line user errors, options.

Layer: cli. Kept apart from cli/main.py so command modules (cli/periodic.py) can import it while
main.py, run as ``python -m celeriac.cli.main``, imports them.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..utils.imports import find_app
from ..utils.text import one_line


def _here() -> str:
    """The running command as typed, e.g. ``celeriac dlq list`` (to start one-line errors)."""
    return click.get_current_context().command_path


class UserError(click.ClickException):
    """A mistake shown as exactly one line on stderr (``celeriac <command>: <what to do>``),
    without click's usage block."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(one_line(message))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=file is None, file=file)


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
                raise UserError(f"{_here()}: no app given: use celeriac -A module COMMAND "
                                "(or set CELERIAC_APP)", exit_code=2)
            self._app = find_app(self.spec)
            if self.broker:
                self._app.conf["broker_url"] = self.broker
            if self.backend:
                self._app.conf["result_backend"] = self.backend
        return self._app


def _json_option(text: str, kind: type, wanted: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{_here()}: {wanted} (got {text!r}: {exc})", exit_code=2) from exc
    if not isinstance(value, kind):
        raise UserError(f"{_here()}: {wanted} (got {text!r})", exit_code=2)
    return value
