"""``broker_transport_options`` a broker does not use: one warning line each, naming the option
and the broker, once per process; options a broker uses say nothing. No broker needed: the
transports connect at first use (Redis's client lazily)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from celeriac import Celery
from celeriac.exceptions import ImproperlyConfigured
from celeriac.transport import options as transport_options
from celeriac.transport import transport_from_url
from celeriac.transport.amqp import AMQPTransport

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing warned about yet."""
    monkeypatch.setattr(transport_options, "_warned", set())


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "celeriac.transport" and r.levelno == logging.WARNING]


def test_an_unknown_amqp_option_is_warned_about_once_with_its_name(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # a producer builds its transport again after a fork, or a second app
        AMQPTransport.from_url(AMQP_URL, confirm_publsh=False).close()
    assert _lines(caplog) == [
        "broker_transport_options: 'confirm_publsh' has no effect on the RabbitMQ broker "
        "(ignored): no such option; did you mean 'confirm_publish'?"]


def test_known_amqp_options_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    transport = transport_from_url(AMQP_URL, confirm_publish=False, confirm_timeout=5,
                                   heartbeat=30, qos_global=False, max_priority=9)
    assert transport.confirm_publish is False  # type: ignore[attr-defined]
    assert AMQPTransport(AMQP_URL).confirm_publish is True  # celeriac's default
    assert _lines(caplog) == []


def test_kombu_options_celeriac_does_not_need_say_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    transport_from_url(AMQP_URL, max_retries=3, visibility_timeout=60)
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("broker_transport_options: 'max_retries' has no effect on the "
                               "RabbitMQ broker (ignored): celeriac retries a publish by "
                               "task_publish_retry_policy")
    assert lines[1].startswith("broker_transport_options: 'visibility_timeout' has no effect "
                               "on the RabbitMQ broker (ignored): RabbitMQ has no visibility "
                               "timeout")


@pytest.mark.parametrize("value", ["no", None, 2, "False"])
def test_confirm_publish_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"confirm_publish must be True or False, "
                                                   rf"not {value!r}"):
        AMQPTransport(AMQP_URL, confirm_publish=value)  # type: ignore[arg-type]


def test_the_other_brokers_warn_the_same_way(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    transport_from_url(f"sqlite:///{tmp_path}/b.db", visibility_timeout=5, synchronous="FULL",
                       confirm_publish=False).close()
    transport_from_url("memory://options-test", visibility_timeout=5, global_keyprefix="p:")
    transport_from_url("redis://127.0.0.1:6379/9", visibility_timeout=5, socket_timeout=3,
                       global_keyprefix="p:", fanout_prefix=True, fanout_patterns=False,
                       priority_step=[0, 5]).close()
    assert _lines(caplog) == [
        "broker_transport_options: 'confirm_publish' has no effect on the SQLite broker "
        "(ignored): no such option",
        "broker_transport_options: 'global_keyprefix' has no effect on the in-memory broker "
        "(ignored): no such option",
        "broker_transport_options: 'fanout_patterns' has no effect on the Redis broker "
        "(ignored): broadcasts are always published per routing key, as with "
        "fanout_patterns=True",
        "broker_transport_options: 'priority_step' has no effect on the Redis broker "
        "(ignored): no such option; did you mean 'priority_steps'?"]


def test_an_app_warns_when_it_builds_its_transport(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app = Celery("options", broker=AMQP_URL, backend="memory://",
                 broker_transport_options={"confirm_publish": False, "confirm_publsh": 1})
    try:
        assert _lines(caplog) == []  # nothing is built yet
        assert app.transport.confirm_publish is False  # type: ignore[attr-defined]
        [line] = _lines(caplog)
        assert line.startswith("broker_transport_options: 'confirm_publsh' has no effect on "
                               "the RabbitMQ broker (ignored)")
    finally:
        app.close()
