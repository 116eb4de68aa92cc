"""``@dispatch`` itself: bare or with options, above or below ``@app.task`` and ``@shared_task``;
what it refuses at decoration; the main task's own options; and that what it makes is a task
like any other (``delay``, ``apply_async``, ``s``, a link in a chain), run eagerly or by an
in-process worker on memory://."""

from __future__ import annotations

import threading
from typing import Any, AsyncIterator, Callable, Generator, Iterator

import pytest

from celeriac import Celery, shared_task
from celeriac.dispatch import DispatchConfig, dispatch
from celeriac.task import Task
from celeriac.testing import start_worker

TIMEOUT = 10.0


# ---- shared tasks (module level, as users write them; every app gets them) ----------------------
@shared_task(name="decorator.shared_triple")
def shared_triple(x: int) -> int:
    return 3 * x


@dispatch
@shared_task(name="decorator.shared_above")
def shared_above(n: int) -> Generator[Any, None, str]:
    for i in range(n):
        yield shared_triple, (i,)
    return "above"


@shared_task(name="decorator.shared_below")
@dispatch(auto_ignore=False)
def shared_below(n: int) -> Generator[Any, None, str]:
    for i in range(n):
        yield shared_triple, (i,)
    return "below"


class Heard:
    """A ``receiver=`` that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, **named: Any) -> None:
        with self.lock:
            self.calls.append(named)

    def retvals(self, root_id: str | None = None) -> list[Any]:
        return sorted(c["retval"] for c in self.calls if root_id in (None, c["root_id"]))


def _config(task: Task) -> DispatchConfig:
    return task.__wrapped__.__celeriac_dispatch__  # type: ignore[union-attr]


def _define(app: Celery, where: str, receiver: Any = None, **task_options: Any) -> Task:
    """A main task ``<where>.main(n)`` yielding ``double(i)`` for i < n, returning ``n * 10``;
    ``where`` is "below" (``@app.task`` then ``@dispatch``) or "above"."""

    @app.task(name=f"{where}.double")
    def double(x: int) -> int:
        return 2 * x

    def main(n: int) -> Generator[Any, None, int]:
        for i in range(n):
            yield double, (i,)
        return n * 10

    main.__qualname__ = main.__name__ = f"{where}_main"
    dispatcher = dispatch(receiver=receiver) if receiver is not None else dispatch
    if where == "below":
        return app.task(name=f"{where}.main", **task_options)(dispatcher(main))
    return dispatcher(app.task(name=f"{where}.main", **task_options)(main))


WHERE = ["below", "above"]


# ---- what the decorator makes -------------------------------------------------------------------
@pytest.mark.parametrize("where", WHERE)
def test_bare_dispatch_makes_a_registered_main_task(app: Celery, where: str) -> None:
    main = _define(app, where)
    assert isinstance(main, Task)
    assert app.tasks[f"{where}.main"] is main
    assert main.acks_late is True, "a main task whose worker dies is delivered again"
    assert main.runs_outside_pool is True, "waiting never takes a slot its subtasks need"
    assert main.is_coroutine is False
    assert _config(main) == DispatchConfig()
    for method in ("delay", "apply_async", "s", "si", "signature"):
        assert callable(getattr(main, method))


def test_dispatch_with_options_keeps_them(app: Celery) -> None:
    heard = Heard()
    options = {"queue": "subtasks", "priority": 2}

    @app.task
    @dispatch(options=options, receiver=heard, backend="memory://elsewhere", auto_ignore=False)
    def below() -> Iterator[Any]:
        yield from ()

    @dispatch(options=options, receiver=heard, backend="memory://elsewhere", auto_ignore=False)
    @app.task
    def above() -> Iterator[Any]:
        yield from ()

    expected = DispatchConfig(options, heard, "memory://elsewhere", False)
    assert _config(below) == _config(above) == expected
    options["queue"] = "changed afterwards"
    assert _config(below).options["queue"] == "subtasks", "the decorator keeps its own copy"
    assert below.runs_outside_pool and above.runs_outside_pool


@pytest.mark.parametrize("where", WHERE)
def test_explicit_task_options_win_over_the_main_task_defaults(app: Celery, where: str) -> None:
    main = _define(app, where, acks_late=False, max_retries=7)
    assert main.acks_late is False
    assert main.max_retries == 7
    assert main.runs_outside_pool is True


@pytest.mark.parametrize("where", WHERE)
def test_an_async_generator_makes_a_coroutine_main_task(app: Celery, where: str) -> None:
    async def main(n: int) -> AsyncIterator[Any]:
        for _ in range(n):
            yield app.tasks["celery.ping"], ()

    task = (app.task(dispatch(main)) if where == "below" else dispatch(app.task(main)))
    assert task.is_coroutine is True
    assert task.runs_outside_pool is True and task.acks_late is True


@pytest.mark.parametrize("main", [shared_above, shared_below], ids=["above", "below"])
def test_shared_task_main_tasks_are_main_tasks_on_every_app(make_app: Callable[..., Celery],
                                                            main: Any) -> None:
    from celeriac import _context
    from celeriac.dispatch.signals import subtask_success

    app = make_app(task_always_eager=True)
    task = app.tasks[main.name]
    assert task.runs_outside_pool is True and task.acks_late is True
    assert _config(task).auto_ignore is (main is shared_above)
    heard: list[Any] = []

    def on_success(sender: Any = None, retval: Any = None, **_: Any) -> None:
        heard.append(retval)

    subtask_success.connect(on_success, sender=main, weak=False, dispatch_uid="shared-main")
    token = _context.current_app_var.set(app)  # the app the proxy stands for here
    try:
        assert main.delay(3).get() == main.s(3).apply_async().get() == main.name.split("_")[-1]
    finally:
        _context.current_app_var.reset(token)
        subtask_success.disconnect(sender=main, dispatch_uid="shared-main")
    assert sorted(heard) == [0, 0, 3, 3, 6, 6]


# ---- what it refuses ----------------------------------------------------------------------------
def _plain(n: int) -> int:
    return n


async def _coroutine(n: int) -> int:
    return n


@pytest.mark.parametrize("fun", [_plain, _coroutine, lambda: 1], ids=["function", "async def",
                                                                      "lambda"])
@pytest.mark.parametrize("how", ["bare", "with options", "above @app.task"])
def test_a_function_that_is_not_a_generator_is_refused_at_decoration(
        make_app: Callable[..., Celery], fun: Any, how: str) -> None:
    with pytest.raises(TypeError, match="must be a generator function") as caught:
        if how == "bare":
            dispatch(fun)
        elif how == "with options":
            dispatch(options={"queue": "q"})(fun)
        else:
            dispatch(make_app().task(name="refused.main")(fun))
    assert "yield task, (args,)" in str(caught.value)


def test_something_that_is_not_a_function_is_refused() -> None:
    with pytest.raises(TypeError, match="decorates a generator function or a task, not 42"):
        dispatch(42)


# ---- a main task is a task: eagerly -------------------------------------------------------------
@pytest.mark.parametrize("where", WHERE)
def test_eagerly_every_way_of_calling_runs_the_dispatch(make_app: Callable[..., Celery],
                                                        where: str) -> None:
    app = make_app(task_always_eager=True)
    heard = Heard()
    main = _define(app, where, receiver=heard)
    results = [main.delay(3), main.apply_async((3,)), main.s(3).delay(), main.s().delay(3)]
    assert [r.get() for r in results] == [30] * 4
    assert main(2) == 20, "a direct call runs the dispatch too"
    for result in results:
        assert heard.retvals(result.id) == [0, 2, 4]
    assert len(heard.calls) == 4 * 3 + 2


@pytest.mark.parametrize("where", WHERE)
def test_eagerly_a_main_task_is_a_link_in_a_chain(make_app: Callable[..., Celery],
                                                  where: str) -> None:
    app = make_app(task_always_eager=True)
    main = _define(app, where)
    add = app.task(name="chain.add")(lambda x, y: x + y)
    assert (add.s(1, 2) | main.s() | add.s(100)).delay().get() == 130


# ---- a main task is a task: on a worker ---------------------------------------------------------
@pytest.mark.parametrize("where", WHERE)
def test_on_a_worker_a_main_task_in_a_chain_hears_its_subtasks(app: Celery, where: str) -> None:
    heard = Heard()
    main = _define(app, where, receiver=heard)
    add = app.task(name="chain.add")(lambda x, y: x + y)
    with start_worker(app, pool="threads", concurrency=2):
        assert (add.s(1, 2) | main.s() | add.s(100)).delay().get(timeout=TIMEOUT) == 130
        assert main.apply_async((4,), countdown=0).get(timeout=TIMEOUT) == 40
    assert heard.retvals() == sorted([0, 2, 4] + [0, 2, 4, 6])
