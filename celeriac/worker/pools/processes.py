"""The process pool (``prefork``): each task runs in a forked child, one task per child at a time.

The main process keeps the messages (and their leases); children only receive ``(job_id,
message)`` over a pipe and answer with an ``Outcome``. A child that dies mid-task is noticed through
its process sentinel: the job is reported as lost and a new child takes its place.

A child also retires on its own (Celery's ``worker_max_tasks_per_child`` and
``worker_max_memory_per_child``): after the task that reaches the limit it sends that task's
outcome with the reason it is leaving, and exits. The parent gives it no further job and puts a
new child in its place; nothing is lost, since the outcome came back before the child left.

The pool's size can change while it runs (``grow``, ``shrink``: ``--autoscale``). New children
start as replacements do; shrinking only ever tells idle children to leave, and a child that
leaves that way is not replaced.

A job ahead: when every child is busy, a job whose child sends its own early ack (``ack_first``)
may be sent to a child running a task that usually ends within ``AHEAD_WITHIN`` seconds (and
has not yet run that long). It waits in the child's pipe and starts the moment the task before
it ends, without waiting for the parent to hear of that end and answer (which, on a loaded
machine, took longer than the task). A job ahead has no time limit running and cannot be
stopped until it starts; if its child ends before starting it (died, killed, retired), the
parent reports it ``NOT_STARTED`` and the consumer finds out whether its ack went out, as for an
ack a child could not confirm.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import select
import selectors
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from ... import signals, states
from ...protocol.message import Message
from ...transport.base import Delivery
from ...utils.spin import AdaptiveSpin, look_until
from ..outcome import LEASE_LOST, Ending, Outcome
from ..revokes import stored_revokes
from . import OnDone

logger = logging.getLogger("celeriac.worker")

_ctx = multiprocessing.get_context("fork")
#: Replacement children start as fresh interpreters: forking a process whose other threads may
#: hold locks (SQLite's, a socket's, logging's) can leave the child deadlocked on its first use.
_spawn_ctx = multiprocessing.get_context("spawn")

#: a job is sent ahead to a busy child only behind a task that usually ends within this many
#: seconds (a running mean per task name, kept by the parent) and has not yet run that long:
#: the job ahead waits for it, where an idle child might have freed first
AHEAD_WITHIN = 0.01
#: a job ahead waits in the child's pipe: only one that fits in the pipe's buffer at once, so
#: sending it never blocks the parent's thread (the collector, which enforces time limits)
AHEAD_MAX_BYTES = 16384
#: weight of the newest run in a task's running mean of run times
_MEAN_WEIGHT = 0.2


def resident_kib() -> int:
    """This process's resident memory in KiB (0 when it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # no /proc: the peak instead (KiB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak
    except (ImportError, OSError):  # pragma: no cover
        return 0


def child_limits(conf: Any) -> tuple[int | None, int | None]:
    """``(max tasks, max resident KiB)`` per pool child from the app's settings (None: none)."""
    def positive(key: str) -> int | None:
        value = conf.get(key)
        if value in (None, "", 0, "0"):
            return None
        number = int(value)
        if number < 0:
            from ...exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"{key} must be a positive number of "
                                       f"{'tasks' if 'tasks' in key else 'KiB'}, not {value!r}")
        return number

    return positive("worker_max_tasks_per_child"), positive("worker_max_memory_per_child")


def _retire_reason(done: int, max_tasks: int | None, max_kib: int | None) -> str | None:
    """Why a child that has run ``done`` tasks leaves now, or None when it stays."""
    if max_tasks and done >= max_tasks:
        return f"ran {done} tasks (worker_max_tasks_per_child={max_tasks})"
    if max_kib:
        used = resident_kib()
        if used > max_kib:
            return (f"uses {used} KiB of resident memory (worker_max_memory_per_child="
                    f"{max_kib})")
    return None


