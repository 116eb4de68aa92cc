"""``get()`` looks for its result for ``wait_spin`` seconds before it sleeps, and only while its
thread's waits are short (``result_backend_transport_options["wait_spin"]``), on the result
stores that wait for a change: Redis and SQLite, a real server and file. Whether a wait looked
is read from its count of looks (tests/spin_looks.py), not from any timing.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac import Celery, states
from celeriac.exceptions import ImproperlyConfigured
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError
from tests.spin_looks import LOOKED, Looks

SPIN = 0.5
#: how long the slow tasks "run": well past the spin
SLOW = 1.0


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


def _need_a_watch(app: Celery) -> None:
    """A SQLite wait looks only when it sleeps on inotify; where the watch is refused (the
    per-user limit on inotify instances) it polls every 0.25 ms instead, and has no look."""
    changes = getattr(app.backend, "_changes", None)
    if changes is not None and not changes().watching:
        pytest.skip("inotify is unavailable here: SQLite waits poll and do not look")


def _looks_of_wait(app: Celery, looks: Looks, delay: float) -> int:
    """The looks this thread took in ``wait_for`` of a task another thread stores after
    ``delay`` seconds."""
    backend = app.backend
    task_id = str(uuid.uuid4())
    backend.get_task_meta(task_id)  # the store's connections are open before the wait
    timer = threading.Timer(delay, backend.mark_as_done, (task_id, 42))
    metas: list[dict[str, Any]] = []
    timer.start()
    try:
        count = looks.during(lambda: metas.append(backend.wait_for(task_id, timeout=30)))
    finally:
        timer.join()
    assert metas[0]["status"] == states.SUCCESS and metas[0]["result"] == 42
    return count


def test_a_wait_looks_while_waits_are_short_and_sleeps_after_a_long_one(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app, looks = make_app(wait_spin=SPIN), Looks(monkeypatch)
    _need_a_watch(app)
    _looks_of_wait(app, looks, 0.0)  # connections open
    first = _looks_of_wait(app, looks, SLOW)  # the last wait was short: this one looks first
    after_long = _looks_of_wait(app, looks, SLOW)  # the last one outlasted the spin: sleeps
    short = _looks_of_wait(app, looks, 0.05)  # (sleeps at once too, and is over within the spin)
    after_short = _looks_of_wait(app, looks, SLOW)  # looks again
    assert first >= LOOKED, first
    assert after_long == 0, after_long
    assert short == 0, short
    assert after_short >= LOOKED, after_short


def test_a_wait_that_timed_out_counts_as_a_long_one(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app, looks = make_app(wait_spin=SPIN), Looks(monkeypatch)
    _need_a_watch(app)
    _looks_of_wait(app, looks, 0.0)
    with pytest.raises(CeleriacTimeoutError):
        app.backend.wait_for(str(uuid.uuid4()), timeout=SPIN * 1.5)
    assert _looks_of_wait(app, looks, 0.2) == 0


def test_no_spin_sleeps_at_once(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app, looks = make_app(wait_spin=0), Looks(monkeypatch)
    assert _looks_of_wait(app, looks, 0.2) == 0


@pytest.mark.parametrize("value", [-0.1, 2, "soon", True, float("nan")])
def test_a_bad_wait_spin_is_refused_by_name(make_app: Any, value: Any) -> None:
    app = make_app(wait_spin=value)
    with pytest.raises(ImproperlyConfigured, match="wait_spin"):
        app.backend  # noqa: B018 - the property builds the store, which checks the option
