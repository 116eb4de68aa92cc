"""celeriac.schedules against Celery 5's own ``celery.schedules`` as the oracle: the same fields,
``last_run_at`` and clock (``nowfun``) must give the same ``remaining_estimate`` and ``is_due``,
over seeded random cases around month ends, leap days and the DST changes of Europe/London and
America/New_York. Then the parser, the error lines, ``to_dict``/``schedule_from_dict``,
``maybe_schedule`` and the app's zone and clock."""

from __future__ import annotations

import json
import pickle
import random
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

import celery
import celery.schedules as celery_schedules
import pytest

from celeriac import Celery
from celeriac.backends import memory
from celeriac.exceptions import ImproperlyConfigured, MissingDependency
from celeriac.schedules import (
    ParseException,
    app_timezone,
    crontab,
    crontab_parser,
    local_zone,
    maybe_schedule,
    schedstate,
    schedule,
    schedule_from_dict,
    solar,
)

# Lord Howe Island moves its clocks by half an hour: the case Celery's relative rounding has
# special code for.
ZONES = ("UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe")
UTC = timezone.utc

# Local wall times where schedules go wrong: month and year ends, leap days, and the DST changes
# of 2024 (New York: 10 March 02:00 forward, 3 November 02:00 back; London: 31 March 01:00
# forward, 27 October 02:00 back; Lord Howe: 7 April 02:00 back to 01:30, 6 October 02:00
# forward to 02:30).
ANCHORS = [
    datetime(2023, 1, 31, 23), datetime(2023, 2, 28, 23), datetime(2024, 2, 28, 23),
    datetime(2024, 2, 29, 12), datetime(2024, 2, 29, 23, 59), datetime(2023, 4, 30, 23),
    datetime(2023, 12, 31, 23, 30), datetime(2024, 12, 31, 23, 59), datetime(2025, 6, 30, 22),
    datetime(2024, 3, 10, 1, 30), datetime(2024, 3, 10, 2, 30), datetime(2024, 11, 3, 0, 59),
    datetime(2024, 11, 3, 1, 30), datetime(2024, 3, 31, 0, 45), datetime(2024, 3, 31, 1, 30),
    datetime(2024, 10, 27, 0, 30), datetime(2024, 10, 27, 1, 30), datetime(2024, 10, 27, 2),
    datetime(2024, 3, 9, 2, 30), datetime(2024, 11, 2, 1, 30), datetime(2024, 10, 26, 1, 30),
    datetime(2024, 4, 7, 1, 40), datetime(2024, 4, 7, 0, 50), datetime(2024, 10, 6, 1, 50),
    datetime(2024, 10, 6, 2, 15),
]

MINUTES: list[Any] = ["*", "*/15", "0", 30, "0,30", "5-10", "0-59/10", {0, 15, 45}, [59],
                      "58-2", range(0, 60, 20), "0", "0"]
HOURS: list[Any] = ["*", "2", 1, "0-3", "*/4", "22-2", {1, 2, 3}, "23", "1", "7", "0"]
DAYS_OF_WEEK: list[Any] = ["*", "*", "*", "mon-fri", "sun", 0, "6", "sat,sun", "fri-mon", "*/2",
                           [1, 3, 5], "Tuesday"]
DAYS_OF_MONTH: list[Any] = ["*", "*", "*", "1", "31", "29", "1-7", "28-31", "*/10", {30, 31},
                            "1-31", "15"]
MONTHS: list[Any] = ["*", "*", "*", "2", "1,3,5", "*/3", "2-3", {12}, "jan-mar", "12-2", "11"]


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[tuple[str, float | None], tuple[Celery, Any]]]:
    """(zone, beat_cron_starting_deadline) -> (a celeriac app, a Celery app) set alike."""
    made: dict[tuple[str, float | None], tuple[Celery, Any]] = {}
    names = []
    for zone in ZONES:
        for deadline in (None, 0, 90, 7200):
            name = f"schedules-{uuid.uuid4().hex}"
            names.append(name)
            ours = Celery("schedules", broker=f"memory://{name}", backend=f"memory://{name}",
                          set_as_current=False)
            theirs = celery.Celery("schedules", set_as_current=False)
            for conf in (ours.conf, theirs.conf):
                conf.timezone = zone
                conf.beat_cron_starting_deadline = deadline
            made[zone, deadline] = (ours, theirs)
    yield made
    for ours, _ in made.values():
        ours.close()
    for name in names:
        memory.reset(name)


