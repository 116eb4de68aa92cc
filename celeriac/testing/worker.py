"""An in-process worker for tests: ``with start_worker(app): ...`` (Celery's ``start_worker``).

The worker runs in a daemon thread of the test process and is stopped warmly when the block ends.
Only the thread-based pools (``solo``, ``threads``, ``asyncio``) work in-process; prefork does not.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

from .. import _context, signals
from ..worker.worker import Worker

if TYPE_CHECKING:
    from ..app import Celery

__all__ = ["EmbeddedWorker", "IN_PROCESS_POOLS", "start_worker"]

#: the pools that can run inside the test process
IN_PROCESS_POOLS = ("solo", "threads", "asyncio")
_PROCESS_POOLS = ("prefork", "processes", "process")
_counter = itertools.count(1)
_POLL = 0.05


class EmbeddedWorker(Worker):
    """The worker ``start_worker`` yields: a normal :class:`Worker` running in a thread."""

    def reload(self, modules: Any = None, reload: bool = False, reloader: Any = None) -> None:
        """Kept for Celery test suites, which call it after defining tasks; a no-op here, since
        celeriac looks each message's task up in the app's registry when the message runs."""


@contextlib.contextmanager
def start_worker(app: "Celery", *, pool: str = "solo", concurrency: int = 1,
                 perform_ping_check: bool = True, ping_task_timeout: float = 10.0,
                 shutdown_timeout: float = 10.0, loglevel: int | str | None = None,
                 logfile: str | None = None, **kwargs: Any) -> Iterator[EmbeddedWorker]:
    """Start a worker for ``app`` in a thread, yield it once it consumes, stop it (warm) on exit.

    ``perform_ping_check`` sends the built-in ``celery.ping`` task to the worker's first queue and
    waits up to ``ping_task_timeout`` seconds for "pong" before yielding. ``loglevel`` and
    ``logfile``, when given, apply to the ``celeriac`` loggers for the block only. Other keyword
    arguments go to :class:`celeriac.worker.worker.Worker` (``hostname``, ``queues``,
    ``prefetch_multiplier``...). Leaving the block waits up to ``shutdown_timeout`` seconds for
    running tasks to finish, then raises ``RuntimeError`` if the worker is still running.
    """
    if pool in _PROCESS_POOLS:
        raise ValueError(f"start_worker() runs the worker in a thread of this process, where the "
                         f"{pool!r} pool cannot work: use pool='solo' or pool='threads' (or a "
                         f"`celeriac worker` subprocess to test prefork)")
    hostname = kwargs.pop("hostname", None) or f"testworker{os.getpid()}-{next(_counter)}@%h"
    worker = EmbeddedWorker(app, hostname=hostname, pool=pool, concurrency=concurrency, **kwargs)
    with _logging(loglevel, logfile), _default_app(app):
        ready = threading.Event()
        failure: list[BaseException] = []

        def on_ready(sender: Any = None, **_: Any) -> None:
            if sender is not None and sender is worker.consumer:
                ready.set()

        def run() -> None:
            app.set_current()  # this thread's context: what shared tasks resolve to here
            try:
                worker.start()
            except BaseException as exc:  # reported to the test's thread, not swallowed
                failure.append(exc)
                ready.set()

        uid = ("celeriac.testing.start_worker", id(worker))
        signals.worker_ready.connect(on_ready, weak=False, dispatch_uid=uid)
        thread = threading.Thread(target=run, name=f"celeriac-test-worker {worker.hostname}",
                                  daemon=True)
        try:
            thread.start()
            _wait_ready(ready, thread, failure, ping_task_timeout)
        except BaseException:
            if thread.is_alive():  # still starting (a timeout): stop it before reporting
                worker.stop(warm=False)
                thread.join(shutdown_timeout)
            raise
        finally:
            signals.worker_ready.disconnect(dispatch_uid=uid)
        try:
            if perform_ping_check:
                _ping(app, worker, ping_task_timeout)
            yield worker
        finally:
            worker.stop(warm=True)
            thread.join(shutdown_timeout)
            if thread.is_alive():
                worker.stop(warm=False)
                raise RuntimeError(
                    f"the test worker did not stop within shutdown_timeout={shutdown_timeout} s: "
                    f"a task is still running; raise shutdown_timeout if your tasks take longer")
            if failure:
                raise RuntimeError("the test worker failed while running") from failure[0]


def _wait_ready(ready: threading.Event, thread: threading.Thread,
                failure: list[BaseException], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready.wait(_POLL):
        if not thread.is_alive() and not ready.is_set():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test worker did not start within {timeout} s")
    if failure:
        raise RuntimeError("the test worker failed to start") from failure[0]
    if not ready.is_set():
        raise RuntimeError("the test worker stopped before it was ready")


def _ping(app: "Celery", worker: Worker, timeout: float) -> None:
    from ..exceptions import TimeoutError as ResultTimeout

    result = app.tasks["celery.ping"].apply_async(queue=worker.queues[0])
    try:
        answer = result.get(timeout=timeout)
    except ResultTimeout:
        raise RuntimeError(
            f"the test worker did not answer celery.ping within {timeout} s (sent to queue "
            f"{worker.queues[0]!r}); pass perform_ping_check=False to skip the check") from None
    if answer != "pong":
        raise RuntimeError(f"celery.ping answered {answer!r} instead of 'pong'")


@contextlib.contextmanager
def _default_app(app: "Celery") -> Iterator[None]:
    """Make ``app`` the process-wide default for the block: the worker's threads resolve shared
    tasks and results with it. The previous default comes back unless another app replaced it."""
    previous = list(_context._default_app)
    app.set_default()
    try:
        yield
    finally:
        if _context._default_app == [app]:
            _context._default_app[:] = previous


@contextlib.contextmanager
def _logging(loglevel: int | str | None, logfile: str | None) -> Iterator[None]:
    """Set the ``celeriac`` logger's level and add a file handler, for the block only."""
    logger = logging.getLogger("celeriac")
    old_level = logger.level
    handler: logging.Handler | None = None
    if loglevel is not None:
        logger.setLevel(loglevel.upper() if isinstance(loglevel, str) else loglevel)
    if logfile:
        handler = logging.FileHandler(logfile, encoding="utf-8")
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s: %(levelname)s/%(threadName)s] %(name)s: %(message)s"))
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
