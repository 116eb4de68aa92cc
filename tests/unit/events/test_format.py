"""The event format against Celery 5.7's captured events (wire spec section 5): every field and
its type, the order Celery writes them in, the message's properties and headers, the Redis
envelope; the Lamport clock; what a receiver does to an event; ``State``."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import pytest

from celeriac.events import Event, EventDispatcher, EventReceiver, State, event_message
from celeriac.events.event import events_from_message, routing_key_for, utcoffset
from celeriac.protocol.message import Message
from celeriac.testing import dispose_test_app, make_test_app
from celeriac.transport.redis.fanout import _envelope
from celeriac.utils.clock import LamportClock
from tests.vectors import CELERY_VECTORS

EVENTS = CELERY_VECTORS / "redis" / "worker" / "events.json"
#: fields every event carries, in Celery's order (first four) and last two
COMMON_HEAD = ["hostname", "utcoffset", "pid", "clock"]
COMMON_TAIL = ["timestamp", "type"]


def _captured() -> list[dict[str, Any]]:
    """Every captured event message: (channel, envelope, body)."""
    document = json.loads(EVENTS.read_text())
    return [{"channel": m["channel"], "envelope": m["decoded"]["envelope"],
             "body": m["decoded"]["decoded_body"]} for m in document["messages"]]


def _captured_events() -> dict[str, dict[str, Any]]:
    """The first captured event of each type."""
    out: dict[str, dict[str, Any]] = {}
    for message in _captured():
        body = message["body"]
        for event in body if isinstance(body, list) else [body]:
            out.setdefault(event["type"], event)
    return out


@pytest.fixture
def app():
    app = make_test_app("events-format")
    yield app
    dispose_test_app(app)


def _send_and_read(app, sender, capture: int) -> list[dict[str, Any]]:
    """What a receiver on ``app``'s broker gets from ``sender(dispatcher)`` (memory broker)."""
    receiver = EventReceiver(app, {"*": lambda event: None}).subscribe()
    dispatcher = EventDispatcher(app, "w1@capture", buffer_group=("task",))
    try:
        sender(dispatcher)
        dispatcher.flush()
        return list(receiver.itercapture(limit=capture, timeout=5.0))
    finally:
        dispatcher.close()
        receiver.close()


def _fields_of(captured: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in captured.items() if k not in COMMON_HEAD + COMMON_TAIL}


@pytest.mark.parametrize("event_type", sorted(_captured_events()))
def test_each_captured_event_type_is_built_with_celerys_keys_order_and_types(app, event_type):
    """Built by the worker's dispatcher (task events buffered and sent as a list), read back
    from the broker: what a monitor receives."""
    captured = _captured_events()[event_type]
    [built] = _send_and_read(app, lambda d: d.send(event_type, **_fields_of(captured)), 1)
    assert built.pop("local_received") > 0, "the receiver's own"
    assert list(built) == list(captured), "same keys, in Celery's order"
    for key, value in captured.items():
        if value is None:
            continue
        assert type(built[key]) is type(value), (key, built[key], value)
    assert built["hostname"] == "w1@capture" and built["type"] == event_type
    assert isinstance(built["clock"], int)  # (a task-sent's is the receiver's: see below)
    assert abs(built["timestamp"] - time.time()) < 60
    assert built["pid"] == os.getpid() and built["utcoffset"] == utcoffset()


def test_the_message_has_celerys_properties_headers_and_json_body():
    message = event_message({"type": "worker-online", "hostname": "w1@capture"}, "w1@capture")
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.headers == {"hostname": "w1@capture"}
    assert message.properties == {"delivery_mode": 1, "priority": 0}
    # kombu's JSON text: default separators, as in the capture
    assert message.body == b'{"type": "worker-online", "hostname": "w1@capture"}'


@pytest.mark.parametrize("index", [0, 2])  # worker.online (one event), task.multi (a list)
def test_the_redis_envelope_matches_the_capture_but_for_the_delivery_tag(index):
    captured = _captured()[index]
    key = captured["channel"].split("/", 2)[2]  # "/5.celeryev/<routing key>"
    body = captured["body"]
    ours = json.loads(_envelope(event_message(body, "w1@capture"), "celeryev", key))
    theirs = dict(captured["envelope"])
    for envelope in (ours, theirs):
        envelope["properties"] = {k: v for k, v in envelope["properties"].items()
                                  if k != "delivery_tag"}
    assert list(ours) == list(theirs)
    assert ours["properties"] == theirs["properties"]
    assert list(ours["properties"]) == list(theirs["properties"])
    assert ours["headers"] == theirs["headers"]
    assert json.loads(base64.b64decode(ours["body"])) == body


