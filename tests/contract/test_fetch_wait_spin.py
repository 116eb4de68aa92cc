"""A fetch that waits for messages polls for them for ``wait_spin`` seconds before it sleeps,
and only while its waits are short (``broker_transport_options["wait_spin"]``), on the brokers
that wait for a change: Redis and SQLite, a real server and file. Whether a wait looked is read
from its count of looks (tests/spin_looks.py), not from any timing.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac.protocol.message import Message
from celeriac.transport import transport_from_url
from celeriac.transport.base import Outgoing
from tests.spin_looks import LOOKED, Looks

SPIN = 0.5
SLOW = 1.0
QUEUE = "spin-queue"


@pytest.fixture(params=["redis", "sqlite"])
def make_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made: list[Any] = []

    def make(**options: Any) -> Any:
        if request.param == "redis":
            url = f"{request.getfixturevalue('redis_server')}/9"
            options.setdefault("global_keyprefix", request.getfixturevalue("redis_prefix"))
        else:
            url = f"sqlite:///{tmp_path}/broker.db"
        made.append(transport_from_url(url, **options))
        return made[-1]

    yield make
    for transport in made:
        transport.purge(QUEUE)
        transport.close()


def _message() -> Message:
    return Message(body=b"[[], {}, {}]", content_type="application/json",
                   content_encoding="utf-8", headers={"id": str(uuid.uuid4()), "task": "t"})


def _looks_of_fetch(consumer: Any, producer: Any, looks: Looks, delay: float) -> int:
    """The looks this thread took in a fetch of a message published ``delay`` seconds after
    it began waiting."""
    timer = threading.Timer(delay, producer.publish, ([Outgoing(QUEUE, _message())],))
    got: list[Any] = []
    timer.start()
    try:
        count = looks.during(lambda: got.extend(consumer.fetch([QUEUE], 1, 10.0)))
    finally:
        timer.join()
    assert len(got) == 1
    consumer.ack(got)
    return count


def test_a_fetch_looks_while_waits_are_short_and_sleeps_after_a_long_one(
        make_transport: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, producer = make_transport(wait_spin=SPIN), make_transport()
    consumer.declare(QUEUE)
    waiter = getattr(consumer, "_change_waiter", None)
    if waiter is not None and not waiter().watching:  # SQLite without inotify polls instead
        pytest.skip("inotify is unavailable here: SQLite fetches poll and do not look")
    looks = Looks(monkeypatch)
    assert consumer.fetch([QUEUE], 1, 0.01) == []  # connections open; a wait within the spin
    first = _looks_of_fetch(consumer, producer, looks, SLOW)
    after_long = _looks_of_fetch(consumer, producer, looks, SLOW)
    short = _looks_of_fetch(consumer, producer, looks, 0.05)
    after_short = _looks_of_fetch(consumer, producer, looks, SLOW)
    assert first >= LOOKED, first
    assert after_long == 0, after_long
    assert short == 0, short
    assert after_short >= LOOKED, after_short


def test_no_spin_sleeps_at_once(make_transport: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, producer = make_transport(wait_spin=0), make_transport()
    consumer.declare(QUEUE)
    assert _looks_of_fetch(consumer, producer, Looks(monkeypatch), 0.2) == 0


@pytest.mark.parametrize("value", [-0.1, 2, "soon", True])
def test_a_bad_wait_spin_is_refused_by_name(make_transport: Any, value: Any) -> None:
    with pytest.raises(ValueError, match="wait_spin"):
        make_transport(wait_spin=value)