def _instant(rng: random.Random, zone: ZoneInfo) -> datetime:
    """A moment near an anchor (or anywhere in 2023-2025), aware in UTC."""
    if rng.random() < 0.8:
        wall = rng.choice(ANCHORS)
    else:
        wall = datetime(2023, 1, 1) + timedelta(days=rng.randrange(3 * 365))
        wall += timedelta(hours=rng.randrange(24))
    wall += timedelta(minutes=rng.randint(-120, 120), seconds=rng.choice([0, 0, 1, 59]),
                      microseconds=rng.choice([0, 0, 500]))
    return wall.replace(tzinfo=zone, fold=rng.randint(0, 1)).astimezone(UTC)


def _shown(rng: random.Random, moment: datetime, zone: ZoneInfo) -> datetime:
    """``moment`` as a caller may pass it: aware in the zone or in UTC, or naive UTC (read as
    UTC by both libraries), or a local wall time re-labelled with either fold (may name a time
    in a DST gap)."""
    form = rng.randrange(5)
    if form == 0:
        return moment.astimezone(zone)
    if form == 1:
        return moment
    if form == 2:
        return moment.replace(tzinfo=None)
    if form == 3:
        return moment.astimezone(zone).replace(fold=rng.randint(0, 1))
    wall = moment.astimezone(zone).replace(tzinfo=None)
    return wall.replace(tzinfo=zone, fold=rng.randint(0, 1))


def _clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _utc(moment: datetime) -> datetime:
    """The instant both libraries read: a naive time is UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


class _Clock:
    """A settable clock for walking a beat through time."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _cases(seed: int, count: int) -> Iterator[tuple[random.Random, str, datetime, datetime]]:
    rng = random.Random(seed)
    for _ in range(count):
        zone_name = rng.choice(ZONES)
        zone = ZoneInfo(zone_name)
        last = _instant(rng, zone)
        pick = rng.random()
        if pick < 0.1:
            now = last
        elif pick < 0.7:
            now = last + timedelta(seconds=rng.uniform(-3600, 3 * 86400))
        else:
            now = _instant(rng, zone)
        yield rng, zone_name, _shown(rng, last, zone), _shown(rng, now, zone)


def test_crontab_matches_celery_on_random_fields_times_and_zones(apps: dict) -> None:
    compared = invalid = due = repeated_hour = 0
    for rng, zone, last, now in _cases(seed=15, count=3000):
        deadline = rng.choice([None, None, 0, 90, 7200])
        ours_app, their_app = apps[zone, deadline]
        fields = dict(minute=rng.choice(MINUTES), hour=rng.choice(HOURS),
                      day_of_week=rng.choice(DAYS_OF_WEEK),
                      day_of_month=rng.choice(DAYS_OF_MONTH), month_of_year=rng.choice(MONTHS))
        try:
            theirs = celery_schedules.crontab(**fields, nowfun=_clock(now), app=their_app)
        except ValueError:
            with pytest.raises(ValueError, match="never occurs"):
                crontab(**fields, nowfun=_clock(now), app=ours_app)
            invalid += 1
            continue
        ours = crontab(**fields, nowfun=_clock(now), app=ours_app)
        case = f"{fields} zone={zone} deadline={deadline} last={last!r} now={now!r}"
        expected = theirs.remaining_estimate(last)
        now_utc = _utc(now)
        if now_utc + expected <= _utc(last):
            # Celery's bug in the second pass of a repeated hour (see test_falling_back...)
            assert ours.next_run_after(last) > _utc(last), case
            repeated_hour += 1
            continue
        assert ours.remaining_estimate(last) == expected, case
        assert ours.is_due(last) == tuple(theirs.is_due(last)), case
        # the exact moment of the run: due at it, not a microsecond before
        at_run = now_utc + expected
        for moment in (at_run, at_run - timedelta(microseconds=1)):
            ours.nowfun = theirs.nowfun = _clock(moment)
            mine = ours.is_due(last)
            assert mine == tuple(theirs.is_due(last)), f"{case} at {moment!r}"
            due += mine.is_due
        compared += 1
    assert compared > 2000 and invalid > 0 and due > 500, (compared, invalid, due)
    assert repeated_hour < 50, repeated_hour


