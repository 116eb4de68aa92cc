"""Reading amqp://, pyamqp:// and amqps:// broker URLs as kombu does (no broker needed)."""

from __future__ import annotations

import pytest

from celeriac.transport import transport_from_url
from celeriac.transport.amqp import AMQPTransport
from celeriac.utils.amqp_url import parse_url


@pytest.mark.parametrize(("url", "host", "port", "vhost", "user", "password", "tls"), [
    ("amqp://guest@localhost//", "localhost", 5672, "/", "guest", "guest", False),
    ("pyamqp://guest@localhost//", "localhost", 5672, "/", "guest", "guest", False),
    ("amqp://h/", "h", 5672, "/", "guest", "guest", False),
    ("amqp://h", "h", 5672, "/", "guest", "guest", False),
    ("amqp://h/foo", "h", 5672, "foo", "guest", "guest", False),
    ("amqp://u%40x:p%2Fw@h:5673/%2Ffoo", "h", 5673, "/foo", "u@x", "p/w", False),
    ("amqps://u:p@rabbit.example/prod", "rabbit.example", 5671, "prod", "u", "p", True),
    ("amqp://h/v?ssl=1", "h", 5672, "v", "guest", "guest", True),
])
def test_urls(url: str, host: str, port: int, vhost: str, user: str, password: str,
              tls: bool) -> None:
    address = parse_url(url)
    assert (address.host, address.port, address.virtual_host, address.userid,
            address.password, address.tls) == (host, port, vhost, user, password, tls)


def test_query_options_and_settings() -> None:
    transport = AMQPTransport("amqp://h//?heartbeat=30&connect_timeout=2.5&login_method=PLAIN")
    assert (transport.heartbeat, transport.connect_timeout, transport.login_method) == (
        30.0, 2.5, "PLAIN")
    # keyword options (broker_transport_options, or the app's broker_* settings) win
    tuned = AMQPTransport("amqp://h//?heartbeat=30", heartbeat=0, ssl={"ca_certs": "/ca.pem"})
    assert (tuned.heartbeat, tuned.ssl) == (0.0, {"ca_certs": "/ca.pem"})
    assert AMQPTransport("amqp://h//").heartbeat == 120.0  # broker_heartbeat's default
    assert AMQPTransport("amqps://h//", ssl=False).ssl is True  # amqps always speaks TLS


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        parse_url("amqp://h//?heartbeat=often")
    with pytest.raises(ValueError, match="port"):
        parse_url("amqp://h:notaport//")


def test_the_factory_builds_it_without_connecting() -> None:
    transport = transport_from_url("pyamqp://guest:secret@127.0.0.1:1//")
    assert isinstance(transport, AMQPTransport)
    assert "secret" not in repr(transport)


def test_celerys_broker_settings_reach_the_transport_only_where_the_user_set_them() -> None:
    from celeriac import Celery
    from celeriac.config import ineffective_settings

    app = Celery("amqp-settings", broker="amqp://guest:guest@127.0.0.1:5672//?heartbeat=10",
                 set_as_current=False)
    assert app.transport.heartbeat == 10.0  # unset: the URL's query applies
    app.close()
    app.conf.broker_heartbeat = 30
    app.conf.broker_connection_timeout = 7
    app.conf.broker_use_ssl = {"cert_reqs": 0}
    app.conf.task_queue_max_priority = 5
    transport = app.transport
    assert (transport.heartbeat, transport.connect_timeout) == (30.0, 7.0)
    assert transport.ssl == {"cert_reqs": 0} and transport.max_priority == 5
    assert ineffective_settings(app.conf) == []  # none of them is warned about on RabbitMQ
    app.close()
