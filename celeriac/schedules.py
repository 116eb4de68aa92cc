"""When periodic tasks run: ``crontab``, ``schedule`` (a fixed interval) and ``solar`` (sunrise,
sunset, dusk...), with Celery 5's names and semantics so a ``beat_schedule`` written for Celery
fires at the same instants here.

A schedule answers two questions for the beat: ``remaining_estimate(last_run_at)`` (how long until
the next run after ``last_run_at``) and ``is_due(last_run_at)`` (run now? and how many seconds
until the beat should look again). Both read the clock through ``now()``: ``nowfun`` when given
(tests, simulated clocks), else the app's clock.

Times, as in Celery:

- The schedule's zone (``tz``) is the app's: ``timezone`` when set, else UTC with ``enable_utc``
  (the default), else the system's zone. A crontab's fields are wall-clock times in that zone.
- A naive datetime (``last_run_at``, or what ``nowfun`` returns) is read as UTC, then converted
  to the schedule's zone; an aware datetime is used as it is. Intervals are elapsed time: every
  difference is taken in UTC.
- Across DST changes a crontab fire time is a wall-clock time in the zone, as Python's aware
  datetimes place it: one that falls in the spring-forward gap runs at the instant the wall clock
  would have shown it with the old offset (02:30 in New York on a spring-forward day runs at
  03:30 EDT), and a wall time the clock passes twice (falling back) runs at its first pass.

Deliberate differences from Celery, all on input Celery accepts by accident: a crontab field must
parse completely (Celery ignores trailing characters after a step, ``'*/5x'``), day names are
read only in ``day_of_week`` and month names only in ``month_of_year`` (Celery reads ``'mon'`` as 1
in any field), a name must be a prefix of at least three letters of the English name (``'tues'``,
``'sept'``), and ``day_of_week`` accepts 7 as Sunday as cron does (Celery rejects 7). And one
on a Celery bug: with ``last_run_at`` in the second pass of an hour repeated by a clock set back,
Celery's crontab is due at every check until the hour ends (a run per beat tick); here the next
run is the first match after the repeated hour, as when the beat runs through it.
"""

from __future__ import annotations

import bisect
import calendar
import numbers
import os
import re
from collections import namedtuple
from datetime import date, datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from typing import Any, Callable, Collection, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import ImproperlyConfigured
from .utils.extras import require

__all__ = ["BaseSchedule", "ParseException", "crontab", "crontab_parser", "maybe_schedule",
           "schedstate", "schedule", "schedule_from_dict", "solar"]

#: What ``is_due`` returns, as in Celery: run now?, and seconds until the next check.
schedstate = namedtuple("schedstate", ("is_due", "next"))

NowFun = Callable[[], datetime]
Cronspec = int | str | Iterable[int] | None

UTC = ZoneInfo("UTC")
_DAY = timedelta(days=1)


class ParseException(ValueError):
    """A crontab field that cannot be read (Celery's name; a ``ValueError`` here, so one
    ``except ValueError`` catches every bad field)."""


# ---- time zones and aware datetimes ------------------------------------------------------------

def _is_naive(dt: datetime) -> bool:
    return dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None


def _exists(dt: datetime) -> bool:
    """False for a wall time skipped by a DST change (02:30 on a spring-forward day)."""
    zone = dt.tzinfo
    wall = dt.replace(tzinfo=None)
    round_trip = wall.replace(tzinfo=zone).astimezone(dt_timezone.utc).astimezone(zone)
    return round_trip.replace(tzinfo=None) == wall


def _is_ambiguous(dt: datetime) -> bool:
    """True when the two folds of this wall time differ (a repeated hour, or a skipped one)."""
    first, second = dt.replace(fold=0), dt.replace(fold=1)
    return first.utcoffset() != second.utcoffset() or first.dst() != second.dst()


def _past_gap(dt: datetime) -> datetime:
    """A skipped wall time moved forward by the size of the gap (02:30 -> 03:30), unchanged
    otherwise."""
    if _exists(dt):
        return dt
    after, before = (dt + _DAY).utcoffset(), (dt - _DAY).utcoffset()
    assert after is not None and before is not None
    return dt + (after - before)


