"""Celery's worker flags reach the Worker as the right options (pure CLI parsing: the Worker is
replaced by a recorder; real starts with --pidfile, --purge and --time-limit are in
tests/integration/test_worker_startup.py)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from celeriac import Celery
from celeriac.cli.main import cli


class Recorded(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("recorded")
        self.kwargs = kwargs


@pytest.fixture
def parsed(tmp_path, monkeypatch):
    app = Celery("opts", broker=f"sqlite:///{tmp_path / 'x.db'}", set_as_current=False)

    def record(**kwargs: Any) -> None:
        raise Recorded(kwargs)

    monkeypatch.setattr(app, "Worker", record)
    monkeypatch.setattr("celeriac.utils.log.setup_logging", lambda *a, **k: None)

    def options(*args: str) -> dict[str, Any]:
        from celeriac.cli.main import AppHolder

        result = CliRunner().invoke(cli, ["worker", *args], obj=AppHolder(None, app=app))
        assert isinstance(result.exception, Recorded), result.output
        return result.exception.kwargs

    yield options
    app.close()


@pytest.mark.parametrize("args, expected", [
    (["-B"], {"beat": True}), (["--beat"], {"beat": True}),
    (["-B", "-s", "/tmp/sched"], {"beat": True, "schedule_filename": "/tmp/sched"}),
    (["--autoscale", "10,3"], {"autoscale": "10,3"}),
    (["--max-tasks-per-child", "100"], {"max_tasks_per_child": 100}),
    (["--max-memory-per-child", "12000"], {"max_memory_per_child": 12000}),
    (["-O", "fair"], {"optimization": "fair"}),
    (["--pidfile", "w.pid"], {"pidfile": "w.pid"}),
    (["--statedb", "w.state"], {"statedb": "w.state"}),
    (["--time-limit", "30", "--soft-time-limit", "20.5"],
     {"time_limit": 30.0, "soft_time_limit": 20.5}),
    (["--purge"], {"purge": True}), (["--discard"], {"purge": True}),
    (["--heartbeat-interval", "5"], {"heartbeat_interval": 5.0}),
    (["--prefetch-multiplier", "1"], {"prefetch_multiplier": 1}),
])
def test_celery_worker_flags_reach_the_worker(parsed, args, expected):
    kwargs = parsed(*args)
    for key, value in expected.items():
        assert kwargs[key] == value, key


def test_without_flags_every_option_is_off(parsed):
    kwargs = parsed()
    for key in ("beat", "purge"):
        assert kwargs[key] is False
    for key in ("autoscale", "max_tasks_per_child", "max_memory_per_child", "optimization",
                "pidfile", "statedb", "time_limit", "soft_time_limit", "heartbeat_interval"):
        assert kwargs[key] is None, key


def test_gossip_and_mingle_flags_are_accepted_and_dropped(parsed):
    kwargs = parsed("--without-gossip", "--without-mingle")
    assert not {"without_gossip", "without_mingle"} & set(kwargs)


def test_without_heartbeat_reaches_the_worker(parsed):
    """It switches the worker's events off (worker-online, -heartbeat, -offline)."""
    assert parsed("--without-heartbeat")["without_heartbeat"] is True
    assert parsed()["without_heartbeat"] is False


def test_help_tells_what_each_flag_does(tmp_path):
    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Messages reserved per pool slot" in text  # --prefetch-multiplier
    assert "celeriac workers do not gossip anyway" in text
    assert "Run a beat in this worker too" in text  # -B
