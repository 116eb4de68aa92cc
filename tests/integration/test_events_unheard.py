"""Task events nobody listens to: on a broker that counts who got a message (Redis, the
in-memory broker), a batch that reached nobody makes the next ones go as one event, the rest
dropped unencoded; a monitor that subscribes still gets every event published after it did."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any, Iterator

import pytest

from celeriac import Celery
from celeriac.events import EventDispatcher
from celeriac.events.event import events_from_message
from celeriac.worker.events import STARTED
from tests.conftest import app_on_redis_prefix
from tests.integration.conftest import WORKER_DBS, private_db


@contextlib.contextmanager
def _app(name: str, request: pytest.FixtureRequest) -> Iterator[Celery]:
    if name == "memory":
        app = Celery("unheard", broker=f"memory://unheard-{uuid.uuid4().hex[:8]}",
                     backend="memory://", set_as_current=False)
        try:
            yield app
        finally:
            app.close()
        return
    server = request.getfixturevalue("redis_server")
    with private_db(server) as url:
        db = int(url.rsplit("/", 1)[1])
        assert db in WORKER_DBS
        with app_on_redis_prefix("unheard", server, f"unheard-{uuid.uuid4().hex[:8]}:",
                                 db) as app:
            yield app


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def dispatcher(request: pytest.FixtureRequest) -> Iterator[EventDispatcher]:
    with _app(request.param, request) as app:
        events = EventDispatcher(app, "w1@host", buffer_group=("task",), flush_interval=3600)
        events._start_flusher = lambda: None  # type: ignore[method-assign]  # tests flush
        try:
            yield events
        finally:
            events.close()


def _send(dispatcher: EventDispatcher, ids: list[str]) -> None:
    for task_id in ids:
        dispatcher.send_values("task", STARTED, (task_id,))
    dispatcher.flush()


def _received(subscription: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline, events = time.monotonic() + timeout, []
    while len(events) < count and time.monotonic() < deadline:
        for message in subscription.get(deadline - time.monotonic()):
            events.extend(events_from_message(message))
    return events


def test_nobody_listening_sends_one_event_a_batch_and_a_monitor_misses_nothing(
        dispatcher: EventDispatcher) -> None:
    _send(dispatcher, [f"a{i}" for i in range(10)])
    assert (dispatcher.sent_messages, dispatcher.sent_events, dispatcher.unheard) == (1, 10, 0)
    _send(dispatcher, [f"b{i}" for i in range(10)])  # nobody got the last one: ask with one
    assert (dispatcher.sent_messages, dispatcher.sent_events, dispatcher.unheard) == (2, 11, 9)

    monitor = dispatcher.app.transport.subscribe(dispatcher.exchange, "#")
    try:
        ids = [f"c{i}" for i in range(5)]
        _send(dispatcher, ids)  # the first event reaches the monitor: the rest follows it
        assert (dispatcher.sent_messages, dispatcher.sent_events) == (4, 16)
        _send(dispatcher, ["d0", "d1"])  # heard: one message again
        assert dispatcher.sent_messages == 5
        got = _received(monitor, 7)
        assert [event["uuid"] for event in got] == [*ids, "d0", "d1"]
        clocks = [event["clock"] for event in got]
        assert clocks == list(range(clocks[0], clocks[0] + 7)), "the clock stays in order"
    finally:
        monitor.close()
    assert dispatcher.unheard == 9


def test_a_broker_that_does_not_count_gets_every_batch(dispatcher: EventDispatcher,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    transport = dispatcher.app.transport
    monkeypatch.setattr(transport, "broadcast",
                        lambda *args, _real=transport.broadcast: (_real(*args), None)[1])
    for batch in range(3):
        _send(dispatcher, [f"{batch}-{i}" for i in range(4)])
    assert (dispatcher.sent_messages, dispatcher.sent_events, dispatcher.unheard) == (3, 12, 0)


def test_each_chunk_of_a_long_batch_asks_on_its_own(dispatcher: EventDispatcher) -> None:
    dispatcher.buffer_limit = 4
    _send(dispatcher, ["x"])  # reaches nobody
    _send(dispatcher, [f"a{i}" for i in range(10)])  # chunks of 4, 4 and 2: a probe each
    assert (dispatcher.sent_messages, dispatcher.sent_events, dispatcher.unheard) == (4, 4, 7)
    monitor = dispatcher.app.transport.subscribe(dispatcher.exchange, "#")
    try:
        ids = [f"b{i}" for i in range(10)]
        _send(dispatcher, ids)  # probe, its chunk's other 3, then chunks of 4 and 2 whole
        assert dispatcher.sent_messages == 8
        got = _received(monitor, 10)
        assert [event["uuid"] for event in got] == ids
        clocks = [event["clock"] for event in got]
        assert clocks == list(range(clocks[0], clocks[0] + 10))
    finally:
        monitor.close()


def test_switched_off_every_batch_goes_out(dispatcher: EventDispatcher) -> None:
    dispatcher.skip_unheard = False
    for batch in range(3):
        _send(dispatcher, [f"{batch}-{i}" for i in range(4)])
    assert (dispatcher.sent_messages, dispatcher.sent_events, dispatcher.unheard) == (3, 12, 0)


def test_the_setting_reaches_the_dispatcher() -> None:
    app = Celery("unheard-setting", broker="memory://unheard-setting", backend="memory://",
                 set_as_current=False)
    try:
        assert EventDispatcher(app, "w1@host").skip_unheard is True
        app.conf.event_skip_unheard = False
        assert EventDispatcher(app, "w1@host").skip_unheard is False
    finally:
        app.close()


def test_a_probe_the_broker_refuses_drops_its_batch_and_asks_again(
        dispatcher: EventDispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = dispatcher.app.transport
    real = transport.broadcast
    _send(dispatcher, ["x"])  # reaches nobody
    calls: list[int] = []

    def refuse(*args: Any) -> int:
        calls.append(1)
        raise ConnectionError("broker away")

    monkeypatch.setattr(transport, "broadcast", refuse)
    _send(dispatcher, [f"a{i}" for i in range(5)])
    assert len(calls) == 1, "the rest is not tried against a broker that just refused"
    monkeypatch.setattr(transport, "broadcast", real)
    monitor = transport.subscribe(dispatcher.exchange, "#")
    try:
        _send(dispatcher, ["b0", "b1"])
        assert [event["uuid"] for event in _received(monitor, 2)] == ["b0", "b1"]
    finally:
        monitor.close()