def _wall_time_in(dt: datetime, zone: tzinfo) -> datetime:
    """A naive wall time read in ``zone``: a skipped time moves past the gap, a repeated one
    takes its first occurrence (``fold=0``)."""
    aware = dt.replace(tzinfo=zone)
    if _is_ambiguous(aware):
        return _past_gap(aware) if not _exists(aware) else aware.replace(fold=0)
    return aware


def _aware(dt: datetime, zone: tzinfo, naive_as_utc: bool = True) -> datetime:
    """Celery's ``maybe_make_aware``: an aware datetime as it is; a naive one read as UTC and
    converted to ``zone`` (or, with ``naive_as_utc=False``, read as a wall time in ``zone``)."""
    if not _is_naive(dt):
        return dt
    if naive_as_utc:
        return dt.replace(tzinfo=UTC).astimezone(zone)
    return _wall_time_in(dt, zone)


def local_zone() -> tzinfo:
    """The system's zone, for ``enable_utc=False`` without ``timezone`` (Celery asks tzlocal)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
        with open("/etc/localtime", "rb") as tzfile:
            return ZoneInfo.from_file(tzfile, key="localtime")
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    raise ImproperlyConfigured(
        "enable_utc=False and no timezone set, but the system's time zone cannot be read "
        "(no TZ variable, no /etc/localtime): set timezone to a name such as 'Europe/London'")


def zone_named(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(
            f"timezone: unknown time zone {name!r}: use an IANA name such as 'Europe/London', "
            "'America/New_York' or 'UTC'") from None


def app_timezone(app: Any) -> tzinfo:
    """The zone an app's schedules run in, as Celery's ``app.timezone``: ``timezone`` when set,
    else UTC with ``enable_utc``, else the system's zone."""
    if app is None:
        return UTC
    own = getattr(app, "timezone", None)
    if isinstance(own, tzinfo):
        return own
    conf = app.conf
    configured = conf.get("timezone")
    if isinstance(configured, tzinfo):
        return configured
    if configured:
        return zone_named(str(configured))
    return UTC if conf.get("enable_utc", True) else local_zone()


# ---- the base class ----------------------------------------------------------------------------

class BaseSchedule:
    """What every schedule shares: the clock (``nowfun`` or the app's) and the zone (the app's).

    The beat sets ``app`` on each schedule it loads, so ``timezone``/``enable_utc`` apply to
    schedules built without one (in ``beat_schedule``, before any app exists).
    """

    def __init__(self, nowfun: NowFun | None = None, app: Any = None) -> None:
        self.nowfun = nowfun
        self._app = app

    @property
    def app(self) -> Any:
        return self._app

    @app.setter
    def app(self, app: Any) -> None:
        self._app = app

    @property
    def tz(self) -> tzinfo:
        return app_timezone(self._app)

    def now(self) -> datetime:
        """``nowfun()`` when given, else the app's clock, else an aware UTC now."""
        if self.nowfun is not None:
            return self.nowfun()
        clock = getattr(self._app, "now", None)
        if clock is not None:
            now: datetime = clock()
            return now
        return datetime.now(dt_timezone.utc)

    def maybe_make_aware(self, dt: datetime, naive_as_utc: bool = True) -> datetime:
        """``dt`` aware: as it is, or (naive) read as UTC and converted to ``tz``."""
        return _aware(dt, self.tz, naive_as_utc)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise NotImplementedError

    def is_due(self, last_run_at: datetime) -> schedstate:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseSchedule):
            return other.nowfun == self.nowfun
        return NotImplemented


# ---- schedule: a fixed interval ----------------------------------------------------------------

def _human_seconds(seconds: float) -> str:
    """Celery's ``humanize_seconds``, for the repr: ``'10.00 seconds'``, ``'1.00 minute'``."""
    rounded = float(format(float(seconds), ".2f"))
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0)):
        if rounded >= size:
            amount = rounded / size
            return f"{amount:.2f} {unit}{'' if amount == 1 else 's'}"
    return "now"


