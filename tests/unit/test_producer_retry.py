"""task_publish_retry and task_publish_retry_policy: which failures are retried, how often,
after which pauses, and the OperationalError raised once they are spent (pure logic: the
transport is a stand-in that fails on cue)."""

from __future__ import annotations

import pytest

from celeriac import Celery
from celeriac.exceptions import OperationalError


class FlakyTransport:
    """Fails the first ``failures`` publishes with ConnectionError, then stores."""

    transient_errors = ()

    def __init__(self, failures: int, declare_failures: int = 0) -> None:
        self.failures = failures
        self.declare_failures = declare_failures
        self.attempts = 0
        self.declares = 0
        self.published: list = []

    def declare(self, queue) -> None:
        self.declares += 1
        if self.declares <= self.declare_failures:
            raise ConnectionError(f"broker unreachable (declare {self.declares})")

    def publish(self, items) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError(f"broker unreachable (attempt {self.attempts})")
        self.published.extend(items)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("celeriac.producer.time.sleep", slept.append)
    return slept


def _publish(transport: FlakyTransport, broker: str = "memory://retry-unit", **settings) -> None:
    app = Celery("retry-unit", broker=broker, backend="memory://retry-unit",
                 set_as_current=False, **settings)
    try:
        producer = app.producer
        item = producer.build("t.noop", (), {})
        producer._publish_with_retry(transport, [item], None, None)
    finally:
        app.close()


def test_transient_failures_are_retried_with_celerys_default_pauses(sleeps):
    transport = FlakyTransport(failures=3)
    _publish(transport)
    assert (transport.attempts, len(transport.published)) == (4, 1)
    assert sleeps == [0.0, 0.2, 0.4]  # Celery's policy: start at 0, step 0.2, at most 1 s


def test_past_max_retries_one_operational_error_names_the_masked_url(sleeps):
    transport = FlakyTransport(failures=5)
    with pytest.raises(OperationalError) as info:
        _publish(transport, broker="memory://user:s3cret@retry-unit",
                 task_publish_retry_policy={"max_retries": 2, "interval_start": 0.5,
                                            "interval_step": 1, "interval_max": 1})
    assert transport.attempts == 3 and sleeps == [0.5, 1.0]
    assert transport.published == []
    message = str(info.value)
    assert "memory://user:**@retry-unit" in message and "s3cret" not in message
    assert "attempt 3" in message and "gave up after 2 retries" in message
    # chained to the transport's own error, and still a ConnectionError for code that retries
    assert isinstance(info.value.__cause__, ConnectionError)
    assert "attempt 3" in str(info.value.__cause__)
    assert isinstance(info.value, ConnectionError)


def test_no_retry_when_task_publish_retry_is_off(sleeps):
    transport = FlakyTransport(failures=1)
    with pytest.raises(OperationalError, match="task_publish_retry is off"):
        _publish(transport, task_publish_retry=False)
    assert transport.attempts == 1 and sleeps == []


def test_a_fractional_max_retries_counts_as_the_next_whole_attempt(sleeps):
    transport = FlakyTransport(failures=5)
    with pytest.raises(OperationalError, match="attempt 4"):
        _publish(transport, task_publish_retry_policy={"max_retries": 2.5})
    assert transport.attempts == 4  # retries at 0, 1 and 2, as kombu counts


def test_a_failing_queue_declaration_is_retried_like_a_publish(sleeps):
    """The first send to a queue declares it, which is the client's first broker round trip
    (on Redis a SADD): it is under the same retry policy, not outside it."""
    transport = FlakyTransport(failures=0, declare_failures=2)
    _publish(transport)
    assert (transport.declares, transport.attempts, len(transport.published)) == (3, 1, 1)
    assert sleeps == [0.0, 0.2]


def test_an_error_that_is_not_a_connection_error_is_not_wrapped(sleeps):
    class Broken(FlakyTransport):
        def publish(self, items) -> None:
            raise ValueError("a bug, not the broker")

    with pytest.raises(ValueError, match="a bug"):
        _publish(Broken(failures=0))
    assert sleeps == []