def test_intervals_match_celery_plain_and_relative(apps: dict) -> None:
    seconds = [0.5, 1, 7.5, 30, 60, 90, 300, 900, 3600, 5400, 7200, 86400, 172800, 0, -5]
    relative_seen = due = 0
    for rng, zone, last, now in _cases(seed=1515, count=4000):
        ours_app, their_app = apps[zone, None]
        every = rng.choice(seconds)
        run_every = timedelta(seconds=every) if rng.random() < 0.5 else every
        relative = rng.random() < 0.5
        theirs = celery_schedules.schedule(run_every, relative, nowfun=_clock(now), app=their_app)
        ours = schedule(run_every, relative, nowfun=_clock(now), app=ours_app)
        case = f"every={run_every!r} relative={relative} zone={zone} last={last!r} now={now!r}"
        assert ours.remaining_estimate(last) == theirs.remaining_estimate(last), case
        mine = ours.is_due(last)
        assert mine == tuple(theirs.is_due(last)), case
        relative_seen += relative
        due += mine.is_due
    assert relative_seen > 1600 and 500 < due < 3500, (relative_seen, due)


# (zone, local wall time of a clock change in 2024)
TRANSITIONS = [("America/New_York", datetime(2024, 3, 10, 2)),
               ("America/New_York", datetime(2024, 11, 3, 1, 30)),
               ("Europe/London", datetime(2024, 3, 31, 1)),
               ("Europe/London", datetime(2024, 10, 27, 1, 30)),
               ("Australia/Lord_Howe", datetime(2024, 4, 7, 1, 45)),
               ("Australia/Lord_Howe", datetime(2024, 10, 6, 2))]


@pytest.mark.parametrize("zone, change", TRANSITIONS, ids=lambda v: str(v))
def test_relative_intervals_across_clock_changes_match_celery(
        apps: dict, zone: str, change: datetime) -> None:
    """Every 5 minutes through three hours either side of each clock change, both passes of a
    repeated time: a relative schedule's next run agrees with Celery's."""
    ours_app, their_app = apps[zone, None]
    tz = ZoneInfo(zone)
    for step in range(-36, 37):
        for fold in (0, 1):
            last = (change + timedelta(minutes=5 * step, seconds=7)).replace(tzinfo=tz,
                                                                             fold=fold)
            for every in (60, 90, 1800, 3600, 5400, 7200, 86400):
                for now in (last, last.astimezone(UTC) + timedelta(seconds=every)):
                    theirs = celery_schedules.schedule(every, True, nowfun=_clock(now),
                                                       app=their_app)
                    ours = schedule(every, True, nowfun=_clock(now), app=ours_app)
                    case = f"every {every} from {last!r} at {now!r}"
                    assert ours.remaining_estimate(last) == theirs.remaining_estimate(last), case
                    assert ours.is_due(last) == tuple(theirs.is_due(last)), case


@pytest.mark.parametrize("zone", ZONES)
def test_hourly_and_daily_runs_through_a_year_of_dst_match_celery(apps: dict, zone: str) -> None:
    """Walks a beat through 2024: each run at the instant the schedule said, as the beat does;
    the fire times agree with Celery's all year, across both DST changes."""
    ours_app, their_app = apps[zone, None]
    for fields in ({"minute": 30, "hour": "1,2"}, {"minute": 0, "hour": 0}):
        clock = _Clock(datetime(2024, 1, 1, 12, tzinfo=UTC))
        ours = crontab(**fields, nowfun=clock, app=ours_app)
        theirs = celery_schedules.crontab(**fields, nowfun=clock, app=their_app)
        last = clock.now.astimezone(ZoneInfo(zone))
        runs = 0
        while last.year == 2024:
            step = theirs.remaining_estimate(last)
            assert ours.remaining_estimate(last) == step, (fields, last)
            clock.now = last.astimezone(UTC) + step
            last = clock.now.astimezone(ZoneInfo(zone))
            runs += 1
        assert runs >= 365, runs


