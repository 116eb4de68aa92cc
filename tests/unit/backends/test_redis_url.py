"""How Redis result-backend URLs and settings become redis-py client options (no server needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from redis.connection import SSLConnection, UnixDomainSocketConnection

from celeriac import Celery
from celeriac.backends import backend_from_url
from celeriac.backends.redis import RedisBackend, client_options
from celeriac.exceptions import ImproperlyConfigured


def _conf(**values: object) -> SimpleNamespace:
    return SimpleNamespace(**values)


def test_plain_url_keeps_host_db_and_password() -> None:
    url, prefix, kwargs = client_options("redis://:s3cret@10.0.0.5:6380/3")
    assert (url, prefix) == ("redis://:s3cret@10.0.0.5:6380/3", "")
    assert kwargs["socket_timeout"] == 120.0  # not redis-py 8's 5 s default
    assert "password" not in kwargs  # the URL's own password is used


def test_settings_fill_in_timeouts_and_credentials() -> None:
    conf = _conf(redis_socket_timeout=30.0, redis_socket_connect_timeout=2.0,
                 redis_password="fromconf", redis_max_connections=7)
    _, _, kwargs = client_options("redis://localhost/0", conf)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (30.0, 2.0)
    assert (kwargs["password"], kwargs["max_connections"]) == ("fromconf", 7)


def test_global_keyprefix_from_query_or_transport_options() -> None:
    url, prefix, _ = client_options("redis://localhost/0?global_keyprefix=app1:")
    assert (url, prefix) == ("redis://localhost/0", "app1:")
    _, prefix, _ = client_options("redis://localhost/0", None, {"global_keyprefix": "app2:"})
    assert prefix == "app2:"


@pytest.mark.parametrize("query,expected", [
    ("ssl_cert_reqs=CERT_REQUIRED", "required"),
    ("ssl_cert_reqs=optional", "optional"),
    ("ssl_cert_reqs=CERT_NONE", "none"),
    ("", "required"),
])
def test_rediss_cert_reqs(query: str, expected: str) -> None:
    url, _, kwargs = client_options(f"rediss://h:6380/1?{query}")
    assert url == "rediss://h:6380/1"
    assert kwargs["ssl_cert_reqs"] == expected


def test_rediss_takes_the_ssl_setting_and_the_query_wins() -> None:
    conf = _conf(redis_backend_use_ssl={"ssl_cert_reqs": "CERT_OPTIONAL",
                                        "ssl_ca_certs": "/etc/ca.pem"})
    _, _, kwargs = client_options("rediss://h/0?ssl_cert_reqs=none", conf)
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == ("none", "/etc/ca.pem")
    backend = RedisBackend(url="rediss://h/0?ssl_cert_reqs=none")
    try:
        assert backend.client().connection_pool.connection_class is SSLConnection
    finally:
        backend.close()


def test_bad_cert_reqs_and_ssl_on_plain_redis_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured):
        client_options("rediss://h/0?ssl_cert_reqs=sometimes")
    with pytest.raises(ImproperlyConfigured):
        client_options("redis://h/0?ssl_cert_reqs=required")


@pytest.mark.parametrize("scheme", ["unix", "redis+socket"])
def test_socket_urls(scheme: str) -> None:
    backend = RedisBackend(url=f"{scheme}:///run/redis/redis.sock?db=4")
    try:
        pool = backend.client().connection_pool
        assert pool.connection_class is UnixDomainSocketConnection
        assert (pool.connection_kwargs["path"], pool.connection_kwargs["db"]) == (
            "/run/redis/redis.sock", 4)
    finally:
        backend.close()


def test_not_a_redis_url() -> None:
    with pytest.raises(ImproperlyConfigured):
        client_options("amqp://guest@localhost//")


def test_backend_from_url_builds_the_redis_backend_and_masks_the_password() -> None:
    backend = backend_from_url("redis://:hunter2@localhost:6379/2")
    try:
        assert isinstance(backend, RedisBackend)
        assert "hunter2" not in repr(backend)
    finally:
        backend.close()


@pytest.mark.parametrize("value", [-0.5, "soon", True, float("inf")])
def test_a_bad_busy_poll_is_refused_by_name(value) -> None:
    app = Celery("bad-poll", broker="memory://bad-poll", backend="redis://h/0",
                 set_as_current=False, result_backend_transport_options={"busy_poll": value})
    try:
        with pytest.raises(ImproperlyConfigured, match="busy_poll"):
            app.backend  # noqa: B018 - the property builds the store, which checks the option
    finally:
        app.close()
