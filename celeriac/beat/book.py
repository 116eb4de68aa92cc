"""The schedule every beat fires from, kept in the result store: ``app.periodic_tasks``.

Layer: beat. One record holds every entry (``ENTRIES_KEY``); each edit is a read, change and
write under a short lock in the same store, so two editors never lose each other's change. Beats
re-read the record about once a second, which is how an edit reaches them without a restart. Each
entry's run state (when it last fired, how often) has a key of its own, written by the beat that
fires it, so an edit never races a run.

The store must hold locks (SQLite or Redis; ``rpc://`` keeps no state): the same requirement as
``app.lock()``.
"""

from __future__ import annotations

import builtins
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ..exceptions import ImproperlyConfigured
from ..locks import Lock, lock_store
from .entries import (
    CONFIG,
    CUSTOM,
    RUNTIME,
    Entry,
    check_options,
    entry_from_record,
    make_schedule,
)

if TYPE_CHECKING:
    from ..app import Celery
    from ..backends.base import Locks, ResultBackend

#: the one record holding every entry: name -> entry record
ENTRIES_KEY = "celeriac-beat-entries"
#: + entry name: ``{"last_run_at": unix time, "total_run_count": n}``
STATE_PREFIX = "celeriac-beat-state-"
#: the lock name editors take around a read-change-write of the entries
EDIT_LOCK = "beat-edit"
#: how long an editor may hold it (a crashed editor frees it after this)
EDIT_LOCK_EXPIRE = 10.0


class NoSuchEntry(KeyError):
    """No periodic task has that name (the message lists those there are)."""

    def __str__(self) -> str:
        return str(self.args[0])