def _send(conn: Connection, obj: Any) -> None:
    """One pickle per message on the pipe, without multiprocessing's reducer-aware pickler
    (jobs and outcomes hold no sockets or pipes): a cheaper step on the parent's hot path."""
    conn.send_bytes(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _job_bytes(job: tuple) -> bytes:
    """A job ``(id, message, delivery_info, ack_first, check_revoked)`` for the pipe: a plain
    message and its delivery as one flat tuple of their fields (the dataclasses pickled by field
    name took about 3x as long to write in the parent and to read in the child, a noop's job
    27 and 34 µs against 8 and 11); anything else (a batch's messages) pickled as it is."""
    job_id, message, info, delivery, check = job
    if message.__class__ is Message and (delivery is None or (
            delivery.__class__ is Delivery and delivery.message is message)):
        m, d = message, delivery
        held = None if d is None else (d.queue, d.receipt, d.delivery_count, d.redelivered,
                                       d.extra, d.exchange, d.routing_key)
        return pickle.dumps((job_id, m.body, m.content_type, m.content_encoding, m.headers,
                             m.properties, info, check, held), pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(job, pickle.HIGHEST_PROTOCOL)


def _recv_job(conn: Connection) -> Any:
    """A job as ``_job_bytes`` wrote it (a flat one has 9 items, a whole one 5), or None (the
    parent says to leave)."""
    t = pickle.loads(conn.recv_bytes())
    if t is None or len(t) != 9:
        return t
    message = Message(t[1], t[2], t[3], t[4], t[5])
    held = t[8]
    delivery = None if held is None else Delivery(message, *held)
    return t[0], message, t[6], delivery, t[7]


#: an ``Ending`` crosses the pipe as its place here: unpickling an enum member by value costs
#: more than the rest of an outcome
_ENDINGS = tuple(Ending)
_ENDING_INDEX = {ending: index for index, ending in enumerate(_ENDINGS)}


def _send_outcome(conn: Connection, job_id: Any, outcome: Outcome, retiring: str | None) -> None:
    """A child's report of one job, as one flat tuple of plain values: pickling the dataclass
    (by field name, the ending by value) took 8 µs in the child and 7 µs to read back in the
    parent's collector, against about 1 µs each this way. ``retval`` and ``pending`` stay here
    (the child stored them)."""
    o = outcome
    conn.send_bytes(pickle.dumps(
        (job_id, retiring, o.task_id, o.state, _ENDING_INDEX[o.ending], o.runtime, o.retval_repr,
         o.exc_repr, o.traceback, o.reason, o.signum, o.limit, o.failure, o.members),
        pickle.HIGHEST_PROTOCOL))


def _recv_outcome(conn: Connection) -> tuple[Any, Outcome, str | None]:
    """``(job id, outcome, retiring)`` as ``_send_outcome`` sent them."""
    t = pickle.loads(conn.recv_bytes())
    return t[0], Outcome(t[2], t[3], _ENDINGS[t[4]], t[5], t[6], t[7], t[8], None, t[9], t[10],
                         t[11], None, t[12], t[13]), t[1]


def _child_main(conn: Connection, runner: Any, index: int, terminate_flag: Any,
                limits: tuple[int | None, int | None] = (None, None)) -> None:
    from ...exceptions import SoftTimeLimitExceeded
    from ..executor import in_task_code

    def on_alarm(signum: int, frame: Any) -> None:
        if in_task_code[0]:  # only ever inside the task's own code, never a result write
            raise SoftTimeLimitExceeded()

    running: list[Any] = [None]  # the id of the job this child runs now, or None
    #: a terminate came for a job this child was not running: looked at as each job starts
    #: (a job waiting in the pipe may be terminated before this child has read it)
    early_term: list[bool] = [False]

    def stop_if_asked(job_id: Any) -> None:
        if terminate_flag.target == job_id:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        # SIGTERM to the whole process group means "warm shutdown": the parent handles it and
        # this child finishes its task. Only a terminate the parent asked for stops the child,
        # and only while the job it names runs: a job that waited ahead may have started
        # meanwhile, and it is not the one to stop.
        target = terminate_flag.target
        if target is None:
            return
        if target == running[0]:
            stop_if_asked(target)
        else:
            early_term[0] = True

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    if signals.worker_process_init.receivers:
        signals.worker_process_init.send(sender=None)
    max_tasks, max_kib = limits
    done = 0
    together = _settles_together(runner)
    #: a job read ahead, whose early ack went out with the last task's result (None: read one)
    job: Any = None
    job_poller = _pipe_poller(conn)
    look = AdaptiveSpin(CHILD_BUSY_POLL, within=CHILD_LOOKS_WITHIN)
    try:
        while True:
            if job is None:
                try:
                    look_to, began = look.begin()
                    _await_job(job_poller, look_to)
                    job = _recv_job(conn)
                    look.end(began)
                except (EOFError, OSError):
                    break
                if job is None:
                    break
                running[0] = job[0]  # a terminate from here on stops it (its ack too)
                if early_term[0]:
                    stop_if_asked(job[0])
                if job[3] is not None:
                    refused = _ack_before_start(runner, job[1], job[3], job[4],
                                                shared=together is not None)
                    if refused is not None:
                        running[0] = None
                        _send_outcome(conn, job[0], refused, None)
                        job = None
                        continue
            job_id, message, delivery_info = job[:3]
            job = None
            _, soft = runner.limits(message)
            if soft:
                signal.setitimer(signal.ITIMER_REAL, soft)
            running[0] = job_id  # (a job read ahead: from its start on)
            if early_term[0]:
                stop_if_asked(job_id)
            try:
                outcome = runner(message, delivery_info)
            finally:
                running[0] = None
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            done += 1
            retiring = _retire_reason(done, max_tasks, max_kib)
            unconfirmed = None
            if together is not None:
                job, unconfirmed = _store_with_next(together, conn, job_poller, outcome,
                                                    retiring)
                if job is not None and job is not _LEAVE:
                    running[0] = job[0]  # before the parent hears this task ended
            outcome.retval = None  # values were stored by the child; keep the pipe light
            outcome.pending = None
            _send_outcome(conn, job_id, outcome, retiring)
            if unconfirmed is not None:  # the job read ahead did not start: the parent decides
                _send_outcome(conn, *unconfirmed, None)
            if retiring or job is _LEAVE:
                break
    finally:
        if signals.worker_process_shutdown.receivers:
            signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


#: endings of a job its child never started (not counted as run)
_UNSTARTED = frozenset({Ending.NOT_STARTED, Ending.REVOKED})

#: what ``_store_with_next`` returns when the message read ahead told the child to leave
_LEAVE: Any = ("leave",)


def _settles_together(runner: Any) -> tuple[Any, Any, Any] | None:
    """(app, transport, result store) when this child's broker shares its connection with the
    result store (SQLite on one file, Redis): a task's result then goes out with the early
    ack of the job waiting ahead, in one transaction (one round trip). None otherwise."""
    from ...backends.base import StagedWrites
    from ...transport.base import SharedConnectionSettling

    app = getattr(runner, "app", None)
    if app is None or not hasattr(runner, "collect_writes"):
        return None
    try:
        transport, backend = app.transport, app.backend
        shared = (isinstance(transport, SharedConnectionSettling)
                  and isinstance(backend, StagedWrites)
                  and transport.shares_connection_with(backend))
    except Exception:  # noqa: BLE001 - it only decides how results go out: each on its own
        logger.exception("could not tell whether results can ride with acks; each result "
                         "is stored on its own")
        return None
    if not shared:
        return None
    runner.collect_writes = True  # this process's own runner: results come back pending
    return app, transport, backend


def _store_with_next(together: tuple[Any, Any, Any], conn: Connection, poller: Any,
                     outcome: Outcome, retiring: str | None
                     ) -> tuple[Any, tuple[int, Outcome] | None]:
    """Store what the task left pending (its result, its chord count) and, when a job already
    waits in the pipe (``poller``: ``_pipe_poller(conn)``), that job's early ack after it: one
    transaction, committed before the parent hears of the task's end (so a result is stored
    before an ``acks_late`` ack). Returns the job read ahead (``_LEAVE`` when the parent said
    to leave; None when none was waiting) and, if it is not to start (its ack not confirmed,
    or the task found revoked with it), ``(its job id, its NOT_STARTED or REVOKED outcome)``."""
    app, transport, backend = together
    pending = outcome.pending
    ahead: Any = None
    if not retiring:
        try:
            if _readable_now(poller):
                ahead = _recv_job(conn)
                if ahead is None:
                    ahead = _LEAVE
        except (EOFError, OSError):  # the parent is gone: store the result all the same, leave
            ahead = _LEAVE
    ack = ahead[3] if ahead is not None and ahead is not _LEAVE else None
    if not pending and ack is None:
        return ahead, None
    replies: list[list[bool] | None] = []
    task_id = (ahead[1].headers.get("id") or "?") if ack is not None else "?"
    revoked: set[str] = set()
    try:
        if pending:
            pending.stage(app, backend)
        if ack is not None:
            transport.ack_later([ack], on_reply=replies.append)
            if ahead[4] and task_id != "?":  # the revoke check rides along too
                revoked = stored_revokes(backend, [task_id])
        transport.flush()
    except Exception as exc:  # noqa: BLE001 - what became of the result and the ack is told
        if not replies:
            replies.append(None)  # no answer: the parent finds out whether the ack went out
        if pending:
            try:  # the result alone (a failed transaction keeps it staged)
                transport.flush()
            except Exception:  # noqa: BLE001
                _not_recorded(outcome, exc)
    if ack is None:
        return ahead, None
    reply = replies[0] if replies else None
    if reply and reply[0]:
        if revoked:
            return None, (ahead[0], _revoked(task_id))
        return ahead, None
    logger.warning("could not ack task %s before it starts (%s)", task_id,
                   LEASE_LOST if reply is not None else "no answer")
    return None, (ahead[0], Outcome(task_id, states.PENDING, Ending.NOT_STARTED,
                                    reason=LEASE_LOST if reply is not None else "no answer"))


#: seconds a child that finished a job looks at its pipe for the next one before it blocks on
#: it. A write to a pipe whose reader sleeps makes the kernel wake that process, on a virtual
#: machine often on a CPU that went idle: dearer for the parent's thread that writes (the
#: pool's hot side) and slower for the child than a reader that is still looking. On Redis, a
#: drain of 20,000 noops with the default worker (prefork, 2 children) went from 4,100-4,400
#: to 4,900-6,200 tasks/s in interleaved runs (100-500 µs gave about the same), the main
#: process's CPU per task from 132-140 to 105-119 µs, and the round-trip p50 from 0.74-0.75
#: to 0.56-0.58 ms. On SQLite it made no difference that runs could tell.
CHILD_BUSY_POLL = 0.0005
#: a child looks only while its jobs come this close together: a wait for a job that lasted
#: longer makes the next wait block at once (until a wait is short again), so a child of a
#: lightly loaded worker does not spend ``CHILD_BUSY_POLL`` of CPU on every job. With 300 noops
#: a second sent at an even pace to a Redis default worker, the children's CPU went from 28-32%
#: to 20-27% of a core (three interleaved pairs); round trips, measured in pairs of workers
#: alive at once, did not change.
CHILD_LOOKS_WITHIN = 0.002


def _await_job(poller: Any, until: float) -> None:
    """Until the pipe ``poller`` watches has something to read, or the ``time.perf_counter``
    time ``until`` (0.0: at once), giving the CPU between looks to any process that wants it
    (the looks still cost this child's CPU)."""
    if until:
        look_until(lambda: poller.poll(0), until)


def _pipe_poller(conn: Connection) -> Any:
    """A poll object on the child's end of its pipe, made once per child: ``conn.poll(0)``
    builds a selector each call (3 µs against 16 here, on the path from a task's end to its
    stored result)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return poller


def _readable_now(poller: Any) -> bool:
    """Whether the pipe ``poller`` watches has something to read (or was closed), without
    waiting."""
    return bool(poller.poll(0))


def _not_recorded(outcome: Outcome, exc: BaseException) -> None:
    """The task ran but its result could not be stored: reported as the executor reports its
    own bookkeeping failing (never acked as done; an ``acks_late`` message runs again). The
    writes stay staged and go out with this process's next transaction."""
    logger.critical("Internal error storing the result of task %s: %r", outcome.task_id, exc)
    outcome.state = states.FAILURE
    outcome.ending = Ending.INTERNAL_ERROR
    outcome.exc_repr = repr(exc)


def _ack_before_start(runner: Any, message: Any, delivery: Any,
                      check_revoked: bool = False, *, shared: bool = False) -> Outcome | None:
    """The task's early ack, sent and confirmed by this child before the task starts (None:
    confirmed). Unconfirmed, the task does not start and the parent decides, as it would for an
    ack it had sent itself. ``check_revoked``: the task's revoke is looked up in the store here,
    so the parent need not look before sending the job; a task found revoked does not start
    (``REVOKED``). With ``shared`` (the broker's connection is the result store's) the look-up
    goes in the ack's round trip; otherwise it follows the ack, and a store that cannot be read
    leaves the task to run, relying on the parent's synced revokes, as the parent's own look did."""
    task_id = message.headers.get("id") or "?"
    transport = runner.app.transport
    check_revoked = check_revoked and task_id != "?"
    revoked: set[str] = set()
    try:
        if check_revoked and shared:
            replies: list[list[bool] | None] = []
            transport.ack_later([delivery], on_reply=replies.append)
            revoked = stored_revokes(runner.app.backend, [task_id])  # carries the ack
            transport.flush()  # a no-op when the read carried it
            confirmed = replies[0] if replies else None
        else:
            confirmed = transport.ack([delivery])
    except Exception as exc:  # noqa: BLE001 - the parent finds out what became of the ack
        logger.warning("could not ack task %s before it starts: %r", task_id, exc)
        return Outcome(task_id, states.PENDING, Ending.NOT_STARTED, reason=repr(exc))
    if not (confirmed and confirmed[0]):
        return Outcome(task_id, states.PENDING, Ending.NOT_STARTED, reason=LEASE_LOST)
    if check_revoked and not shared:
        try:
            revoked = stored_revokes(runner.app.backend, [task_id])
        except Exception as exc:  # noqa: BLE001 - the revokes the parent synced still hold
            logger.warning("could not read the stored revoke of task %s (%r); relying on the "
                           "last sync", task_id, exc)
    return _revoked(task_id) if revoked else None


def _revoked(task_id: str) -> Outcome:
    """A task acked by its pool process and found revoked: it never starts."""
    return Outcome(task_id, states.REVOKED, Ending.REVOKED, reason="revoked")


def _spawned_child_main(conn: Connection, respawn: tuple, index: int,
                        terminate_flag: Any,
                        limits: tuple[int | None, int | None] = (None, None)) -> None:
    """Entry point of a replacement child: load the app by its ``-A`` spec, then serve jobs."""
    app_spec, overrides, hostname = respawn
    from ...utils.imports import find_app
    from ..worker import Runner

    app = find_app(app_spec)
    if overrides:
        app.conf.update(overrides)
    _child_main(conn, Runner(app, hostname, app_spec=app_spec, overrides=overrides), index,
                terminate_flag, limits)


class _TerminateFlag:
    """The id of the job to terminate, in a small file: set by the parent before it sends a
    terminate signal, read by the child's SIGTERM handler, which stops only that job. A file
    (not shared memory) works the same for forked and freshly started children and needs no
    helper process or thread to hand it over."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="celeriac-child-", suffix=".flag")
        os.close(fd)

    @property
    def target(self) -> int | None:
        try:
            with open(self.path, "rb") as fh:
                text = fh.read(32)
        except OSError:
            return None
        return int(text) if text.strip().lstrip(b"-").isdigit() else None

    @target.setter
    def target(self, job_id: int) -> None:
        with open(self.path, "wb") as fh:
            fh.write(str(int(job_id)).encode())

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _Child:
    __slots__ = ("process", "conn", "job", "index", "deadline", "hard", "terminate_flag",
                 "stop_reason", "retiring", "shrunk", "exited", "fds", "ahead", "started",
                 "done", "doomed", "sending")

    def __init__(self, process: Any, conn: Connection, index: int, terminate_flag: Any) -> None:
        self.process = process
        self.conn = conn
        self.job: tuple | None = None
        self.index = index
        self.deadline: float | None = None
        self.hard: float | None = None
        self.terminate_flag = terminate_flag
        #: why the parent stopped this child, and for which job: ("timeout", hard, job id) or
        #: ("terminated", signum, job id)
        self.stop_reason: tuple[str, Any, Any] | None = None
        #: it reached its worker_max_tasks/memory_per_child limit and is leaving: no more jobs
        self.retiring = False
        #: the pool shrank: it was told to leave, and nothing takes its place
        self.shrunk = False
        #: its exit was seen (its sentinel fired); kept as a flag so the hot path asks no
        #: ``waitpid`` per look
        self.exited = False
        #: what the collector watches: the pipe's and the process sentinel's descriptors
        self.fds = (conn.fileno(), process.sentinel)
        #: (job, hard limit) sent ahead: in the pipe, started as soon as ``job`` ends
        self.ahead: tuple[tuple, float | None] | None = None
        #: when ``job`` was sent or (a job ahead) began (monotonic)
        self.started = 0.0
        #: tasks it has reported (its own count decides when it retires)
        self.done = 0
        #: a job ahead that a terminate was asked for: stopped as soon as it starts
        self.doomed: tuple[int, int] | None = None
        #: held from choosing this child (under the pool's lock) until the job's bytes are
        #: written: a job and the job ahead of it, submitted from two threads, reach the pipe
        #: whole and in the order the pool assigned them
        self.sending = threading.Lock()

    def idle(self) -> bool:
        return self.job is None and not self.retiring and not self.exited

    def takes_ahead(self, now: float, means: dict[str, float],
                    max_tasks: int | None) -> bool:
        """Whether a job may wait in this child's pipe behind the task it runs."""
        job = self.job
        if (job is None or self.ahead is not None or self.retiring or self.exited
                or self.stop_reason is not None
                or (max_tasks is not None and self.done + 1 >= max_tasks)):
            return False
        mean = means.get(_task_name(job[1]))
        return mean is not None and mean <= AHEAD_WITHIN and now - self.started < AHEAD_WITHIN


class ProcessPool:
    """A set of forked children; any idle child takes the next job."""

    #: ``submit(..., ack_first=delivery)``: the child sends the early ack before the task starts
    acks_before_start = True

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone) -> None:
        self.runner = runner
        #: children serving jobs (0 only while an autoscaled pool is at its minimum of 0)
        self.limit = max(0, concurrency)
        self.on_done = on_done
        app = getattr(runner, "app", None)
        #: (max tasks, max resident KiB) per child; each child checks its own after every task
        self.child_limits = child_limits(app.conf) if app is not None else (None, None)
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._collector: threading.Thread | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._selector: selectors.BaseSelector | None = None  # the collector's, while it runs
        #: set by the consumer: starts waiting jobs from the collector as soon as a slot frees
        self.start_next: Callable[[], None] | None = None
        self._next_index = self.limit  # names of children added by grow()
        #: each task name's running mean of run times (seconds), as the parent sees them
        self._means: dict[str, float] = {}
        #: set by the consumer: a child looks up the revoke of each job it acks itself, in the
        #: ack's round trip (Outcome ``REVOKED``: it did not start), so the consumer need not
        #: look it up on the parent's path before sending the job
        self.check_revokes = False

    # ---- children ------------------------------------------------------------------------------
    def _spawn(self, index: int, fresh: bool = False) -> _Child:
        """Fork a child (at start-up, before our threads exist) or, for a replacement, start a
        fresh interpreter when the app can be found again by its ``-A`` spec."""
        if signals.worker_before_create_process.receivers:
            signals.worker_before_create_process.send(sender=self)
        respawn = getattr(self.runner, "respawn_args", lambda: None)() if fresh else None
        ctx = _spawn_ctx if respawn else _ctx
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        terminate_flag = _TerminateFlag()
        target: Callable[..., None]
        if respawn:
            target, args = _spawned_child_main, (child_conn, respawn, index, terminate_flag,
                                                 self.child_limits)
        else:
            target, args = _child_main, (child_conn, self.runner, index, terminate_flag,
                                         self.child_limits)
        process = ctx.Process(target=target, args=args, name=f"ForkPoolWorker-{index + 1}",
                              daemon=True)
        process.start()
        child_conn.close()
        return _Child(process, parent_conn, index, terminate_flag)

    def start(self) -> None:
        self._children = [self._spawn(i) for i in range(self.limit)]
        self._collector = threading.Thread(target=self._collect, name="celeriac-pool-collector",
                                           daemon=True)
        self._collector.start()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children]

    def grow(self, n: int) -> int:
        """Start ``n`` more children (as replacements start); returns how many were added."""
        with self._lock:
            if self._stopping or n <= 0:
                return 0
            indexes = list(range(self._next_index, self._next_index + n))
            self._next_index += n
        added = [self._spawn(index, fresh=True) for index in indexes]
        with self._lock:
            stopping = self._stopping  # stop() may have begun while these were forking
            self._children.extend(added)
            if not stopping:
                self.limit += len(added)
        if stopping:  # its snapshot of the children missed these: tell them to leave too
            for child in added:
                child.retiring = True
                _tell_to_leave(child)
            return 0
        os.write(self._wakeup_w, b"x")  # the collector watches the new children too
        return len(added)

    def shrink(self, n: int) -> int:
        """Tell up to ``n`` idle children to leave, never one running a task; returns how many."""
        with self._lock:
            leaving = [c for c in self._children if c.idle()][-n:] if n > 0 else []
            for child in leaving:
                child.retiring = child.shrunk = True
            self.limit -= len(leaving)
        for child in leaving:
            _tell_to_leave(child)
        return len(leaving)

    def free_slots(self) -> int:
        # A dead child is not a free slot, even before the collector has replaced it.
        with self._lock:
            return sum(1 for c in self._children if c.idle())

    def ahead_slots(self) -> int:
        """How many jobs could be sent ahead now (``submit`` with ``ack_first``) to children
        whose task should end soon: slots for jobs whose child sends their early ack."""
        now = time.monotonic()
        max_tasks = self.child_limits[0]
        with self._lock:
            return sum(1 for c in self._children if c.takes_ahead(now, self._means, max_tasks))

    def submit(self, job_id: int, message: Any, delivery_info: dict, *,
               ack_first: Any = None) -> bool:
        """Hand the job to an idle child or, with ``ack_first`` and none idle, ahead to a child
        whose task should end soon (``ahead_slots``); False if neither (the caller keeps the
        job). ``ack_first``: the delivery whose early ack the child sends (and checks) first,
        looking up the task's revoke with it when ``check_revokes`` is set."""
        hard, _ = self.runner.limits(message)
        job = (job_id, message, delivery_info, ack_first,
               self.check_revokes and ack_first is not None)
        data = _job_bytes(job)
        now = time.monotonic()
        with self._lock:
            idle = next((c for c in self._children if c.idle()), None)
            ahead = idle is None
            if ahead:
                if ack_first is None or len(data) > AHEAD_MAX_BYTES:
                    return False
                max_tasks = self.child_limits[0]
                busy = next((c for c in self._children
                             if c.takes_ahead(now, self._means, max_tasks)), None)
                if busy is None:
                    return False
                child = busy
                child.ahead = (job, hard)
            else:
                assert idle is not None
                child = idle
                child.job = job
                child.hard = hard
                child.started = now
                child.deadline = now + hard if hard else None
            child.sending.acquire()
        try:
            try:
                child.conn.send_bytes(data)
            finally:  # before the pool's lock is taken again below (never both ways round)
                child.sending.release()
        except (OSError, ValueError):  # it died since its exit was last looked at
            with self._lock:
                if ahead:
                    if child.ahead is None or child.ahead[0][0] != job_id:
                        # its task ended meanwhile and this job took its place: the pool
                        # reports it lost when it finds the child gone, and the consumer gives
                        # it back, its early ack never having gone out
                        child.exited = True
                        return True
                    child.ahead = None
                else:
                    child.job = None
                    child.deadline = None
                child.exited = True
            return False
        if hard and not ahead:
            os.write(self._wakeup_w, b"x")  # the collector re-plans its wait around the deadline
        return True

    def terminate(self, job_id: int, signum: int) -> bool:
        """Stop the child running ``job_id`` with ``signum`` (revoke with terminate=True). A job
        ahead is stopped as soon as it starts (its child runs another task until then)."""
        with self._lock:
            child = next((c for c in self._children if c.job and c.job[0] == job_id), None)
            if child is None:
                waiting = next((c for c in self._children
                                if c.ahead is not None and c.ahead[0][0] == job_id), None)
                if waiting is None:
                    return False
                waiting.doomed = (job_id, signum)
                return True
            child.stop_reason = ("terminated", signum, job_id)
            child.terminate_flag.target = job_id
        return _kill(child, signum)

    def _enforce_deadlines(self) -> float:
        """Kill children past their hard limit; return seconds until the next deadline."""
        now = time.monotonic()
        wait_for = 1.0
        with self._lock:
            late = [c for c in self._children if c.deadline is not None and c.deadline <= now
                    and c.stop_reason is None]
            for c in self._children:
                if c.deadline is not None and c.deadline > now:
                    wait_for = min(wait_for, c.deadline - now)
            for c in late:
                c.stop_reason = ("timeout", c.hard, c.job[0] if c.job else None)
        for c in late:
            try:
                c.process.kill()
            except ProcessLookupError:
                pass
        return max(wait_for, 0.0)

    def _collect(self) -> None:
        # One selector for the pool's life, re-registered only when the set of children changes:
        # building one per wake-up (as ``multiprocessing.connection.wait`` does) cost the parent
        # more than reading the outcome itself.
        selector = self._selector = selectors.DefaultSelector()
        selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        watched: list[_Child] = []
        try:
            while True:
                with self._lock:
                    if self._stopping and all(c.job is None for c in self._children):
                        return
                    children = list(self._children)
                if children != watched:
                    for child in watched:
                        if child not in children:
                            _unregister(selector, child)
                    for child in children:
                        if child not in watched:
                            selector.register(child.fds[0], selectors.EVENT_READ, (child, True))
                            selector.register(child.fds[1], selectors.EVENT_READ, (child, False))
                    watched = children
                for key, _ in selector.select(timeout=self._enforce_deadlines()):
                    if key.data is None:
                        os.read(self._wakeup_r, 64)
                        continue
                    child, is_pipe = key.data
                    if child not in self._children:
                        continue  # replaced while handling another ready object
                    if is_pipe:
                        self._receive(child)
                    elif not child.process.is_alive():
                        child.exited = True
                        self._replace(child)
        finally:
            selector.close()

    def _receive(self, child: _Child) -> None:
        try:
            job_id, outcome, retiring = _recv_outcome(child.conn)
        except (EOFError, OSError):
            if not child.process.is_alive() or child.process.exitcode is not None:
                child.exited = True
                self._replace(child)
            return
        unstarted, doomed = self._ended(child, outcome, retiring)
        if retiring:
            logger.info("Replacing pool process %s (pid %s): it %s", child.process.name,
                        child.process.pid, retiring)
        self.on_done(job_id, outcome)
        if unstarted is not None:
            self.on_done(unstarted[0], _not_started(unstarted, "its pool process retired"))
        if doomed is not None:
            with self._lock:
                stop = child.job is not None and child.job[0] == doomed[0]
                if stop:
                    child.stop_reason = ("terminated", doomed[1], doomed[0])
                    child.terminate_flag.target = doomed[0]
            if stop:
                _kill(child, doomed[1])
        if self.start_next is not None and not retiring:
            self.start_next()

    def _ended(self, child: _Child, outcome: Outcome, retiring: Any
               ) -> tuple[tuple | None, tuple[int, int] | None]:
        """``child`` reported the end of its job: its job ahead, if any, is now the one it runs
        (unless it retires: then that job never starts and is returned). Also returns the
        terminate asked for that job while it waited, if any."""
        now = time.monotonic()
        with self._lock:
            job, ahead = child.job, child.ahead
            child.ahead = None
            if job is not None and outcome.ending not in _UNSTARTED:
                child.done += 1
                name = _task_name(job[1])
                ran = now - child.started
                mean = self._means.get(name)
                self._means[name] = ran if mean is None else mean + _MEAN_WEIGHT * (ran - mean)
            if retiring:
                child.retiring = True
            doomed, child.doomed = child.doomed, None
            if ahead is not None and not retiring:
                child.job, child.hard = ahead
                child.started = now
                child.deadline = now + child.hard if child.hard else None
                if child.hard:
                    os.write(self._wakeup_w, b"x")  # re-plan the collector's wait
                return None, doomed
            child.job = None
            child.deadline = None
            return (ahead[0] if ahead is not None else None), None

    def _replace(self, child: _Child) -> None:
        child.process.join(timeout=0.1)
        # An outcome it sent before leaving (a retiring child) may still be in the pipe when
        # its exit is seen first: read it, so its task counts as done, not lost.
        while child.job is not None and child in self._children:
            try:
                if not child.conn.poll():
                    break
                job_id, outcome, retiring = _recv_outcome(child.conn)
            except (EOFError, OSError):
                break
            unstarted, _ = self._ended(child, outcome, retiring)
            self.on_done(job_id, outcome)
            if unstarted is not None:
                self.on_done(unstarted[0], _not_started(unstarted, "its pool process retired"))
        with self._lock:
            if child not in self._children:
                return
            job = child.job
            child.job = None
            ahead, child.ahead = child.ahead, None
            position = self._children.index(child)
        exitcode = child.process.exitcode
        if self._selector is not None:  # before its descriptors close and their numbers recur
            _unregister(self._selector, child)
        child.conn.close()
        child.terminate_flag.remove()
        if job is not None:
            job_id, message = job[0], job[1]
            task_id = message.headers.get("id") or "?"
            reason = child.stop_reason
            if reason is not None and reason[2] != job_id:
                # stopped for the job before it, whose end it had reported meanwhile: this one
                # had only just started
                detail = (f"Worker exited prematurely: {_describe_exit(exitcode)} (its pool "
                          f"process was stopped for the task before it).")
                outcome = Outcome(task_id, states.FAILURE, Ending.WORKER_LOST, reason=detail)
            elif self._stopping:
                # A cold shutdown killed it: give the message back (when it is still held, i.e.
                # acks_late) rather than record a failure the task did not have.
                outcome = Outcome(task_id, states.REJECTED, Ending.ABANDONED,
                                  reason="cold shutdown")
            elif reason is not None and reason[0] == "timeout":
                logger.error("Hard time limit (%ss) exceeded for %s[%s]", reason[1],
                             message.headers.get("task"), task_id)
                outcome = Outcome(task_id, states.FAILURE, Ending.TIME_LIMIT, limit=reason[1])
            elif reason is not None and reason[0] == "terminated":
                outcome = Outcome.terminated(task_id, int(reason[1]))
            else:
                detail = f"Worker exited prematurely: {_describe_exit(exitcode)}."
                logger.error("Process %s (pid %s) died running task %s: %s", child.process.name,
                             child.process.pid, task_id, detail)
                outcome = Outcome(task_id, states.FAILURE, Ending.WORKER_LOST, reason=detail)
            self.on_done(job_id, outcome)
        if ahead is not None:  # it never started that one (it may have sent its early ack)
            self.on_done(ahead[0][0], _not_started(ahead[0], "its pool process ended first"))
        if not self._stopping and not child.shrunk:
            replacement = self._spawn(child.index, fresh=True)
            with self._lock:
                self._children[position] = replacement
                stopping = self._stopping
            if stopping:  # the shutdown began while it was starting: it is told to leave too
                _tell_to_leave(replacement)
            elif self.start_next is not None:  # its slot is free again: what waits starts now
                self.start_next()
        else:
            with self._lock:
                self._children.remove(child)

    # ---- shutdown ------------------------------------------------------------------------------
    def stop(self, wait: bool = True) -> None:
        """Warm (``wait``): let children finish their task. Cold: kill them. Safe to call again
        from another thread (a cold shutdown arriving during a warm one only kills)."""
        with self._lock:
            first = not self._stopping
            self._stopping = True
            children = list(self._children)
        if not wait:
            for c in children:
                if c.process.is_alive():
                    c.process.kill()
        if not first:
            return
        for c in children:
            _tell_to_leave(c)
        os.write(self._wakeup_w, b"x")
        for c in children:
            # Warm: a child with a task finishes it first (no limit); an idle one was told to exit
            # and gets 10 s before it is killed, so a stuck child cannot hold the shutdown forever.
            _await_exit(c, None if (wait and c.job is not None) else (10 if wait else 2))
        # a replacement started while this began (a child had just died) was told by the
        # collector; wait for it too, or the interpreter's exit would wait for it forever
        with self._lock:
            late = [c for c in self._children if c not in children]
        for c in late:
            _tell_to_leave(c)
            _await_exit(c, 10 if wait else 2)
        children += late
        if self._collector is not None:
            self._collector.join(timeout=5)
        for c in children:
            c.conn.close()
            c.terminate_flag.remove()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)


