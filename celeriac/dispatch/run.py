"""One dispatch: the window loop of a main task, its checkpoint and its progress.

Layer: dispatch. The generator is consumed lazily: subtasks are published in batches
(``dispatcher_batch_size``) while fewer than ``dispatcher_poll_size`` are unfinished, and every
outcome read from the inbox (inbox.py) is handled in completion order: the signals, then the
``receiver``. A checkpoint (what was published, the inbox cursor, the unfinished indexes) is
saved after each published batch and each handled read, so a main task that is redelivered
after a crash skips what it had published (re-publishing at most the batch after its last
checkpoint, under the same subtask ids) and handles every outcome at least once.

Nothing here lives in thread-locals: a run is one object, driven by a thread (``drive``) or a
coroutine (``drive_async``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, cast

from .. import states
from ..backends.base import AppendLog
from ..backends.meta import exception_to_dict
from ..canvas.signature import Signature
from ..exceptions import TimeoutError as CeleriacTimeoutError
from . import inbox
from .items import to_signature
from .signals import subtask_failure, subtask_success, subtask_timeout

if TYPE_CHECKING:
    from ..app import Celery
    from ..backends.base import ResultBackend
    from . import DispatchConfig

logger = logging.getLogger("celeriac.dispatch")

#: the state a main task reports while it runs (celery-dispatcher's name)
PROGRESS = "PROGRESS"
#: progress is stored at most this often (seconds), whatever the step frequency says
PROGRESS_MIN_INTERVAL = 0.25
#: a checkpoint is saved at least this often while outcomes are being handled (seconds)
CHECKPOINT_INTERVAL = 1.0
#: the longest one read of the inbox blocks: revokes and timeouts are looked at between reads
READ_BLOCK = 1.0
#: how often a revoke of the main task (without terminate) is looked for (seconds)
REVOKE_CHECK_INTERVAL = 1.0


#: workers (by hostname) in a warm shutdown: their main tasks save a checkpoint and go back to
#: the queue instead of holding the shutdown up until every subtask is done
stopping_workers: set[str] = set()


class SubtaskFailed(Exception):
    """``dispatcher_failure_on_subtask_exception``: a subtask failed, so the main task does."""


class Settings:
    """The ``dispatcher_*`` settings, read once per run."""

    def __init__(self, app: Celery) -> None:
        conf = app.conf
        self.batch_size = max(1, int(conf.get("dispatcher_batch_size") or 100))
        self.window = max(1, int(conf.get("dispatcher_poll_size") or 100))
        self.poll_timeout = float(conf.get("dispatcher_poll_timeout") or 10)
        self.subtask_timeout = float(conf.get("dispatcher_subtask_timeout") or 3600)
        self.fail_on_timeout = bool(conf.get("dispatcher_failure_on_subtask_timeout"))
        self.fail_on_exception = bool(conf.get("dispatcher_failure_on_subtask_exception"))
        self.progress_every = int(conf.get("dispatcher_progress_update_frequency") or 0)


class DispatchRun:
    """The state of one dispatch, keyed by its main task's id."""

    def __init__(self, app: Celery, task: Any, request: Any, config: DispatchConfig) -> None:
        self.app = app
        self.task = task
        self.request = request
        self.config = config
        self.settings = Settings(app)
        self.id: str = str(request.id)
        self.root_id: str = str(getattr(request, "root_id", None) or self.id)
        self.store: ResultBackend = inbox.store_for(app, config.backend)
        self.log: AppendLog = self.store  # type: ignore[assignment]  # checked by store_for
        self.inbox_key = inbox.inbox_key(self.id)
        self.state_key = inbox.state_key(self.id)
        #: index -> when it was published (monotonic), for every unfinished subtask
        self.outstanding: dict[int, float] = {}
        #: finished subtasks of the batch published after the last checkpoint (on a resume)
        self.ahead: set[int] = set()
        self.published = 0
        self.completed = 0
        self.failed = 0
        self.cursor = ""
        self.started_at = time.time()
        self.resumed = False
        self._last_progress = 0.0
        self._progress_at_count = 0
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self._last_fallback = time.monotonic()
        self._last_revoke_check = time.monotonic()
        self._failure: BaseException | None = None

    # ---- checkpoint ------------------------------------------------------------------------
    def load(self) -> int:
        """Pick up a checkpoint left by an earlier run of this main task; returns how many
        generator items to skip (they were published then)."""
        saved = self.store.get_value(self.state_key)
        if not saved:
            return 0
        now = time.monotonic()
        self.resumed = True
        self.published = int(saved.get("published", 0))
        self.cursor = str(saved.get("cursor") or "")
        self.outstanding = {int(i): now for i in saved.get("outstanding", ())}
        self.ahead = {int(i) for i in saved.get("ahead", ())}
        self.completed = int(saved.get("completed", 0))
        self.failed = int(saved.get("failed", 0))
        self.started_at = float(saved.get("started_at", self.started_at))
        logger.warning("Dispatch %s resumes: %d subtasks were published, %d finished, %d "
                       "unfinished", self.id, self.published, self.completed,
                       len(self.outstanding))
        return self.published

    def checkpoint(self, *, force: bool = False) -> None:
        if not force and not self._dirty:
            return
        self.store.set_value(self.state_key, {
            "published": self.published, "cursor": self.cursor,
            "outstanding": sorted(self.outstanding), "ahead": sorted(self.ahead),
            "completed": self.completed, "failed": self.failed, "started_at": self.started_at})
        if self.cursor:
            self.log.log_trim(self.inbox_key, self.cursor)
        self._dirty = False
        self._last_checkpoint = time.monotonic()

    def cleanup(self) -> None:
        try:
            self.log.log_delete(self.inbox_key)
            self.store.delete_keys([self.state_key])
        except Exception:
            logger.exception("dispatch %s: could not delete its inbox and checkpoint; they "
                             "expire with result_expires", self.id)

    # ---- publishing ------------------------------------------------------------------------
    def room(self) -> int:
        """How many subtasks to take from the generator now (0: wait for outcomes first).
        Published in batches: once a batch's worth (at most half the window) is free, or the
        window is empty."""
        free = self.settings.window - len(self.outstanding)
        # half the window at most, so the next batch goes out while the rest still run
        want = min(self.settings.batch_size, max(1, self.settings.window // 2))
        if free >= want or (free > 0 and not self.outstanding):
            return free if free < want else want
        return 0

    def signature_for(self, item: Any, index: int) -> Signature:
        sig = to_signature(item, self.app)
        target = inbox.Target(self.id, index, getattr(self.task, "name", None),
                              self.config.auto_ignore)
        last = sig
        from ..canvas.primitives import chain

        if isinstance(sig, chain):  # the chain's last task is the one whose outcome counts
            last = sig.tasks[-1]
        options = {**(self.config.options or {}), **last.options}
        headers = {**(options.get("headers") or {}), inbox.HEADER: target.as_header()}
        last.options.update(options, headers=headers,
                            task_id=inbox.subtask_id(self.id, index))
        return sig

    def publish(self, items: Iterable[tuple[int, Any]]) -> int:
        """Publish the ``(index, item)`` pairs as one batch; returns how many were taken."""
        calls: list[tuple[str, Any, Any, dict]] = []
        others: list[Signature] = []
        taken: list[int] = []
        sent: list[int] = []
        for index, item in items:
            taken.append(index)
            if index in self.ahead:  # finished in a run before the crash: not sent again
                self.ahead.discard(index)
                continue
            sent.append(index)
            sig = self.signature_for(item, index)
            if type(sig) is Signature:  # a plain call: sent with the batch in one round trip
                opts = {k: v for k, v in sig.options.items()
                        if k not in ("immutable", "subtask_type", "chord_size")}
                task = self.app.tasks.get(sig.task)
                if task is not None:
                    opts["_task"] = task
                calls.append((sig.task, sig.args, sig.kwargs, opts))
            else:
                others.append(sig)
        now = time.monotonic()
        if self.app.conf.task_always_eager:  # every subtask runs here, now
            for index in sent:
                self.outstanding.setdefault(index, now)
            self._run_eagerly(calls, others)
            self.published = max(self.published, (taken[-1] + 1) if taken else self.published)
            return len(taken)
        if calls:
            self.app.producer.send_many(calls)
        for sig in others:
            sig.apply_async(parent_id=self.id, root_id=self.root_id, add_to_parent=False)
        for index in sent:
            self.outstanding.setdefault(index, now)
        self.published = max(self.published, (taken[-1] + 1) if taken else self.published)
        self._dirty = True
        return len(taken)

    def _run_eagerly(self, calls: list[tuple[str, Any, Any, dict]],
                     others: list[Signature]) -> None:
        """``task_always_eager``: each subtask is applied here and handled at once."""
        sigs = [Signature(name, args, kwargs, {k: v for k, v in opts.items() if k != "_task"},
                          app=self.app) for name, args, kwargs, opts in calls] + others
        for sig in sigs:
            last = getattr(sig, "tasks", [sig])[-1]  # a chain's last task carries the header
            options = last.options
            index = int(options["headers"][inbox.HEADER][1])
            result = sig.apply()
            self.outstanding.pop(index, None)
            if result.state == states.SUCCESS:
                meta = {"status": states.SUCCESS, "result": result.result,
                        "task_id": result.id}
            else:
                meta = {"status": result.state, "result": exception_to_dict(result.result),
                        "traceback": result.traceback, "task_id": result.id}
            self.handle(index, meta)

    # ---- outcomes --------------------------------------------------------------------------
    def read(self, timeout: float) -> list[bytes]:
        entries, cursor = self.log.log_read(self.inbox_key, self.cursor,
                                            self.settings.batch_size, timeout)
        if entries:
            self.cursor = cursor
            self._dirty = True
        return entries

    def handle_entries(self, entries: list[bytes]) -> None:
        for data in entries:
            try:
                index, meta = inbox.parse(self.store, data)
            except Exception:
                logger.exception("dispatch %s: an inbox entry cannot be read; skipped", self.id)
                continue
            if index in self.outstanding:
                del self.outstanding[index]
            elif index >= self.published and index not in self.ahead:
                self.ahead.add(index)  # from the batch published after the last checkpoint
            else:
                continue  # a repeat (the subtask ran twice): handled once already
            self.handle(index, meta)

    def handle(self, index: int, meta: dict[str, Any]) -> None:
        task_id = str(meta.get("task_id") or inbox.subtask_id(self.id, index))
        state = meta.get("status")
        self.completed += 1
        if state == states.SUCCESS:
            retval = meta.get("result")
            self._emit(subtask_success, task_id=task_id, retval=retval)
            if self.config.receiver is not None:
                try:
                    self.config.receiver(root_id=self.root_id, task_id=task_id, retval=retval)
                except Exception:
                    logger.exception("dispatch %s: the receiver failed for subtask %s",
                                     self.id, task_id)
        else:
            self.failed += 1
            exc = self.store.exception_from_meta(meta)
            logger.error("dispatch %s: subtask %s ended %s: %r", self.id, task_id, state, exc)
            self._emit(subtask_failure, task_id=task_id, exception=exc,
                       traceback=meta.get("traceback"))
            if self.settings.fail_on_exception and self._failure is None:
                self._failure = exc if isinstance(exc, Exception) else SubtaskFailed(repr(exc))
        self.progress()

    def _emit(self, signal: Any, **named: Any) -> None:
        if signal.receivers:
            signal.send(sender=self.task, root_id=self.root_id, **named)

    def check_overdue(self) -> None:
        """Subtasks nothing was heard of: first their stored results are looked up (a Celery
        worker ran them and reported nothing), then, past ``dispatcher_subtask_timeout``, they
        are given up on."""
        now = time.monotonic()
        if now - self._last_fallback >= self.settings.poll_timeout and self.outstanding:
            self._last_fallback = now
            self._look_up_results(
                [i for i, at in self.outstanding.items() if now - at >= self.settings.poll_timeout])
        limit = self.settings.subtask_timeout
        for index in [i for i, at in self.outstanding.items() if now - at >= limit]:
            del self.outstanding[index]
            self._dirty = True
            self.completed += 1
            self.failed += 1
            task_id = inbox.subtask_id(self.id, index)
            exc = CeleriacTimeoutError(
                f"dispatch {self.id}: nothing was heard of subtask {task_id} for {limit:g} s "
                "(dispatcher_subtask_timeout)")
            logger.error("%s", exc)
            self._emit(subtask_timeout, task_id=task_id, exception=exc)
            if self.settings.fail_on_timeout and self._failure is None:
                self._failure = exc

    def _look_up_results(self, indexes: list[int]) -> None:
        if not indexes or not self.app.backend.persistent:
            return
        ids = {inbox.subtask_id(self.id, i): i for i in indexes}
        try:
            metas = self.app.backend.get_many_meta(list(ids))
        except Exception:
            logger.exception("dispatch %s: could not look up stored results", self.id)
            return
        for task_id, meta in metas.items():
            if meta.get("status") not in states.READY_STATES:
                continue
            index = ids[task_id]
            if self.outstanding.pop(index, None) is None:
                continue
            self._dirty = True
            self.handle(index, {**meta, "task_id": task_id})
            if self.config.auto_ignore:
                self.app.backend.forget(task_id)

    def revoked(self) -> bool:
        """Whether the main task was revoked (looked up at most once a second)."""
        now = time.monotonic()
        if now - self._last_revoke_check < REVOKE_CHECK_INTERVAL:
            return False
        self._last_revoke_check = now
        from ..worker.revokes import RevokedSet

        backend = self.app.backend
        return backend.persistent and bool(RevokedSet(backend).check_stored([self.id]))

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def step_aside_if_stopping(self) -> None:
        """The worker running this main task is shutting down: save where it is and give the
        message back (it is acks_late), to be resumed by a worker that runs."""
        hostname = getattr(self.request, "hostname", None)
        if hostname is None or hostname not in stopping_workers:
            return
        from ..exceptions import Reject

        self.checkpoint(force=True)
        logger.info("dispatch %s: the worker is stopping; it goes back to the queue and resumes "
                    "from its checkpoint", self.id)
        raise Reject("the worker is stopping; resumed from the checkpoint", requeue=True)

    # ---- progress --------------------------------------------------------------------------
    def progress(self, *, force: bool = False) -> None:
        every = self.settings.progress_every
        if not self.request.id or (not every and not force):
            return
        now = time.monotonic()
        if not force and (self.completed - self._progress_at_count < every
                          or now - self._last_progress < PROGRESS_MIN_INTERVAL):
            return
        self._last_progress = now
        self._progress_at_count = self.completed
        try:
            self.app.backend.store_result(self.id, self.progress_meta(), PROGRESS,
                                          request=self.request)
        except Exception:
            logger.exception("dispatch %s: could not store its progress", self.id)

    def progress_meta(self) -> dict[str, Any]:
        total, done = self.published, self.completed
        spent = time.time() - self.started_at
        if total == 0:
            percent, remaining = 100.0, 0.0
        elif done == 0:
            percent, remaining = 0.0, -1.0
        else:
            fraction = min(1.0, done / total)
            percent = fraction * 100
            remaining = 0.0 if fraction >= 1 else spent / fraction - spent
        return {"completed_count": done, "total_count": total, "progress_percent": percent,
                "time_remaining": remaining}

    # ---- one turn of the loop --------------------------------------------------------------
    def after_read(self, entries: list[bytes]) -> None:
        if entries:
            self.handle_entries(entries)
        self.check_overdue()
        if self._dirty and time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self.checkpoint()

    def summary(self) -> str:
        return (f"dispatch {self.id}: {self.published} subtasks, {self.completed - self.failed} "
                f"succeeded, {self.failed} failed or timed out")


def drive(run: DispatchRun, generator: Any, skip: int) -> Any:
    """Run a sync generator main task to the end; returns the generator's return value."""
    exhausted = False
    retval = None
    position = 0

    def take(count: int) -> list[tuple[int, Any]]:
        nonlocal exhausted, retval, position
        taken: list[tuple[int, Any]] = []
        while len(taken) < count:
            try:
                item = next(generator)
            except StopIteration as stop:
                exhausted, retval = True, stop.value
                break
            taken.append((position, item))
            position += 1
        return taken

    try:
        while position < skip:  # published by an earlier run of this main task
            try:
                next(generator)
            except StopIteration as stop:
                exhausted, retval = True, stop.value
                break
            position += 1
        while True:
            run.step_aside_if_stopping()
            if run.revoked():
                raise_revoked(run)
            while not exhausted and run.room():
                batch = take(run.room())
                if batch:
                    run.publish(batch)
                    run.checkpoint(force=True)
            run.raise_failure()
            if exhausted and not run.outstanding:
                break
            run.after_read(run.read(READ_BLOCK))
            run.raise_failure()
    except BaseException:
        _close(generator)
        raise
    finish(run)
    return retval


async def drive_async(run: DispatchRun, generator: Any, skip: int) -> Any:
    """Run an ``async def`` generator main task; the store's blocking calls go to a thread."""
    import asyncio

    exhausted = False
    position = 0
    try:
        while position < skip:
            try:
                await generator.__anext__()
            except StopAsyncIteration:
                exhausted = True
                break
            position += 1
        while True:
            await asyncio.to_thread(run.step_aside_if_stopping)
            if await asyncio.to_thread(run.revoked):
                raise_revoked(run)
            while not exhausted and run.room():
                want, batch = run.room(), cast("list[tuple[int, Any]]", [])
                while len(batch) < want:
                    try:
                        batch.append((position, await generator.__anext__()))
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    position += 1
                if batch:
                    await asyncio.to_thread(_publish_and_save, run, batch)
            run.raise_failure()
            if exhausted and not run.outstanding:
                break
            entries = await asyncio.to_thread(run.read, READ_BLOCK)
            run.after_read(entries)
            run.raise_failure()
    except BaseException:
        await generator.aclose()
        raise
    await asyncio.to_thread(finish, run)
    return None


def _publish_and_save(run: DispatchRun, batch: list[tuple[int, Any]]) -> None:
    run.publish(batch)
    run.checkpoint(force=True)


def finish(run: DispatchRun) -> None:
    run.progress(force=True)
    logger.info("%s", run.summary())
    run.cleanup()


def raise_revoked(run: DispatchRun) -> None:
    """The main task was revoked while it ran: it ends ``REVOKED`` (stored here, as a revoked
    task's state is; the worker then stores nothing more for it), not as a failure."""
    from ..exceptions import Ignore, TaskRevokedError

    logger.warning("dispatch %s was revoked: nothing more is sent; its unfinished subtasks are "
                   "dropped where they wait", run.id)
    reason = f"dispatch {run.id} was revoked"
    request = run.request
    backend = run.app.backend
    if getattr(request, "called_directly", True) or not backend.persistent:
        raise TaskRevokedError(reason)
    backend.mark_as_revoked(run.id, reason, request=request)
    raise Ignore(reason)


def _close(generator: Any) -> None:
    try:
        generator.close()
    except Exception:
        logger.exception("the dispatch generator failed while closing")

