"""Malformed Redis and SQLite URLs are refused with one ImproperlyConfigured line naming the
setting, the URL (password masked) and what is wrong (the parser alone; the CLI's one line is
tested in tests/unit/cli/test_cli_errors.py)."""

from __future__ import annotations

import pytest

from celeriac.backends.redis import client_options
from celeriac.exceptions import ImproperlyConfigured
from celeriac.utils.redis_wire import check_redis_url
from celeriac.utils.sqlite import sqlite_path_from_url


@pytest.mark.parametrize("url, problem", [
    ("redis://127.0.0.1:abc", "the port must be an integer from 1 to 65535 (got 'abc')"),
    ("redis://127.0.0.1:99999/0", "the port must be an integer from 1 to 65535 (got '99999')"),
    ("rediss://h:0", "the port must be an integer from 1 to 65535 (got '0')"),
    ("redis://127.0.0.1:6379/abc", "the database number must be an integer (got 'abc')"),
    ("redis://h:6379/-1", "the database number must be an integer (got '-1')"),
    ("redis://h:6379?db=two", "the database number must be an integer (got db='two')"),
    ("unix:///tmp/redis.sock?db=x", "the database number must be an integer (got db='x')"),
])
def test_malformed_redis_urls_are_refused(url, problem):
    with pytest.raises(ImproperlyConfigured) as info:
        check_redis_url(url, "broker_url")
    assert str(info.value).startswith(f"broker_url: invalid Redis URL {url!r}: {problem}")


@pytest.mark.parametrize("url", [
    "redis://", "redis://localhost", "redis://localhost:6379", "redis://localhost:6379/0",
    "redis://:pw@h:6380/15", "redis://user:p%40ss@h/3?global_keyprefix=x:", "rediss://h:6380/1",
    "redis://[::1]:6379/2", "unix:///tmp/redis.sock?db=2", "redis+socket:///tmp/r.sock",
    "sqlite:///x.db",  # not a Redis URL: not this check's business
])
def test_well_formed_urls_pass(url):
    check_redis_url(url, "broker_url")


def test_the_password_is_masked():
    with pytest.raises(ImproperlyConfigured) as info:
        check_redis_url("redis://:s3cret@h:abc/0", "result_backend")
    assert "s3cret" not in str(info.value)
    assert "result_backend: invalid Redis URL 'redis://:**@h:abc/0'" in str(info.value)


def test_the_result_backend_parser_uses_the_same_check():
    with pytest.raises(ImproperlyConfigured, match="result_backend: invalid Redis URL .*"
                                                   "database number must be an integer"):
        client_options("redis://h:6379/abc")


def test_the_broker_parser_uses_the_same_check():
    from celeriac.transport.redis import RedisTransport

    with pytest.raises(ImproperlyConfigured, match="broker_url: invalid Redis URL .*port"):
        RedisTransport.from_url("redis://h:abc/0")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "db+sqlite://?timeout=3"])
def test_a_sqlite_url_without_a_file_is_improperly_configured(url):
    with pytest.raises(ImproperlyConfigured, match="names no file.*sqlite:///path/to/file.db"):
        sqlite_path_from_url(url)
