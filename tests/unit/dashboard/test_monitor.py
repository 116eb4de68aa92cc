"""The dashboard's memory of events (pure logic): task states, bounds, throughput, workers."""

from __future__ import annotations

import pytest

from celeriac.dashboard.monitor import OUTCOMES, TaskMonitor


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def task_event(action: str, uuid: str, **fields):
    return {"type": f"task-{action}", "uuid": uuid, "hostname": "w1@host",
            "timestamp": 1_700_000_000.0, **fields}


def test_a_task_moves_through_its_states_and_keeps_its_fields():
    monitor = TaskMonitor(clock=Clock())
    monitor.on_event(task_event("received", "t1", name="proj.add", args="(2, 3)", kwargs="{}"))
    assert monitor.in_flight()[0]["state"] == "RECEIVED"
    monitor.on_event(task_event("started", "t1"))
    assert monitor.in_flight()[0]["state"] == "STARTED"
    monitor.on_event(task_event("succeeded", "t1", result="5", runtime=0.01))
    record = monitor.task("t1")
    assert record is not None
    assert (record["state"], record["name"], record["args"], record["result"], record["worker"]
            ) == ("SUCCESS", "proj.add", "(2, 3)", "5", "w1@host")
    assert monitor.in_flight() == []


def test_a_failure_keeps_its_exception_and_traceback():
    monitor = TaskMonitor(clock=Clock())
    monitor.on_event(task_event("received", "t1", name="proj.fail"))
    monitor.on_event(task_event("failed", "t1", exception="ValueError('boom')",
                                traceback="Traceback (most recent call last):\n  ..."))
    [failed] = monitor.tasks(state="FAILURE")
    assert failed["exception"] == "ValueError('boom')"
    assert failed["traceback"].startswith("Traceback")


def test_a_late_event_never_makes_a_finished_task_look_in_flight_again():
    monitor = TaskMonitor(clock=Clock())
    monitor.on_event(task_event("succeeded", "t1", result="1"))
    monitor.on_event(task_event("started", "t1"))
    monitor.on_event(task_event("received", "t1", name="proj.add"))
    record = monitor.task("t1")
    assert record is not None and record["state"] == "SUCCESS"
    assert record["name"] == "proj.add"  # the late event's fields still count


def test_a_late_received_never_moves_a_started_task_back():
    monitor = TaskMonitor(clock=Clock())
    monitor.on_event(task_event("started", "t1"))
    monitor.on_event(task_event("received", "t1", name="proj.add"))
    record = monitor.task("t1")
    assert record is not None and record["state"] == "STARTED"  # as Celery's events.state


def test_a_retried_task_is_in_flight_again_when_received_again():
    monitor = TaskMonitor(clock=Clock())
    for action in ("received", "started", "retried", "received"):
        monitor.on_event(task_event(action, "t1"))
    assert [t["uuid"] for t in monitor.in_flight()] == ["t1"]


def test_task_sent_names_the_client_not_a_worker():
    monitor = TaskMonitor(clock=Clock())
    monitor.on_event({"type": "task-sent", "uuid": "t1", "hostname": "gen1@client",
                      "name": "proj.add", "queue": "celery"})
    record = monitor.task("t1")
    assert record is not None
    assert (record["state"], record["sender"], record.get("worker")) == (
        "PENDING", "gen1@client", None)


def test_the_ring_keeps_only_the_latest_tasks():
    monitor = TaskMonitor(max_tasks=3, clock=Clock())
    for n in range(5):
        monitor.on_event(task_event("received", f"t{n}"))
    assert [t["uuid"] for t in monitor.tasks()] == ["t4", "t3", "t2"]
    assert monitor.task("t0") is None


def test_huge_fields_are_clipped():
    monitor = TaskMonitor(clock=Clock())
    monitor.on_event(task_event("received", "t1", args="x" * 50_000))
    record = monitor.task("t1")
    assert record is not None and len(record["args"]) < 1100


def test_throughput_counts_outcomes_per_minute_over_a_bounded_window():
    clock = Clock(60 * 1000.0 + 5)
    monitor = TaskMonitor(minutes=3, clock=clock)
    monitor.on_event(task_event("succeeded", "a"))
    monitor.on_event(task_event("failed", "b"))
    clock.now += 60
    monitor.on_event(task_event("succeeded", "c"))
    monitor.on_event(task_event("succeeded", "d"))
    monitor.on_event(task_event("received", "e"))  # not an outcome
    rows = monitor.throughput()
    assert [r["minute"] for r in rows] == [60 * 999, 60 * 1000, 60 * 1001]
    assert [(r["succeeded"], r["failed"]) for r in rows] == [(0, 0), (1, 1), (2, 0)]
    assert set(rows[0]) == {"minute", *OUTCOMES}
    clock.now += 60 * 10  # every counted minute has left the window
    assert all(r["succeeded"] == r["failed"] == 0 for r in monitor.throughput())


def test_workers_are_alive_while_their_heartbeats_are_fresh():
    clock = Clock()
    monitor = TaskMonitor(clock=clock)
    monitor.on_event({"type": "worker-online", "hostname": "w1@h", "freq": 2.0, "active": 0,
                      "processed": 0, "loadavg": [0.1, 0.2, 0.3]})
    monitor.on_event({"type": "worker-heartbeat", "hostname": "w2@h", "freq": 2.0,
                      "active": 1, "processed": 7})
    workers = monitor.workers()
    assert workers["w1@h"]["alive"] and workers["w2@h"]["processed"] == 7
    clock.now += 5  # more than twice freq: silent
    assert not monitor.workers()["w1@h"]["alive"]
    monitor.on_event({"type": "worker-heartbeat", "hostname": "w1@h", "freq": 2.0})
    monitor.on_event({"type": "worker-offline", "hostname": "w2@h", "freq": 2.0})
    workers = monitor.workers()
    assert workers["w1@h"]["alive"] and not workers["w2@h"]["alive"]


def test_unknown_or_malformed_events_are_ignored():
    monitor = TaskMonitor(clock=Clock())
    for event in ({}, {"type": 5}, {"type": "task-exploded", "uuid": "t"},
                  {"type": "task-received"}, {"type": "worker-online"},
                  {"type": "custom-thing", "x": 1}):
        monitor.on_event(event)
    assert monitor.tasks() == [] and monitor.workers() == {}
    assert monitor.events_seen == 4  # the two without a type are not events at all


def test_bounds_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        TaskMonitor(max_tasks=0)
