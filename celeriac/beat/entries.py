"""Periodic-task entries: what ``beat_schedule`` and the stored schedule hold, in one shape.

Layer: beat. An entry is a task to send on a schedule. Entries come from two places: the app's
``beat_schedule`` (and ``app.add_periodic_task``), called *config* entries, and edits made at run
time through ``app.periodic_tasks`` or ``celeriac schedule``, called *runtime* entries. Both are
kept in the result store as records (plain dicts the store's serializer can write), so every beat
fires from the same table and sees an edit without a restart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping

from ..exceptions import ImproperlyConfigured
from ..schedules import BaseSchedule, maybe_schedule, schedule_from_dict

if TYPE_CHECKING:
    from ..app import Celery

#: ``origin`` of an entry defined in ``beat_schedule`` (or ``add_periodic_task``)
CONFIG = "config"
#: ``origin`` of an entry added at run time (``app.periodic_tasks.add``, ``celeriac schedule add``)
RUNTIME = "runtime"
#: the ``schedule`` record of a schedule object that cannot be written down (a user's own class):
#: only a beat whose ``beat_schedule`` holds the object can fire it
CUSTOM = "custom"

#: options an entry may carry, as ``apply_async`` takes them
_KNOWN_OPTIONS = frozenset({
    "queue", "exchange", "routing_key", "priority", "expires", "headers", "countdown", "eta",
    "time_limit", "soft_time_limit", "serializer", "compression", "ignore_result", "link",
    "link_error", "shadow", "retry", "retry_policy", "task_id", "exchange_type",
})


@dataclass(frozen=True)
class Entry:
    """One periodic task: send ``task`` with ``args``/``kwargs``/``options`` on ``schedule``."""

    name: str
    task: str
    schedule: BaseSchedule | None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    origin: str = RUNTIME
    #: a config entry: the fingerprint of its definition, so a beat started with a changed
    #: ``beat_schedule`` replaces it while an unchanged one keeps run-time edits (a pause)
    digest: str = ""
    #: what the stored record says of a schedule this process cannot rebuild (CUSTOM)
    schedule_record: Mapping[str, Any] | None = None
    #: filled in when read with its state: the last time it fired and how often it has
    last_run_at: datetime | None = None
    total_run_count: int = 0

    def describe_schedule(self) -> str:
        if self.schedule is None:
            shown = (self.schedule_record or {}).get("repr", "?")
            return f"{shown} (only a beat with it in beat_schedule fires it)"
        describe = getattr(self.schedule, "describe", None)
        return describe() if callable(describe) else repr(self.schedule)

    def to_record(self) -> dict[str, Any]:
        """The stored form (JSON-safe apart from args and kwargs, which are the task's own)."""
        return {"name": self.name, "task": self.task, "schedule": schedule_record(self.schedule),
                "args": list(self.args), "kwargs": dict(self.kwargs),
                "options": dict(self.options), "enabled": self.enabled, "origin": self.origin,
                "digest": self.digest}

    def with_state(self, last_run_at: datetime | None, total_run_count: int) -> Entry:
        return replace(self, last_run_at=last_run_at, total_run_count=total_run_count)


def schedule_record(schedule: Any) -> dict[str, Any]:
    if schedule is None:
        return {"type": CUSTOM, "repr": "?"}
    to_dict = getattr(schedule, "to_dict", None)
    if callable(to_dict):
        try:
            return dict(to_dict())
        except (TypeError, ValueError, NotImplementedError):
            pass
    return {"type": CUSTOM, "repr": repr(schedule)}


def entry_from_record(record: Mapping[str, Any], app: Celery | None = None) -> Entry:
    """An entry read back from the store (a CUSTOM schedule comes back as None)."""
    spec = record.get("schedule") or {}
    schedule = None
    if spec.get("type") != CUSTOM:
        try:
            schedule = schedule_from_dict(dict(spec), app=app)
        except ImproperlyConfigured as exc:  # solar without its package here: listed, not fired
            spec = {**spec, "repr": f"{spec.get('type')} schedule ({exc})"}
    return Entry(name=str(record["name"]), task=str(record["task"]), schedule=schedule,
                 args=tuple(record.get("args") or ()), kwargs=dict(record.get("kwargs") or {}),
                 options=dict(record.get("options") or {}),
                 enabled=bool(record.get("enabled", True)),
                 origin=str(record.get("origin") or RUNTIME),
                 digest=str(record.get("digest") or ""),
                 schedule_record=None if schedule is not None else dict(spec))


def make_schedule(value: Any, app: Celery | None = None, *, relative: bool = False,
                  where: str = "schedule") -> BaseSchedule:
    """A schedule from what a user may write: seconds, a timedelta or a schedule object."""
    if isinstance(value, bool) or value is None:
        raise ImproperlyConfigured(f"{where}: {value!r} is not a schedule: give seconds, a "
                                   f"timedelta, crontab(...), schedule(...) or solar(...)")
    if isinstance(value, (int, float)) and value <= 0 or \
            isinstance(value, timedelta) and value.total_seconds() <= 0:
        raise ImproperlyConfigured(f"{where}: an interval must be more than 0 seconds, "
                                   f"not {value!r}")
    if not isinstance(value, (int, float, timedelta)) and not callable(
            getattr(value, "is_due", None)):
        raise ImproperlyConfigured(f"{where}: {value!r} is not a schedule: give seconds, a "
                                   f"timedelta, crontab(...), schedule(...) or solar(...)")
    schedule = maybe_schedule(value, relative=relative, app=app)
    if app is not None and hasattr(schedule, "app"):
        try:
            schedule.app = app
        except AttributeError:  # a user's schedule without a settable app
            pass
    return schedule


def check_options(options: Any, where: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"{where}: options must be a dict of apply_async options "
                                   f"(queue, priority, expires...), not {options!r}")
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        known = ", ".join(sorted(_KNOWN_OPTIONS))
        raise ImproperlyConfigured(f"{where}: unknown option(s) {', '.join(unknown)}: entries "
                                   f"take apply_async's options ({known})")
    return dict(options)


def config_entries(app: Celery) -> dict[str, Entry]:
    """The entries of ``beat_schedule``, checked: a bad one is one line naming it and the fix."""
    table = app.conf.get("beat_schedule") or {}
    if not isinstance(table, Mapping):
        raise ImproperlyConfigured(f"beat_schedule must be a dict of name -> entry, not "
                                   f"{type(table).__name__}")
    entries = {}
    for name, spec in table.items():
        where = f"beat_schedule[{name!r}]"
        if not isinstance(spec, Mapping):
            raise ImproperlyConfigured(f"{where} must be a dict with 'task' and 'schedule', not "
                                       f"{spec!r}")
        task = spec.get("task")
        if not isinstance(task, str) or not task:
            raise ImproperlyConfigured(f"{where} has no 'task': give the task's name, e.g. "
                                       f"'task': 'proj.tasks.add'")
        if "schedule" not in spec:
            raise ImproperlyConfigured(f"{where} has no 'schedule': give seconds, a timedelta "
                                       f"or crontab(...)")
        unknown = sorted(set(spec) - {"task", "schedule", "args", "kwargs", "options",
                                      "relative"})
        if unknown:
            raise ImproperlyConfigured(f"{where} has unknown key(s) {', '.join(unknown)}: an "
                                       f"entry has task, schedule, args, kwargs, options, "
                                       f"relative")
        schedule = make_schedule(spec["schedule"], app, relative=bool(spec.get("relative")),
                                 where=where)
        args = spec.get("args") or ()
        kwargs = spec.get("kwargs") or {}
        if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
            raise ImproperlyConfigured(f"{where}: args must be a list or tuple, not {args!r}")
        if not isinstance(kwargs, Mapping):
            raise ImproperlyConfigured(f"{where}: kwargs must be a dict, not {kwargs!r}")
        entry = Entry(name=str(name), task=task, schedule=schedule, args=tuple(args),
                      kwargs=dict(kwargs), options=check_options(spec.get("options"), where),
                      origin=CONFIG)
        entries[entry.name] = replace(entry, digest=digest(entry))
    return entries


def digest(entry: Entry) -> str:
    """A fingerprint of what an entry does (not of its run-time state or switches)."""
    text = json.dumps({"task": entry.task, "schedule": schedule_record(entry.schedule),
                       "args": list(entry.args), "kwargs": dict(entry.kwargs),
                       "options": dict(entry.options)}, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
