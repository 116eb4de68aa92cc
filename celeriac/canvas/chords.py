"""Chords on the worker side: count each header result, fire the body exactly once.

Layer: canvas (called when a header task ends). Every header task that finishes, whatever its
state, adds ``[1, id, state, result]`` to the chord's join in the result store in one atomic step
(``ResultBackend.chord_part_return``); the step that completes the count also takes the chord's
dispatch claim, so exactly one worker reads the results (in header order) and sends the body.
There is no unlock task polling for the header to finish, unlike Celery on non-Redis backends.

If a header task failed, the body is not sent: it is marked FAILURE with ``ChordError``
("Dependency <id> raised ..."), its errbacks run and its chain fails with it, as on Celery.

Crash windows: a worker that dies after taking the claim but before sending the body leaves the
claim to expire after ``CLAIM_TTL``; a redelivered copy of a header task (``acks_late``) counts
nothing new but takes the expired claim and sends the body. With early acks nothing is
redelivered, so such a body is not sent (the same limit as Celery's). A worker paused for longer
than ``CLAIM_TTL`` between taking the claim and sending could, with such a redelivery, send the
body twice.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import states
from ..backends.base import ChordPart, ResultWrite, StagedWrites
from ..backends.meta import exception_from_dict, exception_to_dict
from ..exceptions import ChordError
from ..protocol import serialization
from ..utils.salt import process_salt
from .signature import as_list, maybe_signature

if TYPE_CHECKING:
    from ..app import Celery
    from ..task import Context

logger = logging.getLogger("celeriac.worker")

#: seconds the worker that completed a chord holds the right to send its body (long compared to
#: reading the results and sending one message; a crash leaves the chord to a redelivered header
#: task only after this)
CLAIM_TTL = 60.0
#: seconds to wait for the results of a nested header (they are stored before being counted)
JOIN_TIMEOUT = 10.0
#: seconds the "done" marker keeps late copies of header tasks from counting again
DONE_TTL = 300.0


@dataclass(frozen=True, slots=True)
class ChordCount:
    """One header result ready to be counted in its chord's join."""

    request: Any
    group_id: str
    entry: bytes
    token: str


def part_of(app: "Celery", request: "Context", state: str, result: Any) -> ChordCount | None:
    """The count ``request``'s end makes in its chord, or None when it belongs to no chord."""
    group_id, body = request.group, request.chord
    if not group_id or body is None:
        return None
    backend = app.backend
    if not backend.persistent:
        logger.error("Task %s[%s] is part of a chord, but no result backend is configured: the "
                     "chord body will never run", request.task, request.id)
        return None
    payload = exception_to_dict(result) if isinstance(result, BaseException) else result
    return ChordCount(request, group_id, backend.encode([1, request.id, state, payload]),
                      claim_token())


_CLAIM_SERIAL = itertools.count()


def claim_token() -> str:
    """A fresh dispatch-claim token (what ``ChordCount.token`` holds): this process's salt and a
    counter, unique fleet-wide as Redis lease tokens are, where a ``uuid4`` per header task
    (a random read and an object) cost ~6 µs."""
    return f"{process_salt()}-{next(_CLAIM_SERIAL):x}"


def on_part_return(app: "Celery", request: "Context", state: str, result: Any) -> None:
    """Count one header result of ``request``'s chord; send the body if it was the last one."""
    part = part_of(app, request, state, result)
    if part is not None:
        count(app, part)


def count(app: "Celery", part: ChordCount, write: ResultWrite | None = None) -> None:
    """Store ``write`` (the header task's own result), if any, then count ``part``; whoever
    completes the chord sends the body (``write_and_part_return``: one script and one round
    trip on Redis, one transaction on SQLite)."""
    request = part.request
    backend = app.backend
    if write is not None:
        found = backend.write_and_part_return(write, part.group_id, request.id,
                                              request.group_index, part.entry,
                                              claim_token=part.token, claim_ttl=CLAIM_TTL)
    else:
        found = backend.chord_part_return(part.group_id, request.id, request.group_index,
                                          part.entry, claim_token=part.token,
                                          claim_ttl=CLAIM_TTL)
    _after_count(app, request, part.group_id, part.token, found)


def stage(app: "Celery", backend: StagedWrites, part: ChordCount) -> None:
    """Put the count on the worker thread's shared connection (it travels with the thread's
    next round trip); the body goes out once that round trip is over."""
    request = part.request

    def then(found: ChordPart) -> None:
        try:
            _after_count(app, request, part.group_id, part.token, found)
        except Exception:
            logger.exception("Chord %s: finishing it after task %s failed", part.group_id,
                             request.id)

    backend.chord_part_return_later(part.group_id, request.id, request.group_index, part.entry,
                                    claim_token=part.token, claim_ttl=CLAIM_TTL, then=then)


