"""task_publish_retry and task_publish_retry_policy: which failures are retried, how often,
after which pauses (pure logic: the transport is a stand-in that fails on cue)."""

from __future__ import annotations

import pytest

from celeriac import Celery


class FlakyTransport:
    """Fails the first ``failures`` publishes with ConnectionError, then stores."""

    transient_errors = ()

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.published: list = []

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


def _publish(transport: FlakyTransport, **settings) -> None:
    app = Celery("retry-unit", broker="memory://retry-unit", backend="memory://retry-unit",
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


def test_past_max_retries_the_last_error_is_raised(sleeps):
    transport = FlakyTransport(failures=5)
    with pytest.raises(ConnectionError, match="attempt 3"):
        _publish(transport, task_publish_retry_policy={
            "max_retries": 2, "interval_start": 0.5, "interval_step": 1, "interval_max": 1})
    assert transport.attempts == 3 and sleeps == [0.5, 1.0]
    assert transport.published == []


def test_no_retry_when_task_publish_retry_is_off(sleeps):
    transport = FlakyTransport(failures=1)
    with pytest.raises(ConnectionError):
        _publish(transport, task_publish_retry=False)
    assert transport.attempts == 1 and sleeps == []


def test_a_fractional_max_retries_counts_as_the_next_whole_attempt(sleeps):
    transport = FlakyTransport(failures=5)
    with pytest.raises(ConnectionError, match="attempt 4"):
        _publish(transport, task_publish_retry_policy={"max_retries": 2.5})
    assert transport.attempts == 4  # retries at 0, 1 and 2, as kombu counts