def _beat_fires(entry: Any, clock: _Clock, until: datetime, zone: ZoneInfo) -> list[str]:
    """Runs a beat's loop on a simulated clock (ticks of at most 5 s, at least 1 s) and returns
    the local times it fired at."""
    fires, last = [], clock.now
    while clock.now < until:
        due, next_check = entry.is_due(last)
        if due:
            fires.append(clock.now.astimezone(zone).strftime("%H:%M:%S%z"))
            last = clock.now
        clock.now += timedelta(seconds=min(max(next_check, 1), 5))
    return fires


def test_falling_back_each_wall_time_fires_once(apps: dict) -> None:
    """New York, 3 November 2024: 01:00-01:59 happens twice. Running through the night, the
    */15 runs of the repeated hour fire at its first pass only (as in Celery). Starting in the
    second pass, Celery fires at every check until 02:00; celeriac waits for 02:00."""
    zone = ZoneInfo("America/New_York")
    ours_app, their_app = apps["America/New_York", None]
    through = _Clock(datetime(2024, 11, 3, 4, 50, tzinfo=UTC))  # 00:50 EDT
    fires = _beat_fires(crontab(minute="*/15", nowfun=through, app=ours_app), through,
                        datetime(2024, 11, 3, 7, 20, tzinfo=UTC), zone)
    theirs = _Clock(datetime(2024, 11, 3, 4, 50, tzinfo=UTC))
    assert fires == _beat_fires(
        celery_schedules.crontab(minute="*/15", nowfun=theirs, app=their_app), theirs,
        datetime(2024, 11, 3, 7, 20, tzinfo=UTC), zone)
    assert fires == ["01:00:00-0400", "01:15:00-0400", "01:30:00-0400", "01:45:00-0400",
                     "02:00:00-0500", "02:15:00-0500"]

    inside = _Clock(datetime(2024, 11, 3, 6, 5, tzinfo=UTC))  # 01:05 EST, the second pass
    fires = _beat_fires(crontab(minute="*/15", nowfun=inside, app=ours_app), inside,
                        datetime(2024, 11, 3, 7, 20, tzinfo=UTC), zone)
    assert fires == ["02:00:00-0500", "02:15:00-0500"]
    celery_inside = _Clock(datetime(2024, 11, 3, 6, 5, tzinfo=UTC))
    celery_fires = _beat_fires(
        celery_schedules.crontab(minute="*/15", nowfun=celery_inside, app=their_app),
        celery_inside, datetime(2024, 11, 3, 6, 10, tzinfo=UTC), zone)
    assert len(celery_fires) > 100, "Celery's behaviour this departs from: a fire per check"


def test_solar_matches_celery(apps: dict) -> None:
    pytest.importorskip("ephem", reason="solar needs ephem: pip install 'celeriac[solar]'")
    rng = random.Random(1505)
    places = [(51.5, -0.13), (40.7, -74.0), (-33.9, 151.2), (0, 0), (69.65, 18.96),
              (78.2, 15.6)]
    events = ["dawn_astronomical", "dawn_nautical", "dawn_civil", "sunrise", "solar_noon",
              "sunset", "dusk_civil", "dusk_nautical", "dusk_astronomical"]
    for _ in range(80):
        zone = rng.choice(ZONES)
        ours_app, their_app = apps[zone, None]
        lat, lon = rng.choice(places)
        event = rng.choice(events)
        last = _instant(rng, ZoneInfo(zone))
        now = last + timedelta(seconds=rng.uniform(0, 2 * 86400))
        theirs = celery_schedules.solar(event, lat, lon, nowfun=_clock(now), app=their_app)
        ours = solar(event, lat, lon, nowfun=_clock(now), app=ours_app)
        shown = _shown(rng, last, ZoneInfo(zone))
        case = f"{event} at {lat},{lon} zone={zone} last={shown!r} now={now!r}"
        assert ours.remaining_estimate(shown) == theirs.remaining_estimate(shown), case
        assert ours.is_due(shown) == tuple(theirs.is_due(shown)), case


