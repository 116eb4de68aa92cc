"""Broker URL forms the Redis transport takes (no server needed: connections open lazily)."""

from __future__ import annotations

import pytest

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured
from celeriac.transport.redis import RedisTransport


def test_the_key_prefix_can_come_from_the_url_query() -> None:
    transport = RedisTransport.from_url("redis://127.0.0.1:6379/3?global_keyprefix=app1:")
    assert transport.prefix == "app1:" and transport.url == "redis://127.0.0.1:6379/3"
    assert transport.unacked_key == "app1:unacked"
    explicit = RedisTransport.from_url("redis://h/0?global_keyprefix=url:", global_keyprefix="opt:")
    assert explicit.prefix == "opt:"  # the transport option wins


def test_other_query_options_stay_in_the_url() -> None:
    transport = RedisTransport.from_url("redis://h:1/2?socket_timeout=3&global_keyprefix=p:")
    assert transport.url == "redis://h:1/2?socket_timeout=3"


def test_broker_use_ssl_takes_celerys_dict_and_reaches_the_transport() -> None:
    app = Celery("tls", broker="rediss://h:6380/0", backend="memory://tls-unit",
                 set_as_current=False, broker_use_ssl={"ssl_cert_reqs": "none"})
    try:
        kwargs = app.transport._client.connection_pool.connection_kwargs
        assert kwargs["ssl_cert_reqs"] == "none"
    finally:
        app.close()
    with pytest.raises(ImproperlyConfigured, match="broker_use_ssl"):
        Celery("bad-tls", broker="memory://x", set_as_current=False,
               broker_use_ssl="yes").finalize()


@pytest.mark.parametrize("value", [-1, "fast", None, True, float("nan"), 5])
def test_a_bad_busy_poll_is_refused_by_name(value) -> None:
    with pytest.raises(ValueError, match="busy_poll"):
        RedisTransport.from_url("redis://127.0.0.1:6379/3", busy_poll=value)


def test_busy_poll_may_be_given_as_text() -> None:
    RedisTransport.from_url("redis://127.0.0.1:6379/3", busy_poll="0.0005")  # no error