def _rounded_to(dt: datetime, interval: timedelta) -> datetime:
    """``dt`` cut down to the interval's unit: the day, hour or minute it starts (Celery's
    ``delta_resolution``); below a minute, unchanged."""
    seconds = max(interval.total_seconds(), 0)
    if seconds >= 86400:
        return datetime(dt.year, dt.month, dt.day, tzinfo=dt.tzinfo, fold=dt.fold)
    if seconds >= 3600:
        return datetime(dt.year, dt.month, dt.day, dt.hour, tzinfo=dt.tzinfo, fold=dt.fold)
    if seconds >= 60:
        return datetime(dt.year, dt.month, dt.day, dt.hour, dt.minute, tzinfo=dt.tzinfo,
                        fold=dt.fold)
    return dt


def _boundary_instants(local: datetime, interval: timedelta) -> list[datetime]:
    """The UTC instants of ``local`` rounded to the interval's unit: one per fold (two for a
    repeated wall time), a skipped one moved past its gap."""
    rounded = _rounded_to(local, interval).replace(microsecond=0)
    instants = []
    for fold in (0, 1):
        candidate = rounded.replace(fold=fold)
        if not _exists(candidate):
            moved = _past_gap(candidate)
            if moved > candidate:
                candidate = moved
        instants.append(candidate.astimezone(dt_timezone.utc))
    return instants


def _relative_deadline(start: datetime, end: datetime, interval: timedelta) -> datetime:
    """The run after ``start`` of a ``relative`` interval, as Celery 5.7 places it: the last
    rounded wall-clock boundary at or before ``start + interval``, never at or before ``start``;
    intervals of a day or more step to the next local midnight."""
    start_utc = start.astimezone(dt_timezone.utc)
    candidates = _boundary_instants(end, interval)
    if interval >= _DAY:
        return min((c for c in candidates if c > start_utc),
                   default=end.astimezone(dt_timezone.utc))
    end_utc = start_utc + interval
    not_after = [c for c in candidates if c <= end_utc]
    chosen = max(not_after) if not_after else min(candidates)
    if interval >= timedelta(minutes=1) and chosen <= start_utc:
        # a clock set back by part of an hour can round to before start: look at the next
        # boundary too, and at the wall-clock sum, both occurrences of each
        unit = timedelta(hours=1) if interval >= timedelta(hours=1) else timedelta(minutes=1)
        candidates += _boundary_instants(end + unit, interval)
        candidates += _boundary_instants(start + interval, interval)
        later = [c for c in candidates if c > start_utc]
        in_time = [c for c in later if c <= end_utc]
        chosen = max(in_time) if in_time else min(later, default=end_utc)
    return chosen


def _as_interval(run_every: Any) -> timedelta:
    if isinstance(run_every, timedelta):
        return run_every
    if isinstance(run_every, numbers.Real) and not isinstance(run_every, bool):
        return timedelta(seconds=float(run_every))
    raise TypeError(f"schedule run_every: expected a number of seconds or a timedelta, "
                    f"got {run_every!r} ({type(run_every).__name__})")