def test_solar_without_ephem_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ephem", None)
    with pytest.raises(MissingDependency) as raised:
        solar("sunset", 51.5, -0.13)
    assert "pip install 'celeriac[solar]'" in str(raised.value)


@pytest.mark.parametrize("args, message", [
    (("sundown", 0, 0), "solar event 'sundown' is not one of: dawn_astronomical"),
    (("sunset", 91, 0), "solar lat=91 is out of range: it must be between -90 and 90"),
    (("sunset", 0, -181), "solar lon=-181 is out of range: it must be between -180 and 180"),
])
def test_solar_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        solar(*args)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


# ---- the parser ----------------------------------------------------------------------------

@pytest.mark.parametrize("max_, min_, spec, expected", [
    (60, 0, "*/15", {0, 15, 30, 45}),
    (60, 0, "0-59/10", {0, 10, 20, 30, 40, 50}),
    (60, 0, "1,3,5", {1, 3, 5}),
    (60, 0, "58-2", {58, 59, 0, 1, 2}),
    (60, 0, "1,13,30-45/5", {1, 13, 30, 35, 40, 45}),
    (24, 0, "0,8-17/2", {0, 8, 10, 12, 14, 16}),
    (24, 0, " 7 ", {7}),
    (7, 0, "mon-fri", {1, 2, 3, 4, 5}),
    (7, 0, "fri-mon", {5, 6, 0, 1}),
    (7, 0, "SUN", {0}),
    (7, 0, "sunday,Wed", {0, 3}),
    (7, 0, "tues-thurs", {2, 3, 4}),
    (7, 0, "7", {0}),
    (7, 0, "5-7", {5, 6, 0}),
    (7, 0, "0-7", set(range(7))),
    (7, 0, "1-7/2", {1, 3, 5, 0}),
    (7, 0, "*/2", {0, 2, 4, 6}),
    (31, 1, "*/3", {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31}),
    (31, 1, "1-7,15-21", set(range(1, 8)) | set(range(15, 22))),
    (12, 1, "*/2", {1, 3, 5, 7, 9, 11}),
    (12, 1, "2-12/2", {2, 4, 6, 8, 10, 12}),
    (12, 1, "jan-mar", {1, 2, 3}),
    (12, 1, "nov-feb", {11, 12, 1, 2}),
    (12, 1, "September,dec", {9, 12}),
])
def test_parser_expands_fields(max_: int, min_: int, spec: str, expected: set[int]) -> None:
    assert crontab_parser(max_, min_).parse(spec) == expected
    if not (max_ == 7 and "7" in spec):  # Celery rejects 7 for Sunday; cron and celeriac take it
        assert celery_schedules.crontab_parser(max_, min_).parse(spec) == expected, \
            "Celery expands it the same way"


