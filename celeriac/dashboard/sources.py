"""What the dashboard reads from the broker and the result store, as JSON-ready dicts.

Layer: dashboard (over the transport and result-store interfaces). Everything here works with no
events at all, so a worker started without ``-E`` still shows: its heartbeat record
(``celeriac-worker-<node>``, written by worker/extensions.py ``Heartbeat`` and expiring after
three missed beats), the queues' depths (``transport.qsize``), dead letters (``DeadLetterStore``)
and any task's stored meta, a dispatch's ``PROGRESS`` included.

Finding the heartbeat records needs a listing of keys by prefix: the stores that have the
``KeyListing`` capability (SQLite, Redis, memory) give it; elsewhere (rpc://) ``stored_keys``
answers None and workers are known from events only.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .. import states
from ..backends.base import KeyListing
from ..routing import Router
from ..utils.text import one_line

__all__ = ["HEARTBEAT_PREFIX", "StoreView", "BrokerView", "stored_keys", "json_safe"]

#: the result-store key of a worker's heartbeat record is this plus its node name
HEARTBEAT_PREFIX = "celeriac-worker-"

#: how long a preview of a stored result may be
_RESULT_PREVIEW = 2000


def json_safe(value: Any, limit: int = _RESULT_PREVIEW) -> Any:
    """``value`` when JSON can carry it as it is, else its ``repr`` (clipped to ``limit``): a
    stored result may be any picklable object."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = None
    if text is not None and len(text) <= limit:
        return value
    shown = repr(value) if text is None else text
    return shown if len(shown) <= limit else shown[:limit] + "…"


def stored_keys(backend: Any, prefix: str) -> list[str] | None:
    """Every live key of ``backend`` that starts with ``prefix``; None when the store cannot
    list its keys (its ``KeyListing`` capability: rpc:// and third-party stores have none)."""
    if isinstance(backend, KeyListing):
        return backend.keys_with_prefix(prefix)
    return None


class StoreView:
    """The result store as the dashboard shows it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def readable(self) -> bool:
        """False for a store that keeps nothing another process can read (rpc://, disabled)."""
        return bool(getattr(self.app.backend, "persistent", False))

    def heartbeats(self) -> dict[str, dict[str, Any]] | None:
        """Node name -> its latest heartbeat record; None when the store cannot list them."""
        if not self.readable:
            return None
        backend = self.app.backend
        keys = stored_keys(backend, HEARTBEAT_PREFIX)
        if keys is None:
            return None
        found: dict[str, dict[str, Any]] = {}
        for key in keys:
            record = backend.get_value(key)
            if isinstance(record, dict):  # gone since the listing, or not a heartbeat
                found[key[len(HEARTBEAT_PREFIX):]] = record
        return found

    def metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each task's stored state, result preview and traceback (PENDING when none)."""
        if not task_ids or not self.readable:
            return {}
        found = self.app.backend.get_many_meta(list(task_ids))
        return {task_id: self._shown(meta) for task_id, meta in found.items()}

    def meta(self, task_id: str) -> dict[str, Any] | None:
        return self.metas([task_id]).get(task_id)

    def _shown(self, meta: dict[str, Any]) -> dict[str, Any]:
        state = meta.get("status")
        result = meta.get("result")
        shown: dict[str, Any] = {"state": state, "traceback": meta.get("traceback"),
                                 "date_done": json_safe(meta.get("date_done"))}
        if state in states.EXCEPTION_STATES and isinstance(result, dict):
            try:
                shown["exception"] = repr(self.app.backend.exception_from_meta(meta))
            except Exception as exc:  # noqa: BLE001 - an exception this process cannot rebuild
                shown["exception"] = (f"{result.get('exc_type')}: {result.get('exc_message')} "
                                      f"({one_line(exc)})")
        elif state == "PROGRESS" and isinstance(result, dict):
            shown["progress"] = json_safe(result)
        else:
            shown["result"] = json_safe(result)
        return shown


class BrokerView:
    """The broker as the dashboard shows it: queue depths and dead letters."""

    def __init__(self, app: Any, queues: Sequence[str] = ()) -> None:
        self.app = app
        #: queues named on the command line, shown even when no worker consumes them
        self.extra_queues = list(queues)

    def queue_names(self, consumed: Sequence[str] = ()) -> list[str]:
        """The configured queues (``task_queues``, else the default queue), the ones given to
        the dashboard, and the ones workers report consuming, in that order."""
        names = Router.queue_names(self.app.conf) + self.extra_queues + list(consumed)
        return list(dict.fromkeys(n for n in names if n))

    def depths(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """``{"name", "depth"}`` per queue, or ``{"name", "error"}`` for one the broker could
        not count (a queue that does not exist on RabbitMQ, a broker gone)."""
        transport = self.app.transport
        rows: list[dict[str, Any]] = []
        for name in names:
            try:
                rows.append({"name": name, "depth": int(transport.qsize(name))})
            except Exception as exc:  # noqa: BLE001 - shown in the panel, per queue
                rows.append({"name": name, "depth": None, "error": one_line(exc)})
        return rows

    @property
    def keeps_dead_letters(self) -> bool:
        from ..transport.base import DeadLetterStore

        return isinstance(self.app.transport, DeadLetterStore)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest ``limit`` dead letters: id, queue, reason, when, and the task it held."""
        if not self.keeps_dead_letters:
            return []
        rows = []
        for letter in self.app.transport.dead_letters(limit):
            headers = letter.message.headers or {}
            rows.append({
                "id": letter.id, "queue": letter.queue, "reason": letter.reason,
                "created_at": letter.created_at, "task": json_safe(headers.get("task"), 200),
                "task_id": json_safe(headers.get("id"), 200),
                "args": json_safe(headers.get("argsrepr"), 500),
                "kwargs": json_safe(headers.get("kwargsrepr"), 500),
            })
        return rows

    def replay(self, ids: Sequence[str] | None) -> int:
        """Publish the dead letters ``ids`` (every one when None) to their queue again; a
        ``KeyError`` naming the first unknown id, before anything is replayed."""
        from ..utils.dlq import replay

        transport = self.app.transport
        if ids is not None:
            missing = [i for i in ids if transport.dead_letter_get(i) is None]
            if missing:
                raise KeyError(f"no dead letter with id {', '.join(map(repr, missing))}; "
                               "nothing was replayed")
        return replay(transport, ids)