def test_routing_keys_and_the_multi_list_as_captured():
    channels = {m["channel"] for m in _captured()}
    assert "/5.celeryev/task.multi" in channels and "/5.celeryev/worker.heartbeat" in channels
    assert routing_key_for("task-succeeded") == "task.succeeded"
    assert routing_key_for("worker-heartbeat") == "worker.heartbeat"


def test_task_events_are_batched_into_one_task_multi_list_in_clock_order(app):
    def send(dispatcher: EventDispatcher) -> None:
        dispatcher.flush_interval = 10.0  # only flush() publishes here
        dispatcher.send("task-received", uuid="a", name="t")
        dispatcher.send_buffered("task", "task-started", {"uuid": "a"})  # the worker's way
        dispatcher.send("task-succeeded", uuid="a", result="1", runtime=0.1)
        assert dispatcher.sent_messages == 0, "buffered, not sent one by one"

    got = _send_and_read(app, send, 3)
    assert [e["type"] for e in got] == ["task-received", "task-started", "task-succeeded"]
    started = {k: v for k, v in got[1].items() if k != "local_received"}  # (the receiver's)
    assert started == {"hostname": "w1@capture", "utcoffset": got[0]["utcoffset"],
                       "pid": got[0]["pid"], "clock": got[0]["clock"] + 1, "uuid": "a",
                       "timestamp": got[1]["timestamp"], "type": "task-started"}
    assert list(started) == COMMON_HEAD + ["uuid"] + COMMON_TAIL
    clocks = [e["clock"] for e in got]
    assert clocks == list(range(clocks[0], clocks[0] + 3)), "one tick each, in sending order"


def test_a_batch_takes_its_clock_values_after_events_sent_before_its_flush(app):
    def send(dispatcher: EventDispatcher) -> None:
        dispatcher.flush_interval = 10.0
        dispatcher.send("task-started", uuid="a")
        dispatcher.send("worker-heartbeat")  # sent at once, while the task event waits
        dispatcher.send("task-started", uuid="b")

    got = _send_and_read(app, send, 3)
    assert [e["type"] for e in got] == ["worker-heartbeat", "task-started", "task-started"]
    assert [e["clock"] for e in got] == list(range(got[0]["clock"], got[0]["clock"] + 3))


def test_two_buffered_groups_keep_the_sending_order_and_its_clock_values(app):
    receiver = EventReceiver(app, {"*": lambda event: None}).subscribe()
    dispatcher = EventDispatcher(app, "w1@x", buffer_group=("task", "custom"),
                                 flush_interval=10.0)
    try:
        dispatcher.send("task-started", uuid="a")
        dispatcher.send("custom-thing", n=1)
        dispatcher.send("task-started", uuid="b")
        dispatcher.flush()
        got = list(receiver.itercapture(limit=3, timeout=5.0))
    finally:
        dispatcher.close()
        receiver.close()
    assert [(e["type"], e.get("uuid")) for e in got] == [
        ("task-started", "a"), ("custom-thing", None), ("task-started", "b")]
    assert [e["clock"] for e in got] == list(range(got[0]["clock"], got[0]["clock"] + 3))
    assert dispatcher.sent_messages == 3, "one list per run of one group"


def test_the_flusher_publishes_buffered_events_without_a_flush_call(app):
    receiver = EventReceiver(app).subscribe()
    dispatcher = EventDispatcher(app, "w1@x", buffer_group=("task",), flush_interval=0.01)
    try:
        dispatcher.send("task-started", uuid="b")
        [event] = list(receiver.itercapture(limit=1, timeout=5.0))
        assert event["type"] == "task-started" and dispatcher.sent_messages == 1
    finally:
        dispatcher.close()
        receiver.close()


