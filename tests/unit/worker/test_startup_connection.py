"""The worker's startup connection policy and backoff (pure logic), and redact_url."""

from __future__ import annotations

import itertools

import pytest

from celeriac.config import Settings
from celeriac.utils.urls import display_url, redact_url
from celeriac.worker.worker import connection_retry_pauses, startup_connection_policy


def test_by_default_the_worker_retries_100_times_as_celery():
    assert startup_connection_policy(Settings()) == (True, 100)


@pytest.mark.parametrize("settings, expected", [
    ({"broker_connection_retry_on_startup": False}, (False, 100)),
    # unset on_startup falls back to broker_connection_retry, as in Celery 5
    ({"broker_connection_retry": False}, (False, 100)),
    ({"broker_connection_retry": False, "broker_connection_retry_on_startup": True}, (True, 100)),
    ({"broker_connection_max_retries": None}, (True, None)),  # None: forever
    ({"broker_connection_max_retries": 0}, (True, 0)),  # 0: no retry (kombu; celery#8626)
    ({"broker_connection_max_retries": -3}, (True, 0)),
    ({"broker_connection_max_retries": 2.5}, (True, 2.5)),
])
def test_startup_policy_follows_celerys_settings(settings, expected):
    assert startup_connection_policy(Settings(settings)) == expected


def test_pauses_grow_by_two_seconds_up_to_thirty_as_kombu():
    pauses = list(itertools.islice(connection_retry_pauses(), 18))
    assert pauses[:4] == [2.0, 4.0, 6.0, 8.0]
    assert pauses[14:] == [30.0, 30.0, 30.0, 30.0]
    assert max(pauses) == 30.0


@pytest.mark.parametrize("url, shown", [
    ("redis://:secret@127.0.0.1:6390/0", "redis://:**@127.0.0.1:6390/0"),
    ("amqp://guest:guest@rabbit:5672//", "amqp://guest:**@rabbit:5672//"),
    ("redis://:pa/ss@h:6379/0", "redis://:**@h:6379/0"),  # an unquoted "/" in the password
    ("redis://user@h:6379/0", "redis://user@h:6379/0"),  # no password: nothing to hide
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("sqlite:///celeriac.db", "sqlite:///celeriac.db"),
])
def test_redact_url_masks_only_the_password(url, shown):
    assert redact_url(url) == shown


def test_display_url_shows_a_relative_sqlite_file_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert display_url("sqlite:///celeriac.db") == (
        f"sqlite:///celeriac.db ({tmp_path / 'celeriac.db'})")
    assert display_url(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert display_url("redis://:pw@h/0") == "redis://:**@h/0"
