"""The flusher's event templates: a ``task.multi`` body written from per-shape templates is the
text ``json_dumps`` makes of the events ``_build`` lays out, byte for byte, whatever the values
(strings to escape, ``%`` signs, numbers JSON spells its own way, nested values, tagged types),
and events whose fields name the event's own keys keep ``_build``'s layout."""

from __future__ import annotations

import datetime
import json
import time
import uuid
from decimal import Decimal

import pytest

from celeriac.events import EventDispatcher
from celeriac.protocol.serialization import json_dumps
from celeriac.testing import dispose_test_app, make_test_app

TASK_ID = str(uuid.uuid4())

#: (type, fields): the worker's three events per task, then every kind of value and shape
EVENTS = [
    ("task-received", {"uuid": TASK_ID, "name": "proj.add", "args": "(2, 2)", "kwargs": "{}",
                       "root_id": TASK_ID, "parent_id": None, "retries": 0, "eta": None,
                       "expires": None}),
    ("task-started", {"uuid": TASK_ID}),
    ("task-succeeded", {"uuid": TASK_ID, "result": "4", "runtime": 0.000123456789}),
    ("task-succeeded", {"uuid": TASK_ID, "result": "'100%' \"quoted\" \\ é ☃ \x00 \U0001F600",
                        "runtime": 12.0}),
    ("task-received", {"uuid": TASK_ID, "name": "%s %d %%", "args": "[%(x)s]", "kwargs": None,
                       "root_id": None, "parent_id": TASK_ID, "retries": 3,
                       "eta": "2026-01-01T00:00:00+00:00", "expires": "x"}),
    ("task-failed", {"uuid": TASK_ID, "exception": "ValueError('%')", "traceback": None}),
    ("task-revoked", {"uuid": TASK_ID, "terminated": True, "signum": 15, "expired": False}),
    ("task-custom", {"nan": float("nan"), "inf": float("inf"), "minf": float("-inf"),
                     "big": 10 ** 30, "neg": -7, "zero": -0.0, "tiny": 5e-324}),
    ("task-custom", {"list": [1, "a", None, {"k": [True]}], "dict": {"clock": 1, "b": {}},
                     "empty": "", "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
                     "amount": Decimal("1.50"), "id": uuid.UUID(TASK_ID), "raw": b"\xff\x00"}),
    ("task-custom", {}),
    # fields naming the event's own keys: _build's layout (the field keeps its place)
    ("task-custom", {"uuid": TASK_ID, "timestamp": 12.5}),
    ("task-custom", {"hostname": "other@host", "clock": 99, "type": "x"}),
    ("task-custom", {1: "a number as key", "b": 2}),
]


@pytest.fixture
def app():
    app = make_test_app("events-templates")
    yield app
    dispose_test_app(app)


def _item(event_type: str, fields: dict, timestamp: float) -> tuple:
    """A buffered event as ``send_buffered`` queues it: (group, shape, values, timestamp)."""
    return ("task", (event_type, tuple(fields)), tuple(fields.values()), timestamp)


def _reference(dispatcher: EventDispatcher, items: list, clock: int) -> bytes:
    return json_dumps([dispatcher._build(shape[0], dict(zip(shape[1], values)), timestamp, tick)
                       for tick, (_, shape, values, timestamp) in enumerate(items, clock)]
                      ).encode("utf-8")


@pytest.mark.parametrize("hostname", ["w1@host", "w%s%%@host", "wé☃@\"host\""])
def test_a_batch_is_the_text_json_dumps_makes_of_the_built_events(app, hostname):
    dispatcher = EventDispatcher(app, hostname, buffer_group=("task",))
    try:
        now = time.time()
        # more events than a slice, so slices are joined too
        items = [_item(event_type, fields, now + index * 0.000173)
                 for index, (event_type, fields) in enumerate(EVENTS * 7)]
        for clock in (1, 12345678901):
            assert dispatcher._encode(items, clock).body == _reference(dispatcher, items, clock)
        assert dispatcher._templates, "the common shapes were templated"
        assert dispatcher._templates[("task-custom", ("uuid", "timestamp"))] is None
    finally:
        dispatcher.close()


def test_a_new_utc_offset_makes_new_templates(app, monkeypatch):
    dispatcher = EventDispatcher(app, "w1@host", buffer_group=("task",))
    try:
        items = [_item("task-started", {"uuid": TASK_ID}, time.time())]
        dispatcher._encode(items, 1)
        monkeypatch.setattr("celeriac.events.dispatcher._utcoffset", lambda: -5.5)
        dispatcher._offset_at -= 3600  # due for a look at the offset
        dispatcher._refresh_offset()
        body = dispatcher._encode(items, 2).body
        assert body == _reference(dispatcher, items, 2)
        assert json.loads(body)[0]["utcoffset"] == -5.5
    finally:
        dispatcher.close()


def test_shapes_past_the_limit_are_built_as_maps(app, monkeypatch):
    monkeypatch.setattr("celeriac.events.dispatcher._MAX_TEMPLATES", 2)
    dispatcher = EventDispatcher(app, "w1@host", buffer_group=("task",))
    try:
        now = time.time()
        items = [_item(event_type, fields, now) for event_type, fields in EVENTS]
        assert dispatcher._encode(items, 7).body == _reference(dispatcher, items, 7)
        assert len(dispatcher._templates) == 2
    finally:
        dispatcher.close()


def test_the_worker_s_shaped_events_are_the_bytes_of_their_maps(app):
    """``send_values`` (the worker's three events per task, tuples of values in a fixed shape)
    queues what ``send_buffered`` queues for the same fields, so the batch is the same text."""
    from celeriac.worker.events import RECEIVED, STARTED, SUCCEEDED

    dispatcher = EventDispatcher(app, "w1@host", buffer_group=("task",), flush_interval=3600)
    dispatcher._start_flusher = lambda: None  # type: ignore[method-assign]  # nobody flushes
    try:
        for shape, fields in ((RECEIVED, EVENTS[0][1]), (STARTED, EVENTS[1][1]),
                              (SUCCEEDED, EVENTS[3][1]), (RECEIVED, EVENTS[4][1])):
            assert shape == (shape[0], tuple(fields)), "Celery's field order"
            dispatcher.send_values("task", shape, tuple(fields.values()))
            dispatcher.send_buffered("task", shape[0], fields)
        items = dispatcher._pending
        assert [item[:3] for item in items[0::2]] == [item[:3] for item in items[1::2]]
        assert dispatcher._encode(items, 5).body == _reference(dispatcher, items, 5)
    finally:
        dispatcher.close()


def test_a_forked_child_starts_a_buffer_of_its_own(app):
    """The buffer and the flusher thread are the parent's: a child that sends an event starts
    its own (told by a fork counter, not by asking the kernel for the pid per event)."""
    import os

    dispatcher = EventDispatcher(app, "w1@host", buffer_group=("task",), flush_interval=3600)
    dispatcher._start_flusher = lambda: None  # type: ignore[method-assign]
    try:
        dispatcher.send("task-started", uuid="parent")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its first event finds the parent's buffer left behind
            try:
                dispatcher.send("task-started", uuid="child")
                pending = dispatcher._pending
                ok = (dispatcher._pid == os.getpid() and len(pending) == 1
                      and pending[0][2] == ("child",))
                os.write(write, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.close(read)
        os.waitpid(pid, 0)
        assert [item[2] for item in dispatcher._pending] == [("parent",)]
    finally:
        dispatcher.close()