def test_groups_and_enabled_decide_what_is_sent(app):
    dispatcher = EventDispatcher(app, "w1@x", groups={"worker"})
    try:
        assert dispatcher.send("task-started", uuid="c") is None
        assert dispatcher.send("worker-heartbeat", freq=2.0) is not None
        dispatcher.enabled = False
        assert dispatcher.send("worker-heartbeat", freq=2.0) is None
    finally:
        dispatcher.close()
    assert dispatcher.send("worker-heartbeat") is None, "closed: nothing more is sent"


def test_a_failing_broker_drops_events_and_logs_once(app, caplog):
    class Refusing:
        def broadcast(self, *args: Any) -> None:
            raise ConnectionError("broker down")

        def subscribe(self, *args: Any) -> Any:
            raise AssertionError("not used")

    dispatcher = EventDispatcher(app, "w1@x")
    dispatcher._transport = Refusing()  # type: ignore[assignment]
    for _ in range(3):
        dispatcher.send("worker-heartbeat", freq=2.0)  # never raises
    warnings = [r for r in caplog.records if "could not send events" in r.getMessage()]
    assert len(warnings) == 1 and "broker down" in warnings[0].getMessage()
    assert dispatcher.sent_events == 0


def test_the_client_task_sent_event_follows_the_publish(app):
    app.conf.task_send_sent_event = True

    @app.task(name="events.format.add")
    def add(x: int, y: int) -> int:
        return x + y

    receiver = EventReceiver(app).subscribe()
    try:
        result = add.apply_async((2, 2), countdown=60)
        [event] = list(receiver.itercapture(limit=1, timeout=5.0))
    finally:
        receiver.close()
    captured = _captured_events()["task-sent"]
    assert list(event)[:-1] == list(captured), "Celery's keys and order (+ local_received)"
    assert event["uuid"] == result.id and event["name"] == "events.format.add"
    assert event["args"] == "(2, 2)" and event["kwargs"] == "{}" and event["retries"] == 0
    assert event["root_id"] == result.id and event["parent_id"] is None
    assert event["queue"] == "celery" and event["routing_key"] == "celery"
    assert event["exchange"] == "" and isinstance(event["eta"], str)
    assert event["hostname"].startswith("gen")


# ---- the clock -----------------------------------------------------------------------------------
def test_the_lamport_clock_ticks_and_moves_past_what_it_hears():
    clock = LamportClock()
    assert clock.forward() == 1 and clock.forward() == 2
    assert clock.forward(3) == 5, "three ticks taken together: 3, 4 and 5 are the caller's"
    clock.value = 2
    assert clock.adjust(10) == 11, "max(2, 10) + 1"
    assert clock.adjust(3) == 12, "max(11, 3) + 1"
    assert int(clock) == 12


def test_an_app_has_one_clock_that_events_tick(app):
    start = app.clock.value
    dispatcher = EventDispatcher(app, "w1@x")
    try:
        first = dispatcher.send("worker-online")
        second = dispatcher.send("worker-heartbeat")
        blind = dispatcher.send("worker-heartbeat", blind=True)
    finally:
        dispatcher.close()
    assert first and second and blind
    assert (first["clock"], second["clock"]) == (start + 1, start + 2)
    assert blind["clock"] is None and app.clock.value == start + 2


# ---- the receiving side --------------------------------------------------------------------------
def test_a_list_body_gives_each_event_and_junk_gives_none():
    events = [{"type": "task-started", "uuid": "a"}, {"type": "task-started", "uuid": "b"}]
    message = event_message(events, "w1@x")
    assert events_from_message(message) == events
    assert events_from_message(Message(b"not json", "application/json", "utf-8")) == []
    assert events_from_message(event_message([1, "x"], "w1@x")) == []
    assert events_from_message(event_message({"no": "type"}, "w1@x")) == []


def test_the_receiver_moves_the_clock_and_localizes_the_timestamp(app):
    receiver = EventReceiver(app)
    app.clock.value = 5
    _, event = receiver.event_from_message(
        {"type": "task-started", "clock": 40, "utcoffset": utcoffset() + 1,
         "timestamp": 10_000.0})
    assert app.clock.value == 41
    assert event["timestamp"] == 10_000.0 - 3600, "one hour further west: an hour later here"
    assert event["local_received"] > 0
    _, sent = receiver.event_from_message({"type": "task-sent", "clock": 9999})
    assert sent["clock"] == 40, "a client's clock is replaced: just below ours"


