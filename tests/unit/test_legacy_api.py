"""Celery idioms and older (Celery 2/3) API that projects migrating to celeriac still use.

``from celeriac import current_app`` before any app exists, ``from celeriac.task import task``,
``celeriac.task.sets``, ``gen_unique_id``, ``app.TaskSetResult`` and the ``@app.tasks`` slip; and
``result.get()`` inside a task when the result is already stored. Apps use the in-memory broker
and, where a task must run, an in-process worker (``celeriac.testing.start_worker``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import celeriac
from celeriac import Celery, GroupResult, TaskSetResult, states
from celeriac.canvas import Signature
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError
from celeriac.testing import start_worker

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (no app created yet); return its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def app():
    url = f"memory://{uuid.uuid4().hex}"
    app = Celery("legacy", broker=url, backend=url)
    yield app
    app.close()


# ---- current_app -----------------------------------------------------------------------------
def test_current_app_imported_before_any_app_follows_the_app_created_later():
    out = run_python("""
        from celeriac import current_app
        from celeriac import _context

        assert _context.get_current_app() is None, "importing current_app created an app"
        from celeriac import Celery

        app = Celery("x", broker="memory://x", backend="memory://x")
        assert current_app.main == "x"
        assert current_app == app and current_app._get_current_object() is app
        assert isinstance(current_app, Celery)

        @current_app.task
        def add(x, y):
            return x + y

        assert add.name == "x.add" and current_app.tasks["x.add"] is add
        assert add.app is app
        other = Celery("y", broker="memory://y", backend="memory://y")
        assert current_app.main == "y" and current_app._get_current_object() is other
        print("ok")
    """)
    assert out.strip() == "ok"


def test_current_app_used_before_any_app_is_a_default_app_replaced_by_the_next_one():
    out = run_python("""
        from celeriac import current_app
        from celeriac import Celery

        assert current_app.main == "default"
        fallback = current_app._get_current_object()
        assert "celery.ping" in current_app.tasks  # a real app, built-in tasks included
        assert current_app._get_current_object() is fallback  # made once
        app = Celery("x", broker="memory://x", backend="memory://x")
        assert current_app.main == "x" and current_app._get_current_object() is app
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_fallback_app_is_announced_once_in_the_log():
    out = run_python("""
        import logging
        from celeriac import current_app

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("celeriac").addHandler(handler)
        assert current_app.main == "default" and current_app.tasks  # used twice, made once
        [record] = [r for r in records if "fallback app" in r.getMessage()]
        assert record.levelno == logging.WARNING
        print(record.getMessage())
    """)
    assert "no app has been created yet, so a fallback app named 'default'" in out
    assert "create your Celery(...) app before using current_app" in out


def test_current_app_follows_the_app_made_current(app):
    from celeriac import current_app

    other = Celery("other", broker="memory://other", backend="memory://other",
                   set_as_current=False)
    try:
        assert current_app._get_current_object() is app
        other.set_current()
        assert current_app.main == "other" and current_app.tasks is other.tasks
        app.set_current()
        assert current_app.main == "legacy"
        assert celeriac.current_app is current_app  # one proxy, whichever way it is reached
    finally:
        other.close()


# ---- celeriac.task ---------------------------------------------------------------------------
def test_old_task_module_keeps_its_names():
    from celeriac import task as task_module
    from celeriac.task import Context, Task, shared_task, task

    assert Task is celeriac.Task and shared_task is celeriac.shared_task
    assert callable(task) and Context().retries == 0
    assert Path(task_module.__file__).name == "__init__.py"  # a package: it has .sets


def test_old_task_decorator_registers_on_the_current_app_and_runs(app):
    from celeriac.task import task

    @task
    def mul(x, y):
        return x * y

    @task(name="legacy.named", ignore_result=False)
    def named():
        return "named"

    assert mul.name == f"{__name__}.mul"
    assert app.tasks[mul.name].__wrapped__ is mul.__wrapped__
    assert "legacy.named" in app.tasks
    assert mul(3, 4) == 12
    with start_worker(app, perform_ping_check=False):
        assert mul.delay(6, 7).get(timeout=10) == 42
        assert named.apply_async().get(timeout=10) == "named"
    later = Celery("later", broker="memory://later", backend="memory://later",
                   set_as_current=False)
    try:
        assert mul.name in later.tasks  # apps created afterwards get it too, as in Celery 3
    finally:
        later.close()


def test_old_task_decorator_rejects_positional_options():
    from celeriac.task import task

    with pytest.raises(TypeError, match="keyword options only"):
        task("name", "extra")