class schedule(BaseSchedule):  # lower case: Celery's name
    """Every ``run_every`` (seconds, or a timedelta) after the last run.

    With ``relative=True`` runs snap to the clock: an hourly schedule runs on the hour, a daily
    one at midnight in the schedule's zone.
    """

    def __init__(self, run_every: float | timedelta, relative: bool = False,
                 nowfun: NowFun | None = None, app: Any = None) -> None:
        self.run_every = _as_interval(run_every)
        self.relative = bool(relative)
        super().__init__(nowfun=nowfun, app=app)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0)

    @property
    def human_seconds(self) -> str:
        return _human_seconds(self.seconds)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        start = self.maybe_make_aware(last_run_at)
        now = self.maybe_make_aware(self.now())
        interval = self.run_every
        if self.relative and interval >= _DAY:
            end = start + interval  # calendar days: the same wall time, whatever DST did
        else:
            end = (start.astimezone(dt_timezone.utc) + interval).astimezone(start.tzinfo)
        if self.relative:
            end = _relative_deadline(start, end, interval)
        return end.astimezone(dt_timezone.utc) - now.astimezone(dt_timezone.utc)

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when no time remains; ``next`` is then the interval (for ``relative``, the time
        to the next clock boundary), else the time remaining."""
        last_run_at = self.maybe_make_aware(last_run_at)
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0)
        if remaining:
            return schedstate(is_due=False, next=remaining)
        following = self.seconds
        if self.relative:
            now = self.maybe_make_aware(self.now()).astimezone(last_run_at.tzinfo)
            to_boundary = self.remaining_estimate(now).total_seconds()
            if to_boundary > 0:
                following = to_boundary
        return schedstate(is_due=True, next=following)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "interval", "seconds": self.run_every.total_seconds(),
                "relative": self.relative}

    def describe(self) -> str:
        seconds = self.run_every.total_seconds()
        text = f"every {seconds:g} seconds"
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
            if seconds and seconds % size == 0:
                count = int(seconds // size)
                text = f"every {unit}" if count == 1 else f"every {count} {unit}s"
                break
        return text + (" (relative)" if self.relative else "")

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        return self.run_every == other

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


# ---- crontab -----------------------------------------------------------------------------------

_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
# the longest month each can be (February: 29), for the "never occurs" check
_LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31,
                  11: 30, 12: 31}
_TOKEN = r"(?:\d+|[a-z]+)"
_PART = re.compile(rf"(?:(?P<star>\*)|(?P<first>{_TOKEN})(?:-(?P<last>{_TOKEN}))?)"
                   r"(?:/(?P<step>[^/]*))?")


class crontab_parser:  # lower case: Celery's name
    """Expands one crontab field (``'*/15'``, ``'1-5'``, ``'mon-fri'``, ``'0,30'``) to the set
    of values it names, in ``min_ .. min_ + max_ - 1`` (Celery's arguments: ``max_`` is the
    number of values).

    A range whose end is before its start wraps around (``'fri-mon'`` is Friday to Monday); a
    step keeps every n-th value of the star or range it follows. Day names are read for the
    day-of-week field (``max_=7``), month names for the month field (``max_=12, min_=1``).
    """

    ParseException = ParseException

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_ = max_
        self.min_ = min_
        self.highest = min_ + max_ - 1
        self.names: tuple[str, ...] = ()
        self.name_base = 0
        self.sunday_is_7 = (max_, min_) == (7, 0)
        if self.sunday_is_7:
            self.names = _DAY_NAMES
        elif (max_, min_) == (12, 1):
            self.names, self.name_base = _MONTH_NAMES, 1

    def allowed(self) -> str:
        """What this field takes, for error messages."""
        top = 7 if self.sunday_is_7 else self.highest
        text = f"{self.min_}-{top}"
        if self.sunday_is_7:
            text += " (0 and 7 are Sunday) or day names sun-sat"
        elif self.names:
            text += " or month names jan-dec"
        return text + ", '*', ranges 'a-b', steps '*/n' or 'a-b/n', lists 'a,b'"

    def parse(self, spec: str) -> set[int]:
        values: set[int] = set()
        for part in spec.split(","):
            part = part.strip().lower()
            if not part:
                raise ParseException(f"empty part in {spec!r}")
            values.update(self._expand(part))
        return values

    def _expand(self, part: str) -> list[int]:
        match = _PART.fullmatch(part)
        if match is None:
            raise ParseException(f"cannot read {part!r}")
        if match["star"]:
            values = list(range(self.min_, self.highest + 1))
        else:
            first = self._number(match["first"])
            if self.sunday_is_7 and first == 7:
                first = 0
            last = first if match["last"] is None else self._number(match["last"])
            if last < first:  # wraps around: fri-mon
                values = list(range(first, self.highest + 1)) + list(range(self.min_, last + 1))
            else:
                values = list(range(first, last + 1))
        step = match["step"]
        if step is not None:
            if match["last"] is None and not match["star"]:
                raise ParseException(f"a step needs '*' or a range before it in {part!r} "
                                     f"(write '{match['first']}-{self.highest}/{step}')")
            if not step.isdigit() or int(step) == 0:
                raise ParseException(f"the step in {part!r} must be a whole number above 0")
            values = values[::int(step)]
        return [0 if self.sunday_is_7 and value == 7 else value for value in values]

    def _number(self, token: str) -> int:
        if token.isdigit():
            value = int(token)
        else:
            value = self._name(token)
        top = 7 if self.sunday_is_7 else self.highest
        if not self.min_ <= value <= top:
            raise ParseException(f"{value} is out of range")
        return value

    def _name(self, token: str) -> int:
        if len(token) >= 3:
            for index, name in enumerate(self.names):
                if name.startswith(token):
                    return index + self.name_base
        kind = ("a day name" if self.sunday_is_7 else
                "a month name" if self.names else "a name: this field takes numbers only")
        raise ParseException(f"{token!r} is not {kind}")


_FIELDS = (  # (name, max_, min_)
    ("minute", 60, 0), ("hour", 24, 0), ("day_of_week", 7, 0), ("day_of_month", 31, 1),
    ("month_of_year", 12, 1))


def _expand_field(field: str, spec: Cronspec, max_: int, min_: int) -> set[int]:
    """One crontab argument as the set of values it names, or a one-line ValueError/TypeError
    naming the field, the value and what the field allows."""
    parser = crontab_parser(max_, min_)
    shown = f"crontab {field}={spec!r}"
    if spec is None:
        spec = "*"
    if isinstance(spec, str):
        try:
            values = parser.parse(spec)
        except ParseException as exc:
            raise ValueError(f"{shown}: {exc}; allowed: {parser.allowed()}") from None
    elif isinstance(spec, bool) or not isinstance(spec, (int, Iterable)):
        raise TypeError(f"{shown}: expected an int, a string such as '*/15', or a set, list "
                        f"or range of ints, got {type(spec).__name__}")
    else:
        items: list[int] = []
        for item in [spec] if isinstance(spec, int) else list(spec):
            if isinstance(item, bool) or not isinstance(item, int):
                raise TypeError(f"{shown}: {item!r} is not an int; allowed: {parser.allowed()}")
            items.append(item)
            top = 7 if parser.sunday_is_7 else parser.highest
            if not min_ <= item <= top:
                raise ValueError(f"{shown}: {item} is out of range; allowed: "
                                 f"{parser.allowed()}")
        values = {0 if parser.sunday_is_7 and item == 7 else item for item in items}
    if not values:
        raise ValueError(f"{shown}: names no {field.replace('_', ' ')} at all; "
                         f"allowed: {parser.allowed()}")
    return values


def _spec_text(spec: Cronspec) -> str:
    """A field as crontab text, for ``to_dict`` and ``describe``: strings as given, ints and
    collections as a sorted list."""
    if spec is None:
        return "*"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int):
        return str(spec)
    return ",".join(str(value) for value in sorted(spec))


class crontab(BaseSchedule):  # lower case: Celery's name
    """Runs at the wall-clock times its fields name, in the schedule's zone, like a
    ``crontab(5)`` line: ``crontab(minute=30, hour=7, day_of_week=1)`` is Mondays at 07:30.

    Each field takes an int, a string (``'*'``, ``'*/15'``, ``'1-5'``, ``'1,3,5'``, ``'0-59/10'``,
    day names ``'mon-fri'``, month names ``'jan-mar'``) or a set/list/range of ints. A day runs
    only when it is in all three day fields (``day_of_week``, ``day_of_month``,
    ``month_of_year``): ``day_of_week=1, day_of_month='1-7'`` is the first Monday of the month.
    ``day_of_week`` counts from Sunday = 0 (7 is Sunday too).
    """

    def __init__(self, minute: Cronspec = "*", hour: Cronspec = "*", day_of_week: Cronspec = "*",
                 day_of_month: Cronspec = "*", month_of_year: Cronspec = "*",
                 nowfun: NowFun | None = None, app: Any = None) -> None:
        given = {"minute": minute, "hour": hour, "day_of_week": day_of_week,
                 "day_of_month": day_of_month, "month_of_year": month_of_year}
        # the fields as given, for repr and to_dict (a one-shot iterator kept as a list)
        self._orig: dict[str, Cronspec] = {
            name: "*" if value is None else
            list(value) if isinstance(value, Iterable) and not isinstance(value, Collection)
            else value
            for name, value in given.items()}
        given = dict(self._orig)
        expanded = {name: _expand_field(name, given[name], max_, min_)
                    for name, max_, min_ in _FIELDS}
        self.minute: set[int] = expanded["minute"]
        self.hour: set[int] = expanded["hour"]
        self.day_of_week: set[int] = expanded["day_of_week"]
        self.day_of_month: set[int] = expanded["day_of_month"]
        self.month_of_year: set[int] = expanded["month_of_year"]
        if not any(day <= _LONGEST_MONTH[month]
                   for month in self.month_of_year for day in self.day_of_month):
            raise ValueError(
                f"crontab day_of_month={day_of_month!r} never occurs in "
                f"month_of_year={month_of_year!r}: pick days that exist in those months")
        self._days = sorted(self.day_of_month)
        self._months = sorted(self.month_of_year)
        super().__init__(nowfun=nowfun, app=app)

    @classmethod
    def from_string(cls, line: str, nowfun: NowFun | None = None, app: Any = None) -> crontab:
        """A crontab from the five fields of a cron line: ``'30 7 * * 1'`` (minute, hour,
        day of month, month, day of week)."""
        fields = line.split()
        if len(fields) != 5:
            raise ValueError(
                f"crontab.from_string({line!r}): expected 5 fields 'minute hour day_of_month "
                f"month_of_year day_of_week' (e.g. '30 7 * * 1'), got {len(fields)}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, nowfun=nowfun,
                   app=app)

    def _next_day(self, last: datetime, hour: int, minute: int) -> datetime:
        """The first run on a day after ``last``'s: the next date in all three day fields, at
        ``hour:minute`` on the wall clock in ``last``'s zone."""
        year, month, after_day = last.year, last.month, last.day
        for _ in range(400 * 12):
            if month in self.month_of_year:
                month_length = calendar.monthrange(year, month)[1]
                start = bisect.bisect_right(self._days, after_day)
                for day in self._days[start:]:
                    if day > month_length:
                        break
                    if date(year, month, day).isoweekday() % 7 in self.day_of_week:
                        return last.replace(year=year, month=month, day=day, hour=hour,
                                            minute=minute, second=0, microsecond=0)
            year, month, after_day = (year + 1, 1, 0) if month == 12 else (year, month + 1, 0)
        raise RuntimeError(f"{self!r} has no run in the 400 years after {last.isoformat()}")

    def _next_wall_time(self, last: datetime) -> datetime:
        """The first wall-clock time after ``last``'s that the fields name (``fold=0``: the
        first occurrence of a repeated time, the old offset for a skipped one, as Celery's
        datetime arithmetic leaves it)."""
        runs_that_day = (last.month in self.month_of_year and last.day in self.day_of_month
                         and last.isoweekday() % 7 in self.day_of_week)
        if runs_that_day and last.hour in self.hour and last.minute < max(self.minute):
            later = min(m for m in self.minute if m > last.minute)
            run = last.replace(minute=later, second=0, microsecond=0)
        elif runs_that_day and last.hour < max(self.hour):
            later = min(h for h in self.hour if h > last.hour)
            run = last.replace(hour=later, minute=min(self.minute), second=0, microsecond=0)
        else:
            run = self._next_day(last, min(self.hour), min(self.minute))
        return run.replace(fold=0)

    def next_run_after(self, last_run_at: datetime) -> datetime:
        """The first run after ``last_run_at``, aware, in the schedule's zone."""
        last = self.maybe_make_aware(last_run_at).astimezone(self.tz)
        last_utc = last.astimezone(dt_timezone.utc)
        run = self._next_wall_time(last)
        # Only from the second pass of an hour repeated by a clock set back can the next match
        # be behind ``last_run_at`` (its first pass). Celery calls such a run due at every
        # check until the repeat ends (a fire per beat tick); here the repeated wall times are
        # skipped, as they are when the beat runs through the night.
        for _ in range(24 * 60):
            if run.astimezone(dt_timezone.utc) > last_utc:
                return run
            run = self._next_wall_time(run)
        raise RuntimeError(f"{self!r}: no run after {last.isoformat()}")

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first run after ``last_run_at`` (negative when that run is
        past)."""
        run = self.next_run_after(last_run_at)
        now = self.maybe_make_aware(self.now())
        return run.astimezone(dt_timezone.utc) - now.astimezone(dt_timezone.utc)

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when the first run after ``last_run_at`` has come; ``next`` is the time until the
        run after now. With ``beat_cron_starting_deadline`` (seconds) a missed run older than the
        deadline is skipped (not due), as in Celery."""
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        due = remaining <= 0
        skipped = False
        deadline = self._starting_deadline()
        if deadline is not None and remaining < 0:
            now = self.maybe_make_aware(self.now())
            since = (now.astimezone(dt_timezone.utc)
                     - timedelta(seconds=deadline, microseconds=1)).astimezone(now.tzinfo)
            if self.remaining_estimate(since).total_seconds() > 0:
                skipped, due = True, False
        if due or skipped:
            remaining = self.remaining_estimate(self.now()).total_seconds()
        return schedstate(due, max(remaining, 0))

    def _starting_deadline(self) -> float | None:
        if self._app is None:
            return None
        value = self._app.conf.get("beat_cron_starting_deadline")
        return None if value is None else float(value)

    def fields_text(self) -> tuple[str, str, str, str, str]:
        """The fields as crontab text in cron's order: minute, hour, day of month, month, day
        of week."""
        return (_spec_text(self._orig["minute"]), _spec_text(self._orig["hour"]),
                _spec_text(self._orig["day_of_month"]), _spec_text(self._orig["month_of_year"]),
                _spec_text(self._orig["day_of_week"]))

    def to_dict(self) -> dict[str, Any]:
        minute, hour, day_of_month, month_of_year, day_of_week = self.fields_text()
        return {"type": "crontab", "minute": minute, "hour": hour, "day_of_week": day_of_week,
                "day_of_month": day_of_month, "month_of_year": month_of_year}

    def describe(self) -> str:
        return f"crontab {' '.join(self.fields_text())} (m h dom mon dow)"

    def __repr__(self) -> str:
        o = self._orig
        return (f"<crontab: {o['minute']} {o['hour']} {o['day_of_month']} {o['month_of_year']} "
                f"{o['day_of_week']} (m/h/dM/MY/d)>")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return (other.month_of_year == self.month_of_year
                    and other.day_of_month == self.day_of_month
                    and other.day_of_week == self.day_of_week
                    and other.hour == self.hour and other.minute == self.minute
                    and super().__eq__(other))
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        o = self._orig
        return self.__class__, (o["minute"], o["hour"], o["day_of_week"], o["day_of_month"],
                                o["month_of_year"], self.nowfun)


