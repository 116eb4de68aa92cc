"""CLI commands against a real SQLite file, through click's CliRunner: ``purge`` names each queue
it emptied with its count, and an unexpected error (a bug) is not turned into a one-liner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from celeriac import Celery
from celeriac.cli.main import AppHolder, cli


@pytest.fixture
def app(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    app = Celery("cli_test", broker=url, backend=url)
    yield app
    app.close()


def invoke(app, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), obj=AppHolder(None, app=app), input=input,
                            prog_name="celeriac")


def _send(app, queue: str, n: int) -> None:
    for i in range(n):
        app.send_task("cli_test.noop", (i,), queue=queue)


def test_purge_names_each_queue_and_its_count(app):
    _send(app, "alpha", 3)
    _send(app, "beta", 1)
    _send(app, "gamma", 2)  # not named: left alone
    result = invoke(app, "purge", "-f", "-Q", "alpha, beta,empty")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "Purged 4 message(s) from 3 queue(s): alpha (3), beta (1), empty (0)")
    again = invoke(app, "purge", "-f", "-Q", "alpha,beta,gamma")
    assert again.exit_code == 0, again.output
    assert again.output.strip() == (
        "Purged 2 message(s) from 3 queue(s): alpha (0), beta (0), gamma (2)")


def test_purge_defaults_to_the_default_queue(app):
    _send(app, "celery", 2)
    result = invoke(app, "purge", "-f")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Purged 2 message(s) from 1 queue(s): celery (2)"


def test_purge_asks_first_and_lists_the_queues(app):
    _send(app, "alpha", 1)
    declined = invoke(app, "purge", "-Q", "alpha,beta", input="n\n")
    assert declined.exit_code != 0
    assert "Delete all waiting messages in alpha, beta?" in declined.output
    assert "Purged" not in declined.output
    kept = invoke(app, "purge", "-f", "-Q", "alpha")
    assert kept.output.strip().endswith("alpha (1)"), kept.output


def test_purge_with_no_queue_names(app):
    result = invoke(app, "purge", "-f", "-Q", " , ")
    assert result.exit_code == 2
    assert "no queue named" in result.output


def test_unexpected_errors_are_not_turned_into_one_liners(app, monkeypatch):
    """A bug in celeriac must still show its traceback: only the known user-error types become
    one line."""

    def broken_purge(queue: str) -> int:
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(app.transport, "purge", broken_purge)
    result = invoke(app, "purge", "-f")
    assert isinstance(result.exception, RuntimeError), result.output


def test_known_user_errors_raised_anywhere_become_one_line(app, monkeypatch):
    from celeriac.exceptions import MissingDependency, OperationalError

    for exc in (OperationalError("broker redis://:**@h:6379// unreachable after 3 retries"),
                MissingDependency("the redis:// broker needs redis-py:\n"
                                  "pip install 'celeriac[redis]'")):
        def failing(queue: str, exc: Exception = exc) -> int:
            raise exc

        monkeypatch.setattr(app.transport, "purge", failing)
        result = invoke(app, "purge", "-f")
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"celeriac purge: {' '.join(str(exc).split())}"], result.output
