"""Execution pools: where a task's code runs (inline, threads, child processes, an event loop).

Every pool takes jobs ``(job_id, message, delivery_info)`` and reports each ``Outcome`` through the
``on_done(job_id, outcome)`` callback given at construction. The consumer never waits on a pool.
"""

from __future__ import annotations

from typing import Any, Callable

from ..outcome import Outcome

OnDone = Callable[[int, Outcome], None]


def create_pool(kind: str, runner: Any, concurrency: int, on_done: OnDone, *,
                hard_limits: bool = True) -> Any:
    """``kind`` is Celery's ``--pool`` name; ``prefork`` and ``processes`` are the same pool.
    ``hard_limits=False``: a thread pool that leaves hard time limits unenforced."""
    if kind in ("prefork", "processes", "process"):
        from .processes import ProcessPool

        return ProcessPool(runner, concurrency, on_done)
    if kind == "threads":
        from .threads import ThreadPool

        return ThreadPool(runner, concurrency, on_done, hard_limits=hard_limits)
    if kind == "solo":
        from .threads import SoloPool

        return SoloPool(runner, 1, on_done)
    if kind == "asyncio":
        from .aio import AsyncioPool

        return AsyncioPool(runner, concurrency, on_done)
    from ...exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"worker_pool: unknown pool {kind!r}; choose prefork, threads, solo or asyncio")
