"""The beat's decisions, on a memory:// broker and store with a clock the test moves: when an
entry fires, that it fires once however many beats run, what a restart or an outage does, and
run-time edits. (Several beat processes against real stores: tests/integration/test_beat.py.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest

from celeriac import Celery
from celeriac.beat import Beat, NoSuchEntry
from celeriac.beat.service import LEADER_LOCK
from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules import crontab, schedule
from tests.apps import memory_apps

START = datetime(2026, 3, 2, 7, 0, 0, tzinfo=timezone.utc)  # a Monday


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def make() -> Iterator[Callable[..., Celery]]:
    with memory_apps("beat-tests") as make:
        yield make


@pytest.fixture
def twin(make: Callable[..., Celery]) -> Callable[..., Celery]:
    """Another app (another beat's process) on the same memory:// broker and store."""
    made: list[Celery] = []

    def twin_of(app: Celery, **settings: Any) -> Celery:
        url = app.conf.broker_url
        other = Celery("beat-tests", broker=url, backend=url, set_as_current=False, **settings)
        made.append(other)
        return other

    yield twin_of  # type: ignore[misc]
    for app in made:
        app.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sent(app: Celery, queue: str = "celery") -> list[Any]:
    """Take every message waiting in ``queue`` (what the beats sent since the last look)."""
    deliveries = app.transport.fetch([queue], 1000, 0)
    app.transport.ack(deliveries)
    return [d.message for d in deliveries]


def names(messages: list[Any]) -> list[str]:
    return [m.headers["task"] for m in messages]


def beat(app: Celery, clock: Clock, **kwargs: Any) -> Beat:
    service = Beat(app, clock=clock, **kwargs)
    service.setup()
    return service


def test_an_interval_fires_one_period_after_it_is_first_seen_then_every_period(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(beat_schedule={"ping": {"task": "proj.ping", "schedule": 10.0}})
    b = beat(app, clock)
    b.tick()
    assert sent(app) == [], "first seen: it counts from now (Celery's rule)"
    clock.advance(9.5)
    b.tick()
    assert sent(app) == []
    clock.advance(0.5)
    b.tick()
    b.tick()
    assert names(sent(app)) == ["proj.ping"], "due once, and a second pass does not resend"
    clock.advance(10)
    b.tick()
    assert names(sent(app)) == ["proj.ping"]
    assert app.periodic_tasks.get("ping").total_run_count == 2


def test_a_crontab_fires_at_its_minute_in_the_apps_timezone(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(timezone="Europe/London", beat_schedule={
        "weekly": {"task": "proj.report", "schedule": crontab(hour=7, minute=30,
                                                              day_of_week=1)}})
    b = beat(app, clock)
    b.tick()  # 07:00 UTC on a Monday in March = 07:00 in London (GMT)
    clock.advance(29 * 60)
    b.tick()
    assert sent(app) == []
    clock.advance(60)
    b.tick()
    assert names(sent(app)) == ["proj.report"]
    clock.advance(24 * 3600)
    b.tick()
    assert sent(app) == [], "a Tuesday"


def test_entry_options_args_and_celerys_beat_header_reach_the_message(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(beat_schedule={"add": {
        "task": "proj.add", "schedule": timedelta(seconds=5), "args": (2, 3),
        "kwargs": {"z": 1}, "options": {"queue": "periodic", "priority": 5, "expires": 30}}})
    b = beat(app, clock)
    b.tick()
    clock.advance(5)
    b.tick()
    [message] = sent(app, "periodic")
    headers = message.headers
    assert headers["task"] == "proj.add"
    assert headers["celery_beat_task"] is True and headers["periodic_task_name"] == "add"
    assert headers["expires"], "expires=30 became an absolute expiry"
    assert headers["argsrepr"] in ("(2, 3)", "[2, 3]")
    assert message.properties["priority"] == 5


def test_several_beats_one_leader_each_run_fires_once(
        make: Callable[..., Celery], twin: Callable[..., Celery], clock: Clock) -> None:
    first = make(beat_schedule={"ping": {"task": "proj.ping", "schedule": 1.0}})
    others = [twin(first, beat_schedule={"ping": {"task": "proj.ping", "schedule": 1.0}})
              for _ in range(2)]
    beats = [beat(app, clock) for app in (first, *others)]
    for _ in range(20):
        for b in beats:
            b.tick()
        clock.advance(1)
    assert sum(b.is_leader for b in beats) == 1
    assert len(sent(first)) == 19, "one per second after the first, never two"


def test_a_beat_that_still_believes_it_leads_cannot_fire_a_run_twice(
        make: Callable[..., Celery], twin: Callable[..., Celery], clock: Clock) -> None:
    """The split-brain case: a leader paused past its lease while another took over. The run's
    claim in the store, keyed by the entry's last run, stops the second send."""
    one = make(beat_schedule={"ping": {"task": "proj.ping", "schedule": 1.0}})
    two = twin(one, beat_schedule={"ping": {"task": "proj.ping", "schedule": 1.0}})
    b1, b2 = beat(one, clock), beat(two, clock)
    b1.tick()
    b2.leader.acquired = True  # as if it had led, paused, and woken without noticing
    b2._renewed_at, b2._valid_until = b1._renewed_at, b1._valid_until
    clock.advance(1)
    b1.tick()
    b2.tick()
    assert len(sent(one)) == 1


def test_a_restart_neither_refires_nor_skips_and_a_long_outage_fires_once(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(beat_schedule={"ping": {"task": "proj.ping", "schedule": 10.0}})
    b = beat(app, clock)
    b.tick()
    clock.advance(10)
    b.tick()
    assert len(sent(app)) == 1
    b._step_down()
    clock.advance(1)
    again = beat(app, clock)  # restarted: its state is in the store
    again.tick()
    assert sent(app) == [], "not fired again at start"
    clock.advance(9)
    again.tick()
    assert len(sent(app)) == 1, "not skipped either"
    again._step_down()
    clock.advance(3600)  # every beat down for an hour: 360 periods missed
    third = beat(app, clock)
    third.tick()
    third.tick()
    assert len(sent(app)) == 1, "the missed runs fire once, not once per period"
    clock.advance(10)
    third.tick()
    assert len(sent(app)) == 1


def test_run_time_edits_reach_the_running_beat(make: Callable[..., Celery],
                                               clock: Clock) -> None:
    app = make()
    b = beat(app, clock)
    app.periodic_tasks.add("nightly", "proj.clean", 60, args=[1])
    b.tick()
    clock.advance(60)
    b.tick()
    assert names(sent(app)) == ["proj.clean"]
    app.periodic_tasks.pause("nightly")
    clock.advance(120)
    b.tick()
    assert sent(app) == []
    app.periodic_tasks.resume("nightly")
    b.tick()
    assert len(sent(app)) == 1, "resumed: due, fires once (missed runs are not made up)"
    app.periodic_tasks.change("nightly", schedule=schedule(timedelta(seconds=5)),
                              args=[2], options={"queue": "other"})
    clock.advance(5)
    b.tick()
    [message] = sent(app, "other")
    assert message.headers["argsrepr"] in ("(2,)", "[2]")
    app.periodic_tasks.remove("nightly")
    clock.advance(60)
    b.tick()
    assert sent(app, "other") == []
    with pytest.raises(NoSuchEntry, match="no periodic task named 'nightly'"):
        app.periodic_tasks.pause("nightly")


def test_config_entries_sync_keeps_edits_until_the_definition_changes(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(beat_schedule={"a": {"task": "proj.a", "schedule": 10.0},
                              "b": {"task": "proj.b", "schedule": 10.0}})
    beat(app, clock)
    app.periodic_tasks.pause("a")
    app.periodic_tasks.add("mine", "proj.mine", 30)
    beat(app, clock)  # a restart with the same beat_schedule
    entries = {e.name: e for e in app.periodic_tasks.list()}
    assert not entries["a"].enabled, "a pause outlives a restart"
    assert entries["mine"].origin == "runtime"
    app.conf.beat_schedule = {"a": {"task": "proj.a", "schedule": 20.0}}
    beat(app, clock)
    entries = {e.name: e for e in app.periodic_tasks.list()}
    assert entries["a"].enabled, "a changed definition replaces the stored entry"
    assert "b" not in entries, "gone from beat_schedule: gone from the schedule"
    assert "mine" in entries, "run-time entries are left alone"


def test_add_periodic_task_in_an_on_after_configure_handler(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make()

    @app.task(name="proj.hello")
    def hello(word: str) -> str:
        return word

    def setup(sender: Celery, **_: Any) -> None:
        sender.add_periodic_task(10.0, hello.s("hello"), name="say hello every 10")
        sender.add_periodic_task(crontab(minute=0), hello.s("hourly"))

    app.on_after_configure.connect(setup, weak=False)
    b = beat(app, clock)
    listed = {e.name: e for e in app.periodic_tasks.list()}
    assert set(listed) == {"say hello every 10", "proj.hello('hourly')"}
    b.tick()
    clock.advance(10)
    b.tick()
    assert names(sent(app)) == ["proj.hello"]


def test_a_custom_schedule_class_fires_from_the_beat_that_defines_it(
        make: Callable[..., Celery], clock: Clock) -> None:
    class EveryOtherCall:
        def __init__(self) -> None:
            self.calls = 0

        def is_due(self, last_run_at: datetime) -> tuple[bool, float]:
            self.calls += 1
            return self.calls % 2 == 0, 1.0

    app = make(beat_schedule={"odd": {"task": "proj.odd", "schedule": EveryOtherCall()}})
    b = beat(app, clock)
    for _ in range(5):
        b.tick()
    assert len(sent(app)) == 2
    assert "only a beat with it in beat_schedule" in app.periodic_tasks.get("odd") \
        .describe_schedule()


def test_cron_starting_deadline_skips_a_run_missed_by_too_much(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(beat_cron_starting_deadline=60,
               beat_schedule={"m": {"task": "proj.m", "schedule": crontab(minute="*/5")}})
    b = beat(app, clock)
    b.tick()
    b._step_down()
    clock.advance(750)  # down across two runs (07:05, 07:10); now 07:12:30
    b2 = beat(app, clock)
    b2.tick()
    assert sent(app) == [], "07:10 was missed by more than the deadline"
    clock.advance(150)
    b2.tick()
    assert len(sent(app)) == 1, "07:15 fires"


def test_leadership_passes_when_the_leader_steps_down(
        make: Callable[..., Celery], twin: Callable[..., Celery], clock: Clock) -> None:
    one = make()
    two = twin(one)
    b1, b2 = beat(one, clock), beat(two, clock)
    b1.tick()
    b2.tick()
    assert b1.is_leader and not b2.is_leader
    b1._step_down()
    b2.tick()
    assert b2.is_leader
    assert one.lock(LEADER_LOCK).owner() == b2.token


@pytest.mark.parametrize(("table", "message"), [
    ({"x": {"schedule": 5}}, "beat_schedule['x'] has no 'task'"),
    ({"x": {"task": "t"}}, "beat_schedule['x'] has no 'schedule'"),
    ({"x": {"task": "t", "schedule": -1}}, "more than 0 seconds"),
    ({"x": {"task": "t", "schedule": "daily"}}, "is not a schedule"),
    ({"x": {"task": "t", "schedule": 5, "options": {"qeueu": "a"}}}, "unknown option(s) qeueu"),
    ({"x": {"task": "t", "schedule": 5, "args": "abc"}}, "args must be a list or tuple"),
    ({"x": {"task": "t", "schedule": 5, "when": 1}}, "unknown key(s) when"),
])
def test_a_bad_entry_is_one_line_naming_it(make: Callable[..., Celery], table: dict,
                                           message: str) -> None:
    app = make(beat_schedule=table)
    with pytest.raises(ImproperlyConfigured) as caught:
        Beat(app)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_store_that_keeps_no_state_is_refused_with_the_fix() -> None:
    app = Celery("t", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://",
                 set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match="result_backend"):
            Beat(app)
    finally:
        app.close()


def test_adding_an_existing_name_or_an_unstorable_value_is_refused(
        make: Callable[..., Celery]) -> None:
    app = make()
    app.periodic_tasks.add("a", "proj.a", 5)
    with pytest.raises(ValueError, match="exists already"):
        app.periodic_tasks.add("a", "proj.a", 5)
    app.periodic_tasks.add("a", "proj.b", 5, replace_existing=True)
    assert app.periodic_tasks.get("a").task == "proj.b"
    with pytest.raises(ImproperlyConfigured, match="cannot be stored"):
        app.periodic_tasks.add("b", "proj.b", 5, args=[object()])


def test_beat_init_for_a_beat_and_beat_embedded_init_for_worker_dash_b(
        make: Callable[..., Celery], clock: Clock) -> None:
    from celeriac import signals

    seen: list[tuple[str, Any]] = []

    def on_init(sender: Any, signal: Any, **_: Any) -> None:
        seen.append((signal.name, sender))

    signals.beat_init.connect(on_init, weak=False)
    signals.beat_embedded_init.connect(on_init, weak=False)
    try:
        app = make()
        standalone = beat(app, clock)
        embedded = Beat(app, clock=clock, embedded=True)
        embedded.setup()
    finally:
        signals.beat_init.disconnect(on_init)
        signals.beat_embedded_init.disconnect(on_init)
    assert seen == [("beat_init", standalone), ("beat_embedded_init", embedded)]


def test_max_interval_bounds_the_sleep_and_edits_are_read_every_second(
        make: Callable[..., Celery], clock: Clock) -> None:
    app = make(beat_schedule={"daily": {"task": "proj.d", "schedule": 86400.0}})
    b = beat(app, clock)
    assert b.tick() <= 1.0, "a leader looks at the stored schedule about once a second"
    slow = beat(make(beat_max_loop_interval=0.25,
                     beat_schedule={"daily": {"task": "proj.d", "schedule": 86400.0}}), clock)
    assert slow.tick() <= 0.25
    assert slow.max_interval == 0.25


def test_an_unchanged_entry_keeps_its_schedule_object_between_reads(
        make: Callable[..., Celery]) -> None:
    app = make()
    book = app.periodic_tasks
    book.add("hourly", "proj.sync", crontab(minute=5))
    first = book.entries()["hourly"]
    assert book.entries()["hourly"] is first, "an unchanged record is not rebuilt"
    book.change("hourly", schedule=crontab(minute=10))
    changed = book.entries()["hourly"]
    assert changed is not first and changed.schedule is not None
    assert changed.schedule.minute == {10}
    book.pause("hourly")
    assert book.entries()["hourly"].enabled is False