def _after_count(app: "Celery", request: "Context", group_id: str, token: str,
                 part: ChordPart) -> None:
    """Whoever took the claim sends the body (or fails it), then marks the chord done."""
    if not part.claimed:
        return
    backend = app.backend
    body = maybe_signature(request.chord, app=app)
    failure: ChordError | None = None
    try:
        values = _header_values(app, group_id)
    except ChordError as exc:
        failure = exc
    except Exception as exc:  # the store failed us: the body cannot get its arguments
        logger.exception("Chord %s: reading its header's results failed", group_id)
        failure = ChordError(f"Join error: {exc!r}")
    else:
        try:
            # (add_to_parent off: this may run after the worker moved on to another task)
            body.apply_async((values,), parent_id=request.id,
                             root_id=request.root_id or request.id, add_to_parent=False)
        except Exception as exc:
            logger.exception("Chord %s: sending its body failed", group_id)
            failure = ChordError(f"Callback error: {exc!r}")
    if failure is not None:
        logger.error("Chord %s failed: %s", group_id, failure)
        try:
            fail_body(app, body, failure)
        except Exception:
            # Neither sent nor failed: keep the join, so a redelivered header task can take the
            # claim again once it expires (after CLAIM_TTL) and finish the chord.
            logger.exception("Chord %s: recording its failure failed", group_id)
            return
    if not backend.chord_cleanup(group_id, token, DONE_TTL):
        logger.warning("Chord %s: the dispatch claim expired before the body was sent; its data "
                       "is left to expire", group_id)


def _header_values(app: "Celery", group_id: str) -> list[Any]:
    """The header's results in header order. A header that holds groups was saved as a
    GroupResult when it was sent (as Celery does): its nesting comes back from that."""
    from ..result import GroupResult

    backend = app.backend
    saved = GroupResult.restore(group_id, app=app)
    if saved is None:
        return [_unpack(entry)
                for entry in _decode_entries(backend, backend.chord_results(group_id))]
    try:
        # every member was counted, so every result is stored: nothing to wait for
        return saved.join(timeout=JOIN_TIMEOUT, propagate=True, disable_sync_subtasks=False)
    except Exception as exc:
        raise ChordError(f"Dependency raised {exc!r}") from exc


def _decode_entries(backend: Any, raws: list[bytes]) -> list[Any]:
    """Every join entry decoded: JSON ones as one array (one parse instead of one per header
    task: 10,000 of them took tens of milliseconds), the rest, or JSON that does not parse
    that way, one by one."""
    if len(raws) > 1 and serialization.content_type_of(backend.serializer) == serialization.JSON:
        try:
            entries = backend.decode(b"[" + b",".join(raws) + b"]")
        except Exception:  # noqa: BLE001 - decoded one by one below, where it fails
            entries = None
        if isinstance(entries, list) and len(entries) == len(raws):
            return entries
    return [backend.decode(raw) for raw in raws]


def _unpack(entry: Any) -> Any:
    _, task_id, state, value = entry
    if state in states.PROPAGATE_STATES:
        exc = exception_from_dict(value)
        raise ChordError(f"Dependency {task_id} raised {exc!r}") from exc
    return value


def fail_body(app: "Celery", body: Any, exc: BaseException) -> None:
    """The chord will not run its body: record that on the body's result (every member's, for
    a group body; every step's, for a chain) and run its errbacks."""
    from . import followups
    from .primitives import chain, chord, group

    body = maybe_signature(body, app=app)
    if isinstance(body, (group, chord, chain)):
        if isinstance(body, group):
            # each member of a group body fails with what failed the header (Celery 5.7), not
            # with the ChordError wrapping it
            cause = exc.__cause__ if isinstance(exc, ChordError) and exc.__cause__ else exc
            # the group's own errbacks (where a Celery client puts a chord's link_error when
            # the body is a group) run for every member, beside its own, each once
            shared = as_list(body.options.get("link_error"))
            for member in body.tasks:
                member = maybe_signature(member, app=app)
                if shared:
                    own = as_list(member.options.get("link_error"))
                    member = member.clone()
                    member.options["link_error"] = own + [e for e in shared if e not in own]
                fail_body(app, member, cause)
            if body.options.get("task_id"):  # the group's own id, as Celery stores it
                app.backend.mark_as_failure(body.options["task_id"], cause)
        elif isinstance(body, chord):
            fail_body(app, body.body, exc)
            _run_own_errbacks(app, body, exc)
        else:
            steps = [maybe_signature(s, app=app) for s in body.tasks]
            if steps:
                fail_body(app, steps[0], exc)
                followups.fail_chain(app, steps[:0:-1], exc, None)  # the rest, in wire order
            _run_own_errbacks(app, body, exc)
        # the rest of an enclosing chain, which Celery's client puts in the body's own options
        # (a chord followed by more steps, its body a group): it will never run either
        followups.fail_chain(app, body.options.get("chain"), exc, None)
        return
    body.options.setdefault("task_id", str(uuid.uuid4()))
    ctx = followups.request_for(body, errbacks=as_list(body.options.get("link_error")),
                                chain=body.options.get("chain"))
    followups.on_failure(app, ctx, exc, None, store=True, errbacks_first=True)


def _run_own_errbacks(app: "Celery", body: Any, exc: BaseException) -> None:
    """Errbacks a Celery client put in a chord or chain body's own ``link_error`` option
    (``chord(header, body).apply_async(link_error=...)``): run once for the body, with the id
    its result has, as Celery's ``chord_error_from_stack`` does."""
    from . import followups

    errbacks = as_list(body.options.get("link_error"))
    if not errbacks:
        return
    result_id = _result_id(body)
    if result_id is None:
        return
    ctx = followups.request_for(body, errbacks=errbacks)
    ctx.id = result_id
    followups.send_errbacks(app, ctx, exc, None)


def _result_id(sig: Any) -> str | None:
    """The id of the result a workflow stands for: a chord's body's, a chain's last step's."""
    from .primitives import chain, chord

    while True:
        if isinstance(sig, chord):
            sig = maybe_signature(sig.body)
        elif isinstance(sig, chain):
            if not sig.tasks:
                return None
            sig = maybe_signature(sig.tasks[-1])
        else:
            return sig.options.get("task_id") if sig is not None else None
