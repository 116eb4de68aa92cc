"""``get()`` looks for its result for ``wait_spin`` seconds before it sleeps, and only while its
thread's waits are short (``result_backend_transport_options["wait_spin"]``), on the result
stores that wait for a change: Redis and SQLite, real servers and files.

The checks read the waiting thread's CPU time: a wait that looks spends about its whole spin on
the CPU, one that sleeps almost none. The margins are wide (a look yields the CPU between looks,
so on a busy machine it may get a fraction of it).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac import Celery, states
from celeriac.exceptions import ImproperlyConfigured

SPIN = 0.3
#: how long the slow tasks "run": well past the spin
SLOW = 0.8
#: CPU a wait that looked for SPIN seconds spends at least (a fifth of it)
LOOKED = SPIN / 5
#: CPU a wait that slept at once spends at most
SLEPT = 0.04


@pytest.fixture(params=["redis", "sqlite"])
def make_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    apps: list[Celery] = []

    def make(**transport_options: Any) -> Celery:
        if request.param == "redis":
            server = request.getfixturevalue("redis_server")
            prefix = request.getfixturevalue("redis_prefix")
            backend = f"{server}/9"
            transport_options.setdefault("global_keyprefix", prefix)
        else:
            backend = f"sqlite:///{tmp_path}/results.db"
        app = Celery(f"spin-{uuid.uuid4().hex[:8]}", broker="memory://", backend=backend,
                     set_as_current=False, result_backend_transport_options=transport_options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _cpu_of_wait(app: Celery, delay: float) -> float:
    """CPU seconds this thread spent in ``wait_for`` of a task another thread stores after
    ``delay`` seconds."""
    backend = app.backend
    task_id = str(uuid.uuid4())
    backend.get_task_meta(task_id)  # the store's connections are open before the clock starts
    timer = threading.Timer(delay, backend.mark_as_done, (task_id, 42))
    started = time.thread_time()
    timer.start()
    try:
        meta = backend.wait_for(task_id, timeout=30)
    finally:
        timer.join()
    assert meta["status"] == states.SUCCESS and meta["result"] == 42
    return time.thread_time() - started


def test_a_wait_looks_while_waits_are_short_and_sleeps_after_a_long_one(make_app: Any) -> None:
    app = make_app(wait_spin=SPIN)
    assert _cpu_of_wait(app, 0.0) < SLEPT  # stored at once: nothing to look for
    first = _cpu_of_wait(app, SLOW)  # the last wait was short: this one looks first
    after_long = _cpu_of_wait(app, SLOW)  # the last one outlasted the spin: sleeps at once
    short = _cpu_of_wait(app, 0.05)  # (sleeps at once too, and is over within the spin)
    after_short = _cpu_of_wait(app, SLOW)  # looks again
    assert first > LOOKED, first
    assert after_long < SLEPT, after_long
    assert short < SLEPT, short
    assert after_short > LOOKED, after_short


def test_no_spin_sleeps_at_once(make_app: Any) -> None:
    app = make_app(wait_spin=0)
    assert _cpu_of_wait(app, SLOW) < SLEPT


@pytest.mark.parametrize("value", [-0.1, 2, "soon", True, float("nan")])
def test_a_bad_wait_spin_is_refused_by_name(make_app: Any, value: Any) -> None:
    app = make_app(wait_spin=value)
    with pytest.raises(ImproperlyConfigured, match="wait_spin"):
        app.backend  # noqa: B018 - the property builds the store, which checks the option
