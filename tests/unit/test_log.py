"""Logging helpers: task loggers, the task-aware formatter, and the worker's logging setup."""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import pytest

from celeriac import signals
from celeriac._context import current_request_var
from celeriac.exceptions import ImproperlyConfigured
from celeriac.utils import log
from celeriac.utils.log import (
    TASK_LOGGER_NAME,
    ColorFormatter,
    TaskFormatter,
    get_logger,
    get_task_logger,
    setup_logging,
)


@pytest.fixture
def clean_logging():
    """Undo what setup_logging does to the root and task loggers (and close its files)."""
    root, task_logger = logging.getLogger(), logging.getLogger(TASK_LOGGER_NAME)
    saved = (root.level, task_logger.level, task_logger.propagate)
    yield
    for logger in (root, task_logger):
        handler = log._installed.pop(logger.name, None)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
    root.setLevel(saved[0])
    task_logger.setLevel(saved[1])
    task_logger.propagate = saved[2]


@pytest.fixture
def in_task():
    token = current_request_var.set(SimpleNamespace(id="id-123", task="tasks.add"))
    yield
    current_request_var.reset(token)


def _record(msg="hello", level=logging.INFO):
    return logging.LogRecord("x", level, __file__, 1, msg, None, None)


# ---- loggers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["celeriac", "celeriac.task"])
def test_task_logger_names_that_clash_with_the_parent_are_refused(name):
    with pytest.raises(RuntimeError, match="reserved"):
        get_task_logger(name)


def test_task_logger_hangs_under_the_task_logger():
    logger = get_task_logger("proj.tasks_h4")
    assert logger is logging.getLogger("proj.tasks_h4")
    assert logger.parent is logging.getLogger(TASK_LOGGER_NAME)
    child = get_task_logger(TASK_LOGGER_NAME + ".h4child")
    assert child.parent is logging.getLogger(TASK_LOGGER_NAME)


def test_get_logger_is_the_standard_logger():
    assert get_logger("celeriac.h4") is logging.getLogger("celeriac.h4")


# ---- formatters ----------------------------------------------------------------------------------
def test_task_formatter_outside_a_task_uses_placeholders():
    fmt = TaskFormatter("%(task_name)s[%(task_id)s]: %(message)s")
    assert fmt.format(_record()) == "???[???]: hello"


def test_task_formatter_inside_a_task_names_it(in_task):
    fmt = TaskFormatter("%(task_name)s[%(task_id)s]: %(message)s")
    assert fmt.format(_record()) == "tasks.add[id-123]: hello"


def test_color_formatter_colors_only_when_asked():
    plain = ColorFormatter("%(message)s")
    colored = ColorFormatter("%(message)s", use_color=True)
    assert plain.format(_record(level=logging.ERROR)) == "hello"
    text = colored.format(_record(level=logging.ERROR))
    assert text.startswith("\033[") and text.endswith("\033[0m") and "hello" in text


# ---- setup_logging -------------------------------------------------------------------------------
@pytest.mark.parametrize("level, expected", [("info", logging.INFO), ("DEBUG", logging.DEBUG),
                                             (logging.ERROR, logging.ERROR), ("30", 30)])
def test_level_names_and_numbers(clean_logging, level, expected):
    setup_logging(level)
    assert logging.getLogger().level == expected
    assert logging.getLogger(TASK_LOGGER_NAME).level == expected


def test_bad_level_name_is_refused(clean_logging):
    with pytest.raises(ImproperlyConfigured, match="'LOUD'"):
        setup_logging("LOUD")


def test_logfile_gets_process_and_task_formats(clean_logging, tmp_path, in_task):
    path = tmp_path / "worker.log"
    setup_logging("INFO", str(path))
    logging.getLogger("celeriac.h4test").info("plain line")
    get_task_logger("proj.h4tasks").warning("task line")
    for handler in log._installed.values():
        handler.flush()
    lines = path.read_text().splitlines()
    assert any(line.endswith("plain line") and "INFO/MainProcess]" in line for line in lines)
    task_lines = [line for line in lines if line.endswith("task line")]
    assert len(task_lines) == 1  # the task logger doesn't propagate to the root handler too
    assert "WARNING/MainProcess] tasks.add[id-123]: task line" in task_lines[0]


def test_calling_twice_does_not_duplicate_handlers(clean_logging, tmp_path):
    root = logging.getLogger()
    before = len(root.handlers)
    setup_logging("INFO", str(tmp_path / "a.log"))
    first = log._installed[root.name]
    setup_logging("INFO", str(tmp_path / "a.log"))
    assert len(root.handlers) == before + 1
    assert first not in root.handlers
    assert len(logging.getLogger(TASK_LOGGER_NAME).handlers) == 1


def test_stream_handler_without_logfile(clean_logging):
    setup_logging("WARNING")
    handler = log._installed[logging.getLogger().name]
    assert type(handler) is logging.StreamHandler
    assert logging.getLogger(TASK_LOGGER_NAME).propagate is False


def test_logfile_node_placeholders(clean_logging, tmp_path):
    setup_logging("INFO", str(tmp_path / "%n-%h-%d%I.log"), hostname="w1@box.example.com")
    root_handler = log._installed[logging.getLogger().name]
    assert root_handler.baseFilename == str(tmp_path / "w1-box.example.com-example.com.log")
    setup_logging("INFO", str(tmp_path / "%n@%h.log"))
    root_handler = log._installed[logging.getLogger().name]
    assert root_handler.baseFilename == str(tmp_path / f"celery@{socket.gethostname()}.log")


def test_a_setup_logging_receiver_takes_over(clean_logging):
    calls = []

    def receiver(**kw):
        calls.append(kw)

    signals.setup_logging.connect(receiver)
    try:
        setup_logging("info", "some.log")
    finally:
        signals.setup_logging.disconnect(receiver)
    assert log._installed == {}
    assert calls[0]["loglevel"] == logging.INFO and calls[0]["logfile"] == "some.log"


def test_after_setup_signals_get_the_loggers(clean_logging):
    got = {}

    def root_receiver(logger, loglevel, **kw):
        got["root"] = (logger, loglevel, kw["format"])

    def task_receiver(logger, **kw):
        got["task"] = logger

    signals.after_setup_logger.connect(root_receiver)
    signals.after_setup_task_logger.connect(task_receiver)
    try:
        setup_logging("ERROR")
    finally:
        signals.after_setup_logger.disconnect(root_receiver)
        signals.after_setup_task_logger.disconnect(task_receiver)
    assert got["root"][0] is logging.getLogger() and got["root"][1] == logging.ERROR
    assert "%(processName)s" in got["root"][2]
    assert got["task"] is logging.getLogger(TASK_LOGGER_NAME)
