"""``celeriac events``' text: one ``--dump`` line per event, and the live view's screen."""

from __future__ import annotations

import time

from celeriac.cli.events import dump_line, render
from celeriac.events import Event, State


def _ev(event_type: str, **fields):
    return Event(event_type, {"hostname": "w1@host", "clock": 1}, timestamp=time.time(),
                 **fields)


def test_a_dump_line_names_the_task_from_its_received_event():
    names: dict[str, str] = {}
    received = dump_line(_ev("task-received", uuid="u1", name="proj.add", args="(2, 2)",
                             kwargs="{}"), names)
    succeeded = dump_line(_ev("task-succeeded", uuid="u1", result="4", runtime=0.5), names)
    online = dump_line(_ev("worker-online", freq=2.0, active=0), names)
    assert received.split()[2:] == ["w1@host", "task-received", "proj.add[u1]", "args=(2,",
                                    "2)", "kwargs={}"]
    assert succeeded.endswith(" w1@host task-succeeded proj.add[u1] result=4 runtime=0.5")
    assert online.endswith(" w1@host worker-online freq=2.0 active=0")
    assert dump_line(_ev("task-started", uuid="u2"), names).endswith(" ?[u2]")


def test_the_live_view_shows_workers_and_the_latest_tasks_first():
    state = State()
    state.event(_ev("worker-heartbeat", freq=2.0, active=1, processed=7,
                    loadavg=[0.5, 0.25, 0.125]))
    state.event(_ev("task-received", uuid="old", name="proj.old"))
    state.event(_ev("task-failed", uuid="old", exception="ValueError('x')", traceback="tb"))
    state.event(_ev("task-received", uuid="new", name="proj.a_very_long_task_name_indeed"))
    screen = render(state, "celeriac events on redis://h", 10, 200)
    lines = screen.splitlines()
    assert lines[0].startswith("celeriac events on redis://h: 4 events, 2 tasks, 1 worker(s)")
    worker = next(line for line in lines if line.startswith("  w1@host"))
    assert "ONLINE" in worker and "processed 7" in worker and "0.50 0.25 0.12" in worker
    rows = [line for line in lines if line.startswith(("  RECEIVED", "  FAILURE"))]
    assert rows[0].startswith("  RECEIVED  proj.a_very_long_task_name_… new")
    assert rows[1].startswith("  FAILURE   proj.old") and rows[1].endswith("ValueError('x')")
    assert all(len(line) <= 60 for line in render(state, "t", 10, 60).splitlines())


def test_the_live_view_before_any_event_says_so():
    screen = render(State(), "t", 5, 120, notice="no event received in 5 s")
    assert "no event received in 5 s" in screen
    assert screen.count("(none seen yet)") == 2