@pytest.mark.parametrize("kwargs, exc, start", [
    ({"minute": 60}, ValueError, "crontab minute=60: 60 is out of range; allowed: 0-59"),
    ({"minute": "61"}, ValueError, "crontab minute='61': 61 is out of range; allowed: 0-59"),
    ({"hour": "25"}, ValueError, "crontab hour='25': 25 is out of range; allowed: 0-23"),
    ({"hour": "mon"}, ValueError, "crontab hour='mon': 'mon' is not a name: this field takes "
                                  "numbers only"),
    ({"day_of_week": 8}, ValueError, "crontab day_of_week=8: 8 is out of range; allowed: 0-7 "
                                     "(0 and 7 are Sunday) or day names sun-sat"),
    ({"day_of_week": "funday"}, ValueError, "crontab day_of_week='funday': 'funday' is not a "
                                            "day name"),
    ({"day_of_week": "mo"}, ValueError, "crontab day_of_week='mo': 'mo' is not a day name"),
    ({"day_of_month": 0}, ValueError, "crontab day_of_month=0: 0 is out of range; allowed: "
                                      "1-31"),
    ({"month_of_year": "13"}, ValueError, "crontab month_of_year='13': 13 is out of range; "
                                          "allowed: 1-12 or month names jan-dec"),
    ({"minute": "*/0"}, ValueError, "crontab minute='*/0': the step in '*/0' must be a whole "
                                    "number above 0"),
    ({"minute": "1-5/"}, ValueError, "crontab minute='1-5/': the step in '1-5/' must be"),
    ({"minute": "*/5x"}, ValueError, "crontab minute='*/5x': the step in '*/5x' must be"),
    ({"minute": "5/15"}, ValueError, "crontab minute='5/15': a step needs '*' or a range before "
                                     "it in '5/15' (write '5-59/15')"),
    ({"minute": "1,,2"}, ValueError, "crontab minute='1,,2': empty part in '1,,2'"),
    ({"minute": ""}, ValueError, "crontab minute='': empty part in ''"),
    ({"minute": "-5"}, ValueError, "crontab minute='-5': cannot read '-5'"),
    ({"minute": "1-"}, ValueError, "crontab minute='1-': cannot read '1-'"),
    ({"minute": set()}, ValueError, "crontab minute=set(): names no minute at all"),
    ({"minute": 1.5}, TypeError, "crontab minute=1.5: expected an int, a string such as "
                                 "'*/15', or a set, list or range of ints, got float"),
    ({"minute": True}, TypeError, "crontab minute=True: expected an int"),
    ({"minute": ["5"]}, TypeError, "crontab minute=['5']: '5' is not an int"),
    ({"hour": [1, 24]}, ValueError, "crontab hour=[1, 24]: 24 is out of range"),
    ({"day_of_month": 30, "month_of_year": 2}, ValueError,
     "crontab day_of_month=30 never occurs in month_of_year=2: pick days that exist"),
    ({"day_of_month": "31", "month_of_year": "apr,jun"}, ValueError,
     "crontab day_of_month='31' never occurs in month_of_year='apr,jun'"),
])
def test_bad_fields_raise_one_line_naming_field_value_and_allowed(
        kwargs: dict, exc: type[Exception], start: str) -> None:
    with pytest.raises(exc) as raised:
        crontab(**kwargs)
    message = str(raised.value)
    assert message.startswith(start), message
    assert "\n" not in message


def test_parse_exception_is_a_value_error_and_the_parser_names_it() -> None:
    assert crontab_parser.ParseException is ParseException
    with pytest.raises(ValueError):
        crontab_parser(60).parse("*/")
    with pytest.raises(ParseException):
        crontab_parser(60).parse("1,")


def test_fields_are_sets_of_ints_and_seven_is_sunday() -> None:
    entry = crontab(minute="*/20", hour=[7, 19], day_of_week=7, day_of_month="1-3",
                    month_of_year=range(1, 4))
    assert (entry.minute, entry.hour, entry.day_of_week, entry.day_of_month,
            entry.month_of_year) == ({0, 20, 40}, {7, 19}, {0}, {1, 2, 3}, {1, 2, 3})
    assert crontab(day_of_week="7") == crontab(day_of_week="sun") == crontab(day_of_week=0)
    assert crontab(minute=None) == crontab(), "None is '*', as in Celery"
    assert crontab(minute=(m for m in (5, 10))).to_dict()["minute"] == "5,10"


def test_from_string_reads_cron_order() -> None:
    entry = crontab.from_string("30 7 * * 1")
    assert entry == crontab(minute=30, hour=7, day_of_week=1)
    theirs = celery_schedules.crontab.from_string("15 7 1 2 3")
    ours = crontab.from_string("15  7 1 2 3")
    assert (ours.minute, ours.hour, ours.day_of_month, ours.month_of_year, ours.day_of_week) == (
        theirs.minute, theirs.hour, theirs.day_of_month, theirs.month_of_year, theirs.day_of_week)
    with pytest.raises(ValueError) as raised:
        crontab.from_string("30 7 * *")
    assert str(raised.value) == ("crontab.from_string('30 7 * *'): expected 5 fields 'minute "
                                 "hour day_of_month month_of_year day_of_week' (e.g. "
                                 "'30 7 * * 1'), got 4")