class ScheduleBook:
    """The stored schedule of one app (its result store): read and edit it from any process.

    ``add``/``change``/``pause``/``resume``/``remove`` take effect in every running beat within
    about a second. Entries from ``beat_schedule`` are written by each beat as it starts; edits
    made here to one of them (a pause) last until the entry's definition in ``beat_schedule``
    changes."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        #: name -> (the record it was built from, the entry): a leader reads the schedule every
        #: second, and building schedule objects (crontab parsing) again for an unchanged
        #: record is wasted work
        self._built: dict[str, tuple[dict[str, Any], Entry]] = {}

    # ---- the store ------------------------------------------------------------------------------
    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    @property
    def store(self) -> Locks:
        return lock_store(self.app, "periodic tasks")

    def _records(self) -> dict[str, dict[str, Any]]:
        self.store  # noqa: B018  (one clear line when the store cannot hold the schedule)
        records = self.backend.get_value(ENTRIES_KEY)
        return dict(records) if isinstance(records, Mapping) else {}

    def _edit(self, change: Callable[[dict[str, dict[str, Any]]], Any]) -> Any:
        """Apply ``change`` to the records under the edit lock, and write them back."""
        lock = Lock(self.store, EDIT_LOCK, EDIT_LOCK_EXPIRE)
        if not lock.acquire_within(EDIT_LOCK_EXPIRE * 2, poll=0.02):
            raise TimeoutError(f"the periodic-task schedule is being edited by {lock.owner()} "
                               f"and was not released in {EDIT_LOCK_EXPIRE * 2:.0f} s")
        try:
            records = self._records()
            outcome = change(records)
            self.backend.set_value(ENTRIES_KEY, records, ttl=0)
            return outcome
        finally:
            lock.release()

    # ---- reading --------------------------------------------------------------------------------
    def entries(self) -> dict[str, Entry]:
        """Every stored entry by name (without run state)."""
        built: dict[str, tuple[dict[str, Any], Entry]] = {}
        for name, record in sorted(self._records().items()):
            known = self._built.get(name)
            built[name] = known if known is not None and known[0] == record else \
                (record, entry_from_record(record, self.app))
        self._built = built
        return {name: entry for name, (_, entry) in built.items()}

    def list(self) -> list[Entry]:
        """Every stored entry with its run state (last run, run count), by name."""
        entries = list(self.entries().values())
        states = self.states([entry.name for entry in entries])
        return [entry.with_state(*states.get(entry.name, (None, 0))) for entry in entries]

    def get(self, name: str) -> Entry:
        entry = self.entries().get(name)
        if entry is None:
            raise NoSuchEntry(self._missing(name))
        last_run_at, count = self.states([name]).get(name, (None, 0))
        return entry.with_state(last_run_at, count)

    def states(self, names: Iterable[str]) -> dict[str, tuple[datetime | None, int]]:
        """name -> (last run, run count) for the names with a stored state."""
        names = list(names)
        if not names:
            return {}
        raws = self.backend._mget([STATE_PREFIX + name for name in names])
        found: dict[str, tuple[datetime | None, int]] = {}
        for name, raw in zip(names, raws):
            if raw is None:
                continue
            state = self.backend.decode(raw)
            if isinstance(state, Mapping) and state.get("last_run_at") is not None:
                found[name] = (datetime.fromtimestamp(float(state["last_run_at"]), timezone.utc),
                               int(state.get("total_run_count") or 0))
        return found

    def record_run(self, name: str, when: datetime, total_run_count: int) -> None:
        self.backend.set_value(STATE_PREFIX + name, {"last_run_at": when.timestamp(),
                                                     "total_run_count": total_run_count}, ttl=0)

    # ---- editing --------------------------------------------------------------------------------
    def add(self, name: str, task: str | Any, schedule: Any, args: Iterable[Any] = (),
            kwargs: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
            *, enabled: bool = True, relative: bool = False, replace_existing: bool = False
            ) -> Entry:
        """Add an entry (a task name or task, and seconds, a timedelta or a schedule object);
        an existing name is an error unless ``replace_existing``."""
        entry = self._checked(Entry(
            name=name, task=_task_name(task), schedule=make_schedule(
                schedule, self.app, relative=relative, where=f"entry {name!r}"),
            args=tuple(args), kwargs=dict(kwargs or {}),
            options=check_options(options, f"entry {name!r}"), enabled=enabled,
            origin=RUNTIME))

        def add(records: dict[str, dict[str, Any]]) -> None:
            if name in records and not replace_existing:
                raise ValueError(f"periodic task {name!r} exists already: change it, or remove "
                                 f"it first (or pass replace_existing=True)")
            records[name] = entry.to_record()
        self._edit(add)
        return entry

    def change(self, name: str, *, task: str | Any = None, schedule: Any = None,
               args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None, enabled: bool | None = None) -> Entry:
        """Change some fields of an entry; the rest keep their values. Its run state is kept,
        so a new schedule counts from the entry's last run."""
        def change(records: dict[str, dict[str, Any]]) -> Entry:
            if name not in records:
                raise NoSuchEntry(self._missing(name, records))
            entry = entry_from_record(records[name], self.app)
            fields: dict[str, Any] = {}
            if task is not None:
                fields["task"] = _task_name(task)
            if schedule is not None:
                fields["schedule"] = make_schedule(schedule, self.app, where=f"entry {name!r}")
                fields["schedule_record"] = None
            if args is not None:
                fields["args"] = tuple(args)
            if kwargs is not None:
                fields["kwargs"] = dict(kwargs)
            if options is not None:
                fields["options"] = check_options(options, f"entry {name!r}")
            if enabled is not None:
                fields["enabled"] = bool(enabled)
            changed = self._checked(replace(entry, **fields))
            record = changed.to_record()
            if changed.schedule is None:  # a custom schedule left as it was
                record["schedule"] = records[name]["schedule"]
            records[name] = record
            return changed
        changed: Entry = self._edit(change)
        return changed

    def pause(self, name: str) -> Entry:
        """Stop firing an entry until ``resume`` (it stays listed)."""
        return self.change(name, enabled=False)

    def resume(self, name: str) -> Entry:
        """Fire a paused entry again, from its next due time (missed runs are not made up)."""
        return self.change(name, enabled=True)

    def remove(self, name: str) -> None:
        def remove(records: dict[str, dict[str, Any]]) -> None:
            if records.pop(name, None) is None:
                raise NoSuchEntry(self._missing(name, records))
        self._edit(remove)
        self.backend.delete_keys([STATE_PREFIX + name])

    def sync_config(self, entries: Mapping[str, Entry]) -> builtins.list[str]:
        """Write ``beat_schedule``'s entries: a new or changed definition replaces the stored
        one, an unchanged one keeps its run-time edits, and a config entry no longer in
        ``beat_schedule`` is removed. Run-time entries are left alone. Returns what changed."""
        def sync(records: dict[str, dict[str, Any]]) -> builtins.list[str]:
            changes = []
            for name, entry in entries.items():
                stored = records.get(name)
                if stored is not None and stored.get("origin") == CONFIG \
                        and stored.get("digest") == entry.digest:
                    continue
                verb = "added" if stored is None else "replaced"
                if stored is not None and stored.get("origin") == RUNTIME:
                    verb = "replaced a run-time entry with"
                records[name] = entry.to_record()
                changes.append(f"{verb} {name!r} from beat_schedule")
            for name in [n for n, r in records.items()
                         if r.get("origin") == CONFIG and n not in entries]:
                del records[name]
                changes.append(f"removed {name!r} (no longer in beat_schedule)")
            return changes
        changes: builtins.list[str] = self._edit(sync)
        return changes

    # ---- helpers --------------------------------------------------------------------------------
    def _checked(self, entry: Entry) -> Entry:
        if not entry.name or not isinstance(entry.name, str):
            raise ValueError(f"a periodic task needs a name (a non-empty str), not "
                             f"{entry.name!r}")
        try:  # what the store cannot write fails here, in the caller
            self.backend.encode(entry.to_record())
        except Exception as exc:
            raise ImproperlyConfigured(
                f"periodic task {entry.name!r}: its args/kwargs/options cannot be stored with "
                f"the result serializer {self.backend.serializer!r} ({exc}); use plain values"
            ) from exc
        return entry

    def _missing(self, name: str, records: Mapping[str, Any] | None = None) -> str:
        names = sorted(records if records is not None else self._records())
        return (f"no periodic task named {name!r} (there are: {', '.join(names) or 'none'}): "
                f"see `celeriac schedule list`")


def _task_name(task: Any) -> str:
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not name or not isinstance(name, str):
        raise ValueError(f"a periodic task's task must be a task or its name, not {task!r}")
    return name


__all__ = ["ScheduleBook", "NoSuchEntry", "ENTRIES_KEY", "STATE_PREFIX", "CUSTOM"]
