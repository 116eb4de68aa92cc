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
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import selectors
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from ... import signals, states
from ..outcome import LEASE_LOST, Ending, Outcome
from . import OnDone

logger = logging.getLogger("celeriac.worker")

_ctx = multiprocessing.get_context("fork")
#: Replacement children start as fresh interpreters: forking a process whose other threads may
#: hold locks (SQLite's, a socket's, logging's) can leave the child deadlocked on its first use.
_spawn_ctx = multiprocessing.get_context("spawn")


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


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _child_main(conn: Connection, runner: Any, index: int, terminate_flag: Any,
                limits: tuple[int | None, int | None] = (None, None)) -> None:
    from ...exceptions import SoftTimeLimitExceeded
    from ..executor import in_task_code

    def on_alarm(signum: int, frame: Any) -> None:
        if in_task_code[0]:  # only ever inside the task's own code, never a result write
            raise SoftTimeLimitExceeded()

    def on_term(signum: int, frame: Any) -> None:
        # SIGTERM to the whole process group means "warm shutdown": the parent handles it and
        # this child finishes its task. Only a terminate the parent asked for stops the child.
        if terminate_flag.value:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    if signals.worker_process_init.receivers:
        signals.worker_process_init.send(sender=None)
    max_tasks, max_kib = limits
    done = 0
    try:
        while True:
            try:
                job = _recv(conn)
            except (EOFError, OSError):
                break
            if job is None:
                break
            job_id, message, delivery_info, ack_first = job
            if ack_first is not None:
                refused = _ack_before_start(runner, message, ack_first)
                if refused is not None:
                    _send(conn, (job_id, refused, None))
                    continue
            _, soft = runner.limits(message)
            if soft:
                signal.setitimer(signal.ITIMER_REAL, soft)
            try:
                outcome = runner(message, delivery_info)
            finally:
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            outcome.retval = None  # values were stored by the child; keep the pipe light
            outcome.pending = None
            done += 1
            retiring = _retire_reason(done, max_tasks, max_kib)
            _send(conn, (job_id, outcome, retiring))
            if retiring:
                break
    finally:
        if signals.worker_process_shutdown.receivers:
            signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def _ack_before_start(runner: Any, message: Any, delivery: Any) -> Outcome | None:
    """The task's early ack, sent and confirmed by this child before the task starts (None:
    confirmed). Unconfirmed, the task does not start and the parent decides, as it would for an
    ack it had sent itself."""
    task_id = message.headers.get("id") or "?"
    try:
        confirmed = runner.app.transport.ack([delivery])
    except Exception as exc:  # noqa: BLE001 - the parent finds out what became of the ack
        logger.warning("could not ack task %s before it starts: %r", task_id, exc)
        return Outcome(task_id, states.PENDING, Ending.NOT_STARTED, reason=repr(exc))
    if confirmed and confirmed[0]:
        return None
    return Outcome(task_id, states.PENDING, Ending.NOT_STARTED, reason=LEASE_LOST)


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
    """One byte in a small file: set by the parent before it sends a terminate signal, read by
    the child's SIGTERM handler. A file (not shared memory) works the same for forked and freshly
    started children and needs no helper process or thread to hand it over."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="celeriac-child-", suffix=".flag")
        os.write(fd, b"0")
        os.close(fd)

    @property
    def value(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                return 1 if fh.read(1) == b"1" else 0
        except OSError:
            return 0

    @value.setter
    def value(self, flag: int) -> None:
        with open(self.path, "wb") as fh:
            fh.write(b"1" if flag else b"0")

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _Child:
    __slots__ = ("process", "conn", "job", "index", "deadline", "hard", "terminate_flag",
                 "stop_reason", "retiring", "shrunk", "exited", "fds")

    def __init__(self, process: Any, conn: Connection, index: int, terminate_flag: Any) -> None:
        self.process = process
        self.conn = conn
        self.job: tuple | None = None
        self.index = index
        self.deadline: float | None = None
        self.hard: float | None = None
        self.terminate_flag = terminate_flag
        #: why the parent stopped this child: ("timeout", hard) or ("terminated", signum)
        self.stop_reason: tuple[str, Any] | None = None
        #: it reached its worker_max_tasks/memory_per_child limit and is leaving: no more jobs
        self.retiring = False
        #: the pool shrank: it was told to leave, and nothing takes its place
        self.shrunk = False
        #: its exit was seen (its sentinel fired); kept as a flag so the hot path asks no
        #: ``waitpid`` per look
        self.exited = False
        #: what the collector watches: the pipe's and the process sentinel's descriptors
        self.fds = (conn.fileno(), process.sentinel)

    def idle(self) -> bool:
        return self.job is None and not self.retiring and not self.exited


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

    def submit(self, job_id: int, message: Any, delivery_info: dict, *,
               ack_first: Any = None) -> bool:
        """Hand the job to an idle child; False if none is idle (the caller keeps the job).
        ``ack_first``: the delivery whose early ack the child sends (and checks) first."""
        hard, _ = self.runner.limits(message)
        with self._lock:
            child = next((c for c in self._children if c.idle()), None)
            if child is None:
                return False
            child.job = (job_id, message, delivery_info, ack_first)
            child.hard = hard
            child.deadline = time.monotonic() + hard if hard else None
        try:
            _send(child.conn, child.job)
        except (OSError, ValueError):  # it died since its exit was last looked at
            with self._lock:
                child.job = None
                child.deadline = None
                child.exited = True
            return False
        if hard:
            os.write(self._wakeup_w, b"x")  # the collector re-plans its wait around the deadline
        return True

    def terminate(self, job_id: int, signum: int) -> bool:
        """Stop the child running ``job_id`` with ``signum`` (revoke with terminate=True)."""
        with self._lock:
            child = next((c for c in self._children if c.job and c.job[0] == job_id), None)
            if child is None:
                return False
            child.stop_reason = ("terminated", signum)
            child.terminate_flag.value = 1
        try:
            os.kill(child.process.pid, signum)
        except ProcessLookupError:
            return False
        return True

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
                c.stop_reason = ("timeout", c.hard)
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
            job_id, outcome, retiring = _recv(child.conn)
        except (EOFError, OSError):
            if not child.process.is_alive() or child.process.exitcode is not None:
                child.exited = True
                self._replace(child)
            return
        with self._lock:
            child.job = None
            child.deadline = None
            if retiring:
                child.retiring = True
        if retiring:
            logger.info("Replacing pool process %s (pid %s): it %s", child.process.name,
                        child.process.pid, retiring)
        self.on_done(job_id, outcome)
        if self.start_next is not None and not retiring:
            self.start_next()

    def _replace(self, child: _Child) -> None:
        child.process.join(timeout=0.1)
        # An outcome it sent before leaving (a retiring child) may still be in the pipe when
        # its exit is seen first: read it, so its task counts as done, not lost.
        while child.job is not None and child in self._children:
            try:
                if not child.conn.poll():
                    break
                job_id, outcome, _ = _recv(child.conn)
            except (EOFError, OSError):
                break
            with self._lock:
                child.job = None
                child.deadline = None
            self.on_done(job_id, outcome)
        with self._lock:
            if child not in self._children:
                return
            job = child.job
            child.job = None
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
            if self._stopping:
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


def _unregister(selector: selectors.BaseSelector, child: _Child) -> None:
    for fd in child.fds:
        try:
            selector.unregister(fd)
        except (KeyError, ValueError):  # unregistered already
            pass


def _tell_to_leave(child: _Child) -> None:
    try:
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