# ---- descriptions and round trips -------------------------------------------------------------

def test_repr_and_describe() -> None:
    entry = crontab(minute=30, hour=7, day_of_week=1)
    assert repr(entry) == repr(celery_schedules.crontab(minute=30, hour=7, day_of_week=1))
    assert entry.describe() == "crontab 30 7 * * 1 (m h dom mon dow)"
    assert crontab(minute={15, 0}).describe() == "crontab 0,15 * * * * (m h dom mon dow)"
    for every in (10, 0.5, 60, 90, 3600, 86400, timedelta(minutes=5)):
        assert repr(schedule(every)) == repr(celery_schedules.schedule(every))
    assert schedule(10).describe() == "every 10 seconds"
    assert schedule(1).describe() == "every second"
    assert schedule(7.5).describe() == "every 7.5 seconds"
    assert schedule(timedelta(minutes=5)).describe() == "every 5 minutes"
    assert schedule(3600, relative=True).describe() == "every hour (relative)"
    assert schedule(172800).describe() == "every 2 days"
    assert schedule(10).human_seconds == "10.00 seconds" and schedule(10).seconds == 10.0


def _solar_or_none() -> list[Any]:
    try:
        return [solar("sunset", 51.5, -0.13)]
    except MissingDependency:
        return []


@pytest.mark.parametrize("original", [
    crontab(minute=30, hour=7, day_of_week=1),
    crontab("*/15", "9-17", "mon-fri", "*", "jan-mar"),
    crontab(minute={0, 30}, hour=range(8, 12), day_of_month=[1, 15]),
    crontab(),
    schedule(10),
    schedule(timedelta(hours=1), relative=True),
    schedule(0.25),
    *_solar_or_none(),
], ids=repr)
def test_to_dict_round_trips_through_json(original: Any) -> None:
    data = original.to_dict()
    rebuilt = schedule_from_dict(json.loads(json.dumps(data)))
    assert rebuilt == original
    assert type(rebuilt) is type(original)
    assert rebuilt.to_dict() == data
    assert pickle.loads(pickle.dumps(original)) == original


def test_to_dict_layouts() -> None:
    assert crontab(minute=30, hour=7, day_of_week=1).to_dict() == {
        "type": "crontab", "minute": "30", "hour": "7", "day_of_week": "1", "day_of_month": "*",
        "month_of_year": "*"}
    assert schedule(10).to_dict() == {"type": "interval", "seconds": 10.0, "relative": False}
    assert schedule_from_dict({"type": "interval", "seconds": 5}).relative is False
    assert schedule_from_dict({"type": "crontab", "hour": "3"}) == crontab(hour=3)


@pytest.mark.parametrize("data, start", [
    ({"type": "cron", "minute": "1"}, "schedule {'type': 'cron', 'minute': '1'}: 'type' must "
                                      "be one of crontab, interval, solar"),
    ({"seconds": 1}, "schedule {'seconds': 1}: 'type' must be one of"),
    ({"type": "interval"}, "schedule {'type': 'interval'}: a interval schedule takes relative, "
                           "seconds (seconds required)"),
    ({"type": "crontab", "minutes": "1"}, "schedule {'type': 'crontab', 'minutes': '1'}: a "
                                          "crontab schedule takes day_of_month"),
])
def test_schedule_from_dict_rejects_bad_descriptions(data: dict, start: str) -> None:
    with pytest.raises(ValueError) as raised:
        schedule_from_dict(data)
    assert str(raised.value).startswith(start), str(raised.value)


def test_maybe_schedule(apps: dict) -> None:
    app = apps["Europe/London", None][0]
    made = maybe_schedule(30, relative=True, app=app)
    assert isinstance(made, schedule) and made.run_every == timedelta(seconds=30)
    assert made.relative and made.app is app
    assert maybe_schedule(timedelta(minutes=2)) == schedule(120)
    assert maybe_schedule(1.5).seconds == 1.5
    entry = crontab(hour=3)
    assert maybe_schedule(entry, app=app) is entry and entry.app is app
    assert maybe_schedule(entry).app is app, "passing no app keeps the one set"
    assert maybe_schedule(None) is None
    for bad in ("*/5 * * * *", True, object()):
        with pytest.raises(TypeError, match="must be a number of seconds, a timedelta or a "
                                            "schedule"):
            maybe_schedule(bad)
    with pytest.raises(TypeError, match="schedule run_every: expected a number of seconds or "
                                        "a timedelta, got '10'"):
        schedule("10")  # type: ignore[arg-type]