def test_task_sets_module():
    from celeriac.canvas.legacy import TaskSet as CanvasTaskSet
    from celeriac.task.sets import TaskSet, maybe_subtask, subtask

    assert TaskSet is CanvasTaskSet
    sig = subtask("proj.add", (1, 2), {"z": 3}, countdown=1)
    assert isinstance(sig, Signature)
    assert (sig.task, sig.args, sig.kwargs, sig.options["countdown"]) == \
        ("proj.add", (1, 2), {"z": 3}, 1)
    assert maybe_subtask(dict(sig)) == sig


def test_taskset_from_sets_runs_on_a_worker(app):
    from celeriac.task.sets import TaskSet, subtask

    @app.task
    def add(x, y):
        return x + y

    with start_worker(app, perform_ping_check=False):
        result = TaskSet(tasks=[subtask(add.name, (i, i), app=app) for i in range(3)]
                         ).apply_async()
        assert isinstance(result, TaskSetResult)
        assert result.join(timeout=10) == [0, 2, 4]


# ---- utils, TaskSetResult ---------------------------------------------------------------------
def test_gen_unique_id_is_a_fresh_uuid4_string():
    from celeriac.utils import gen_unique_id

    ids = {gen_unique_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert isinstance(value, str) and uuid.UUID(value).version == 4 and str(uuid.UUID(value)) \
            == value


def test_app_tasksetresult_is_a_group_result_with_the_set_id(app):
    from celeriac import current_app
    from celeriac.utils import gen_unique_id

    @app.task
    def add(x, y):
        return x + y

    setid = gen_unique_id()
    with start_worker(app, perform_ping_check=False):
        results = [add.delay(i, 1) for i in range(3)]
        taskset = current_app.TaskSetResult(setid, results)
        assert isinstance(taskset, GroupResult) and isinstance(taskset, TaskSetResult)
        assert taskset.id == taskset.taskset_id == setid
        assert taskset.app is app and taskset.total == 3 and taskset.subtasks == results
        assert taskset.join(timeout=10) == [1, 2, 3]
        taskset.save()
    restored = GroupResult.restore(setid, app=app)
    assert restored is not None and restored.id == setid
    assert [r.id for r in restored.results] == [r.id for r in results]
    assert app.TaskSetResult(taskset_id=setid, subtasks=[]).id == setid


# ---- @app.tasks --------------------------------------------------------------------------------
def test_app_tasks_used_as_a_decorator_says_to_use_app_task(app):
    with pytest.raises(TypeError, match=r"not a decorator: did you mean @app\.task\?"):
        @app.tasks
        def add(x, y):
            return x + y

    with pytest.raises(TypeError, match=r"did you mean @app\.task"):
        app.tasks(name="x")
    assert "celery.ping" in app.tasks  # still the registry


# ---- get() inside a task ---------------------------------------------------------------------
def test_get_inside_a_task_returns_a_ready_result_and_refuses_to_wait(app):
    @app.task
    def add(x, y):
        return x + y

    @app.task
    def fail():
        raise KeyError("gone")

    @app.task
    def read(task_id):
        return app.AsyncResult(task_id).get()

    @app.task
    def read_failure(task_id):
        exc = app.AsyncResult(task_id).get(propagate=False)
        return f"{type(exc).__name__}: {exc}"

    @app.task
    def join(group_id, ids):
        return GroupResult(group_id, [app.AsyncResult(i) for i in ids], app=app).get()

    @app.task
    def wait_anyway(task_id):
        return app.AsyncResult(task_id).get(timeout=0.2, disable_sync_subtasks=False)

    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        done = add.delay(1, 2)
        assert done.get(timeout=10) == 3
        failed = fail.delay()
        failed.get(timeout=10, propagate=False)
        assert read.delay(done.id).get(timeout=10) == 3
        assert read_failure.delay(failed.id).get(timeout=10) == "KeyError: 'gone'"
        with pytest.raises(KeyError):
            read.delay(failed.id).get(timeout=10)  # propagate=True still raises the failure
        more = add.delay(2, 2)
        more.get(timeout=10)
        assert join.delay(str(uuid.uuid4()), [done.id, more.id]).get(timeout=10) == [3, 4]

        never = str(uuid.uuid4())  # never sent: stays PENDING
        refused = read.delay(never)
        with pytest.raises(RuntimeError, match=r"Never call result\.get\(\) within a task!"):
            refused.get(timeout=10)
        assert refused.state == states.FAILURE
        assert "disable_sync_subtasks=False" in str(refused.result)
        with pytest.raises(RuntimeError, match="Never call result.get"):
            join.delay(str(uuid.uuid4()), [done.id, never]).get(timeout=10)
        # disable_sync_subtasks=False waits, as on Celery (here until its timeout)
        with pytest.raises(CeleriacTimeoutError):
            wait_anyway.delay(never).get(timeout=10)
