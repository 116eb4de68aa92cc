"""The process pool (``prefork``): each task runs in a forked child, one task per child at a time.

The main process keeps the messages (and their leases); children only receive ``(job_id,
message)`` over a pipe and answer with an ``Outcome``. A child that dies mid-task is noticed through
its process sentinel: the job is reported as lost and a new child takes its place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection, wait
from typing import Any

from ... import signals, states
from ..executor import Outcome
from . import OnDone

logger = logging.getLogger("celeriac.worker")

_ctx = multiprocessing.get_context("fork")


def _child_main(conn: Connection, runner: Any, index: int) -> None:
    # The parent handles SIGTERM/SIGINT (warm shutdown); children finish their task and wait
    # for the parent to close the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signals.worker_process_init.receivers:
        signals.worker_process_init.send(sender=None)
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                break
            if job is None:
                break
            job_id, message, delivery_info = job
            outcome = runner(message, delivery_info)
            outcome.retval = None  # values were stored by the child; keep the pipe light
            conn.send((job_id, outcome))
    finally:
        if signals.worker_process_shutdown.receivers:
            signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


class _Child:
    __slots__ = ("process", "conn", "job", "index")

    def __init__(self, process: Any, conn: Connection, index: int) -> None:
        self.process = process
        self.conn = conn
        self.job: tuple | None = None
        self.index = index


class ProcessPool:
    """A fixed set of forked children; any idle child takes the next job."""

    def __init__(self, runner: Any, concurrency: int, on_done: OnDone) -> None:
        self.runner = runner
        self.limit = max(1, concurrency)
        self.on_done = on_done
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._collector: threading.Thread | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()

    # ---- children ------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Child:
        if signals.worker_before_create_process.receivers:
            signals.worker_before_create_process.send(sender=self)
        parent_conn, child_conn = _ctx.Pipe(duplex=True)
        process = _ctx.Process(target=_child_main, args=(child_conn, self.runner, index),
                               name=f"ForkPoolWorker-{index + 1}", daemon=True)
        process.start()
        child_conn.close()
        return _Child(process, parent_conn, index)

    def start(self) -> None:
        self._children = [self._spawn(i) for i in range(self.limit)]
        self._collector = threading.Thread(target=self._collect, name="celeriac-pool-collector",
                                           daemon=True)
        self._collector.start()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children]

    def free_slots(self) -> int:
        with self._lock:
            return sum(1 for c in self._children if c.job is None and c.process.is_alive())

    def submit(self, job_id: int, message: Any, delivery_info: dict) -> None:
        with self._lock:
            child = next(c for c in self._children if c.job is None and c.process.is_alive())
            child.job = (job_id, message, delivery_info)
        child.conn.send(child.job)

    def _collect(self) -> None:
        while True:
            with self._lock:
                if self._stopping and all(c.job is None for c in self._children):
                    return
                watch: dict[Any, _Child] = {}
                for c in self._children:
                    watch[c.conn] = c
                    watch[c.process.sentinel] = c
            ready = wait([*watch, self._wakeup_r], timeout=1.0)
            for obj in ready:
                if obj == self._wakeup_r:
                    os.read(self._wakeup_r, 64)
                    continue
                child = watch[obj]
                if obj is child.conn:
                    self._receive(child)
                elif not child.process.is_alive():
                    self._replace(child)

    def _receive(self, child: _Child) -> None:
        try:
            job_id, outcome = child.conn.recv()
        except (EOFError, OSError):
            if not child.process.is_alive() or child.process.exitcode is not None:
                self._replace(child)
            return
        with self._lock:
            child.job = None
        self.on_done(job_id, outcome)

    def _replace(self, child: _Child) -> None:
        child.process.join(timeout=0.1)
        with self._lock:
            if child not in self._children:
                return
            job = child.job
            child.job = None
            position = self._children.index(child)
        exitcode = child.process.exitcode
        child.conn.close()
        if job is not None:
            from ...exceptions import WorkerLostError

            job_id, message, _ = job
            reason = f"Worker exited prematurely: {_describe_exit(exitcode)}."
            logger.error("Process %s (pid %s) died running task %s: %s", child.process.name,
                         child.process.pid, message.headers.get("id"), reason)
            self.on_done(job_id, Outcome(message.headers.get("id") or "?", states.FAILURE,
                                         ack="lost", exc_repr=repr(WorkerLostError(reason))))
        if not self._stopping:
            replacement = self._spawn(child.index)
            with self._lock:
                self._children[position] = replacement
        else:
            with self._lock:
                self._children.remove(child)

    # ---- shutdown ------------------------------------------------------------------------------
    def stop(self, wait: bool = True) -> None:
        with self._lock:
            self._stopping = True
            children = list(self._children)
        if not wait:
            for c in children:
                if c.process.is_alive():
                    c.process.kill()
        for c in children:
            try:
                c.conn.send(None)
            except (OSError, ValueError):
                pass
        os.write(self._wakeup_w, b"x")
        for c in children:
            c.process.join(timeout=None if wait else 2)
        if self._collector is not None:
            self._collector.join(timeout=5)
        for c in children:
            c.conn.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exitcode {exitcode}"