def test_handlers_by_type_else_star(app):
    seen: list[tuple[str, str]] = []
    receiver = EventReceiver(app, {"task-failed": lambda e: seen.append(("failed", e["uuid"])),
                                   "*": lambda e: seen.append(("star", e["type"]))})
    receiver.process("task-failed", {"type": "task-failed", "uuid": "u"})
    receiver.process("worker-online", {"type": "worker-online"})
    assert seen == [("failed", "u"), ("star", "worker-online")]


def test_capture_with_a_timeout_raises_when_nothing_comes(app):
    receiver = EventReceiver(app)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no event arrived within 0.3 s"):
        receiver.capture(timeout=0.3)
    assert time.monotonic() - started < 5


def test_app_events_has_celerys_factories(app):
    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": print})
        dispatcher = app.events.Dispatcher(conn, hostname="me@x")
        state = app.events.State()
    assert isinstance(receiver, EventReceiver) and receiver.handlers == {"*": print}
    assert isinstance(dispatcher, EventDispatcher) and dispatcher.hostname == "me@x"
    assert isinstance(state, State)
    dispatcher.close()


# ---- State ---------------------------------------------------------------------------------------
def _ev(event_type: str, **fields: Any) -> dict[str, Any]:
    return Event(event_type, {"hostname": "w1@x", "clock": 1}, **fields)


def test_state_follows_a_task_and_its_worker():
    state = State()
    state.event(_ev("worker-online", freq=2.0, active=0, processed=0, loadavg=[0.1, 0.2, 0.3]))
    state.event(_ev("task-received", uuid="t1", name="tasks.add", args="(2, 2)", kwargs="{}"))
    state.event(_ev("task-started", uuid="t1"))
    state.event(_ev("task-succeeded", uuid="t1", result="4", runtime=0.5))
    task = state.tasks["t1"]
    assert (task.state, task.name, task.result, task.runtime) == ("SUCCESS", "tasks.add", "4",
                                                                  0.5)
    assert task.worker == "w1@x" and task.received and task.started and task.succeeded
    worker = state.workers["w1@x"]
    assert worker.alive and worker.loadavg == [0.1, 0.2, 0.3]
    state.event(_ev("worker-offline"))
    assert not worker.alive and state.alive_workers() == []


def test_state_never_moves_a_task_back_but_a_retry_starts_a_new_attempt():
    state = State()
    state.event(_ev("task-started", uuid="t"))
    state.event(_ev("task-sent", uuid="t", name="n"))  # a client's late event
    assert state.tasks["t"].state == "STARTED" and state.tasks["t"].name == "n"
    state.event(_ev("task-retried", uuid="t", exception="E()"))
    state.event(_ev("task-received", uuid="t"))
    assert state.tasks["t"].state == "RECEIVED"
    state.event(_ev("task-failed", uuid="t", exception="E()", traceback="tb"))
    state.event(_ev("task-started", uuid="t"))
    assert state.tasks["t"].state == "FAILURE"


def test_state_keeps_at_most_max_tasks_and_a_worker_expires_after_two_heartbeats():
    state = State(max_tasks_in_memory=3)
    for n in range(5):
        state.event(_ev("task-received", uuid=f"t{n}"))
    assert list(state.tasks) == ["t2", "t3", "t4"] and state.task_count == 5
    state.event(Event("worker-heartbeat", {"hostname": "old@x"}, freq=1.0,
                      timestamp=time.time() - 2.5))
    assert not state.workers["old@x"].alive


def test_a_stuck_broker_bounds_the_buffer_and_bad_fields_do_not_stop_the_flusher(app):
    dispatcher = EventDispatcher(app, "w1@x", buffer_group=("task",), flush_interval=3600)
    dispatcher._start_flusher = lambda: None  # type: ignore[method-assign]  # nobody flushes
    dispatcher.max_pending = 3
    try:
        for n in range(5):
            dispatcher.send("task-started", uuid=str(n))
        assert len(dispatcher._pending) == 3 and dispatcher.dropped == 2
        dispatcher.flush()
        dispatcher.send("task-started", uuid="x", value=object())  # JSON cannot take it
        dispatcher.flush()  # logged and dropped, not raised
        dispatcher.send("task-started", uuid="y")
        dispatcher.flush()
    finally:
        dispatcher.close()
    assert dispatcher.sent_events == 4, "3 kept, the unencodable one dropped, then 1"
