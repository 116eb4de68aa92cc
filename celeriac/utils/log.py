"""Logging helpers: task loggers that show the running task, and the worker's logging setup.

Layer: utils (imports ``signals``, ``_context``, ``config`` and ``exceptions``). Public facade with
Celery's names (``celery.utils.log``).
"""

from __future__ import annotations

import logging
import re
import socket

from .. import signals
from .._context import current_request_var
from ..config import PROCESS_LOG_FORMAT, TASK_LOG_FORMAT
from ..exceptions import ImproperlyConfigured

__all__ = ["TASK_LOGGER_NAME", "ColorFormatter", "TaskFormatter", "get_logger", "get_task_logger",
           "setup_logging"]

#: parent of every task logger; the worker gives it the task format and its own handler
TASK_LOGGER_NAME = "celeriac.task"
_RESERVED = frozenset({"celeriac", TASK_LOGGER_NAME})

#: logger name -> the handler ``setup_logging`` installed there, replaced on the next call
_installed: dict[str, logging.Handler] = {}


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger whose records go through the task logger (and so carry the task name and id)."""
    if name in _RESERVED:
        raise RuntimeError(f"logger name {name!r} is reserved for celeriac's task logger")
    logger = logging.getLogger(name)
    task_logger = logging.getLogger(TASK_LOGGER_NAME)
    if not name.startswith(TASK_LOGGER_NAME + "."):
        logger.parent = task_logger
    return logger


_COLORS = {logging.DEBUG: "\033[34m", logging.WARNING: "\033[33m", logging.ERROR: "\033[31m",
           logging.CRITICAL: "\033[35m"}
_RESET = "\033[0m"


class ColorFormatter(logging.Formatter):
    """Colours a whole line by level when ``use_color`` (a terminal), plain otherwise."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None,
                 use_color: bool = False) -> None:
        super().__init__(fmt, datefmt)
        self.use_color = use_color

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        color = _COLORS.get(record.levelno) if self.use_color else None
        return f"{color}{text}{_RESET}" if color else text


class TaskFormatter(ColorFormatter):
    """Fills ``%(task_name)s`` and ``%(task_id)s`` from the task running in this context."""

    def format(self, record: logging.LogRecord) -> str:
        request = current_request_var.get()
        if request is not None:
            record.task_name = request.task or "???"
            record.task_id = request.id or "???"
        else:
            record.__dict__.setdefault("task_name", "???")
            record.__dict__.setdefault("task_id", "???")
        return super().format(record)


def _parse_level(loglevel: int | str) -> int:
    if isinstance(loglevel, int) and not isinstance(loglevel, bool) and loglevel >= 0:
        return loglevel
    if isinstance(loglevel, str):
        if loglevel.isdigit():
            return int(loglevel)
        level = logging.getLevelName(loglevel.upper())  # a known name maps to its number
        if isinstance(level, int):
            return level
    raise ImproperlyConfigured(f"loglevel: unknown log level {loglevel!r}; "
                               "use DEBUG, INFO, WARNING, ERROR or CRITICAL")


def _expand_logfile(logfile: str, hostname: str | None) -> str:
    """Celery's placeholders for node ``name@host.domain``: %p the node, %n the name, %h the host,
    %d the domain, %i/%I the pool process index ("0"/"" here: set up in the main process)."""
    node = (hostname or "celery@%h").replace("%h", socket.gethostname())
    name, _, host = node.partition("@") if "@" in node else ("celery", "", node)
    values = {"p": node, "n": name, "h": host, "d": host.partition(".")[2],
              "i": "0", "I": "", "%": "%"}
    return re.sub(r"%([pnhdiI%])", lambda m: values[m.group(1)], logfile)


def _install(logger: logging.Logger, handler: logging.Handler, level: int) -> None:
    old = _installed.pop(logger.name, None)
    if old is not None:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level)
    _installed[logger.name] = handler


def _handler(path: str | None, fmt: str, colorize: bool) -> logging.Handler:
    handler: logging.Handler = (logging.FileHandler(path, encoding="utf-8") if path
                                else logging.StreamHandler())
    handler.setFormatter(TaskFormatter(fmt, use_color=colorize))
    return handler


def setup_logging(loglevel: int | str = "WARNING", logfile: str | None = None, *,
                  hostname: str | None = None, colorize: bool = False) -> None:
    """Configure logging for a worker process; calling it again replaces what it set up.

    As in Celery, if anything is connected to ``signals.setup_logging`` the signal is sent and
    nothing else is configured: the application owns logging then.
    """
    level = _parse_level(loglevel)
    if signals.setup_logging.receivers:
        signals.setup_logging.send(sender=None, loglevel=level, logfile=logfile,
                                   format=PROCESS_LOG_FORMAT, colorize=colorize)
        return
    path = _expand_logfile(logfile, hostname) if logfile else None
    root = logging.getLogger()
    _install(root, _handler(path, PROCESS_LOG_FORMAT, colorize), level)
    task_logger = logging.getLogger(TASK_LOGGER_NAME)
    _install(task_logger, _handler(path, TASK_LOG_FORMAT, colorize), level)
    task_logger.propagate = False  # its own handler has the task format; don't log twice
    if signals.after_setup_logger.receivers:
        signals.after_setup_logger.send(sender=None, logger=root, loglevel=level, logfile=path,
                                        format=PROCESS_LOG_FORMAT, colorize=colorize)
    if signals.after_setup_task_logger.receivers:
        signals.after_setup_task_logger.send(sender=None, logger=task_logger, loglevel=level,
                                             logfile=path, format=TASK_LOG_FORMAT,
                                             colorize=colorize)