def test_schedstate_is_celerys_pair() -> None:
    state = schedstate(is_due=True, next=5.0)
    assert state == (True, 5.0) and state.is_due and state.next == 5.0


# ---- zone and clock ------------------------------------------------------------------------

def test_zone_and_clock_come_from_the_app(apps: dict) -> None:
    app = apps["America/New_York", None][0]
    entry = crontab(hour=7)
    assert entry.tz == ZoneInfo("UTC"), "no app: UTC"
    before = datetime.now(UTC)
    assert entry.now() >= before and entry.now().utcoffset() == timedelta(0)
    entry.app = app
    assert entry.tz == ZoneInfo("America/New_York")
    now = entry.now()
    assert now.tzinfo is not None and now >= before
    fixed = datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert crontab(nowfun=lambda: fixed, app=app).now() is fixed, "nowfun overrides the clock"


def test_naive_times_are_read_as_utc_as_in_celery(apps: dict) -> None:
    app = apps["Europe/London", None][0]
    now = datetime(2024, 7, 1, 12, 0)
    naive = crontab(minute=0, hour=9, nowfun=lambda: now, app=app)
    aware = crontab(minute=0, hour=9, nowfun=lambda: now.replace(tzinfo=UTC), app=app)
    last = datetime(2024, 7, 1, 7, 30)  # 08:30 in London (BST): the 09:00 run is 30 min later
    assert naive.remaining_estimate(last) == aware.remaining_estimate(last.replace(tzinfo=UTC))
    assert naive.next_run_after(last) == datetime(2024, 7, 1, 9, tzinfo=ZoneInfo("Europe/London"))


class _ConfOnly:
    """An app-like object with settings only (no ``timezone`` attribute)."""

    def __init__(self, **conf: Any) -> None:
        self.conf = {"timezone": None, "enable_utc": True, **conf}


def test_zone_from_settings_when_the_app_has_no_timezone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert app_timezone(_ConfOnly()) == ZoneInfo("UTC")
    assert app_timezone(_ConfOnly(timezone="Europe/London")) == ZoneInfo("Europe/London")
    assert app_timezone(_ConfOnly(timezone=ZoneInfo("Asia/Tokyo"))) == ZoneInfo("Asia/Tokyo")
    monkeypatch.setenv("TZ", "America/New_York")
    assert app_timezone(_ConfOnly(enable_utc=False)) == ZoneInfo("America/New_York")
    assert local_zone() == ZoneInfo("America/New_York")
    with pytest.raises(ImproperlyConfigured) as raised:
        app_timezone(_ConfOnly(timezone="Europe/Lodnon"))
    assert str(raised.value) == ("timezone: unknown time zone 'Europe/Lodnon': use an IANA name "
                                 "such as 'Europe/London', 'America/New_York' or 'UTC'")


def test_starting_deadline_skips_stale_missed_runs(apps: dict) -> None:
    """beat_cron_starting_deadline: a run missed by more than the deadline is not caught up."""
    app = apps["UTC", 90][0]
    now = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    entry = crontab(minute=0, hour=12, nowfun=lambda: now, app=app)
    assert entry.is_due(datetime(2024, 4, 30, 12, tzinfo=UTC)) == (True, 86370.0)
    stale = crontab(minute=0, hour=9, nowfun=lambda: now, app=app)
    assert stale.is_due(datetime(2024, 4, 30, 12, tzinfo=UTC)) == (False, 75570.0)
    assert crontab(minute=0, hour=9, nowfun=lambda: now, app=apps["UTC", None][0]).is_due(
        datetime(2024, 4, 30, 12, tzinfo=UTC)).is_due, "without a deadline it is caught up"