def _task_name(message: Any) -> str:
    return str(getattr(message, "headers", {}).get("task"))


def _not_started(job: tuple, reason: str) -> Outcome:
    """The outcome of a job ahead its child never started (whether its early ack went out is
    for the consumer to find out: no ``LEASE_LOST`` reason)."""
    return Outcome(job[1].headers.get("id") or "?", states.PENDING, Ending.NOT_STARTED,
                   reason=reason)


def _kill(child: _Child, signum: int) -> bool:
    try:
        os.kill(child.process.pid, signum)
    except ProcessLookupError:
        return False
    return True


def _unregister(selector: selectors.BaseSelector, child: _Child) -> None:
    for fd in child.fds:
        try:
            selector.unregister(fd)
        except (KeyError, ValueError):  # unregistered already
            pass


def _tell_to_leave(child: _Child) -> None:
    try:
        with child.sending:  # never inside a job's bytes
            _send(child.conn, None)
    except (OSError, ValueError):  # gone already, or its pipe closed
        pass


def _await_exit(child: _Child, timeout: float | None) -> None:
    child.process.join(timeout=timeout)
    if child.process.is_alive():
        logger.warning("pool child %s did not exit; killing it", child.process.pid)
        child.process.kill()
        child.process.join(timeout=5)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exitcode {exitcode}"