# ---- solar -------------------------------------------------------------------------------------

# event -> (horizon, observer method, measured at the sun's centre?), Celery's values
_SOLAR_EVENTS: dict[str, tuple[str, str, bool]] = {
    "dawn_astronomical": ("-18", "next_rising", True),
    "dawn_nautical": ("-12", "next_rising", True),
    "dawn_civil": ("-6", "next_rising", True),
    "sunrise": ("-0:34", "next_rising", False),
    "solar_noon": ("0", "next_transit", False),
    "sunset": ("-0:34", "next_setting", False),
    "dusk_civil": ("-6", "next_setting", True),
    "dusk_nautical": ("-12", "next_setting", True),
    "dusk_astronomical": ("-18", "next_setting", True),
}


def _coordinate(name: str, value: Any, limit: int) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"solar {name}={value!r}: expected a number of degrees")
    degrees = float(value)
    if not -limit <= degrees <= limit:
        raise ValueError(f"solar {name}={value!r} is out of range: it must be between "
                         f"-{limit} and {limit} degrees")
    return degrees


class solar(BaseSchedule):  # lower case: Celery's name
    """Runs at a solar event seen from ``lat``, ``lon`` (degrees; north and east positive):
    ``sunrise``, ``sunset``, ``solar_noon``, and dawn/dusk (``civil``, ``nautical``,
    ``astronomical``). Positions come from the ``ephem`` package (``celeriac[solar]``), as in
    Celery, with Celery's horizons, so both fire at the same instants.

    Where an event does not happen for a while (no sunrise in the polar night) the search goes
    on day by day for up to ``max_search_days``; past that, the beat checks again then.
    """

    #: days searched ahead for an event that does not happen every day
    max_search_days = 366

    def __init__(self, event: str, lat: float, lon: float, nowfun: NowFun | None = None,
                 app: Any = None) -> None:
        if event not in _SOLAR_EVENTS:
            raise ValueError(f"solar event {event!r} is not one of: "
                             f"{', '.join(sorted(_SOLAR_EVENTS))}")
        self.event = event
        self.lat = lat
        self.lon = lon
        _coordinate("lat", lat, 90)
        _coordinate("lon", lon, 180)
        self.ephem: Any = require("ephem", "solar", "solar schedules")
        horizon, self.method, self.use_center = _SOLAR_EVENTS[event]
        observer = self.ephem.Observer()
        observer.lat, observer.lon = str(lat), str(lon)
        observer.elev = 0
        observer.horizon = horizon
        observer.pressure = 0
        self.cal = observer
        super().__init__(nowfun=nowfun, app=app)

    def _next_event(self, start: Any) -> Any:
        """The first event after ``start`` (an ``ephem.Date``), skipping days without one."""
        sun = self.ephem.Sun()
        options = {"use_center": True} if self.use_center else {}
        for _ in range(self.max_search_days):
            try:
                return getattr(self.cal, self.method)(sun, start=start, **options)
            except self.ephem.CircumpolarError:
                start = self.cal.next_antitransit(sun, start=start)
        return start

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first event after ``last_run_at``."""
        last = self.maybe_make_aware(last_run_at)
        self.cal.date = last
        event: datetime = self._next_event(self.ephem.Date(last)).datetime()
        event_utc = event.replace(tzinfo=UTC)
        now = self.maybe_make_aware(self.now())
        return event_utc - now.astimezone(dt_timezone.utc)

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0)
        if remaining:
            return schedstate(False, remaining)
        return schedstate(True, max(self.remaining_estimate(self.now()).total_seconds(), 0))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "solar", "event": self.event, "lat": self.lat, "lon": self.lon}

    def describe(self) -> str:
        return f"solar {self.event} at latitude {self.lat}, longitude {self.lon}"

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, solar):
            return (other.event, other.lat, other.lon) == (self.event, self.lat, self.lon)
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.event, self.lat, self.lon)


# ---- building schedules ------------------------------------------------------------------------

def maybe_schedule(s: Any, relative: bool = False, app: Any = None) -> Any:
    """A ``beat_schedule`` entry's ``schedule`` value as a schedule: a number (seconds) or a
    timedelta becomes ``schedule``; a schedule object passes through, given ``app`` when one is
    passed; None stays None."""
    if s is None:
        return None
    if isinstance(s, timedelta) or (isinstance(s, numbers.Real) and not isinstance(s, bool)):
        return schedule(_as_interval(s), relative, app=app)
    if not callable(getattr(s, "is_due", None)):
        raise TypeError(f"a periodic task's schedule must be a number of seconds, a timedelta "
                        f"or a schedule (crontab, schedule, solar), got {s!r}")
    if app is not None:
        s.app = app
    return s


_DICT_KEYS = {
    "interval": ({"seconds"}, {"relative"}),
    "crontab": (set(), {"minute", "hour", "day_of_week", "day_of_month", "month_of_year"}),
    "solar": ({"event", "lat", "lon"}, set()),
}


def schedule_from_dict(data: Mapping[str, Any], app: Any = None) -> BaseSchedule:
    """Rebuild the schedule ``to_dict()`` described (as stored by the beat, or sent by
    ``celeriac schedule``)."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if kind not in _DICT_KEYS:
        raise ValueError(f"schedule {data!r}: 'type' must be one of "
                         f"{', '.join(sorted(_DICT_KEYS))}")
    required, optional = _DICT_KEYS[kind]
    keys = set(data) - {"type"}
    if required - keys or keys - required - optional:
        raise ValueError(f"schedule {data!r}: a {kind} schedule takes "
                         f"{', '.join(sorted(required | optional))}"
                         f" ({', '.join(sorted(required)) or 'none'} required)")
    fields = {key: data[key] for key in keys}
    if kind == "interval":
        return schedule(fields["seconds"], bool(fields.get("relative", False)), app=app)
    if kind == "crontab":
        return crontab(**fields, app=app)
    return solar(fields["event"], fields["lat"], fields["lon"], app=app)
