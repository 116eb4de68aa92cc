"""What a main task may yield: each of celery-dispatcher's item forms, a signature and a chain
become one signature per subtask; anything else is refused with a message saying what to yield."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celery, chain, chord, group
from celeriac.canvas.signature import Signature
from celeriac.dispatch.items import InvalidItem, to_signature


@pytest.fixture
def add(app: Celery) -> Any:
    @app.task(name="items.add")
    def add(x: int = 0, y: int = 0) -> int:
        return x + y

    return add


def _parts(sig: Signature) -> tuple[str, tuple, dict, dict]:
    return sig.task, tuple(sig.args), dict(sig.kwargs), dict(sig.options)


@pytest.mark.parametrize("make_item, expected", [
    (lambda add: add, ("items.add", (), {}, {})),
    (lambda add: (add,), ("items.add", (), {}, {})),
    (lambda add: (add, (1, 2)), ("items.add", (1, 2), {}, {})),
    (lambda add: (add, [1, 2]), ("items.add", (1, 2), {}, {})),
    (lambda add: (add, None), ("items.add", (), {}, {})),
    (lambda add: (add, (1,), {"y": 2}), ("items.add", (1,), {"y": 2}, {})),
    (lambda add: (add, (1, 2), {}, {"queue": "q", "priority": 3}),
     ("items.add", (1, 2), {}, {"queue": "q", "priority": 3})),
    (lambda add: [add, (1, 2)], ("items.add", (1, 2), {}, {})),
    (lambda add: add.s(1, y=2), ("items.add", (1,), {"y": 2}, {})),
    (lambda add: add.s(1).set(queue="q"), ("items.add", (1,), {}, {"queue": "q"})),
    # a signature in a tuple: as apply_async on it, args are prepended, kwargs and options merged
    (lambda add: (add.s(1), (2,)), ("items.add", (2, 1), {}, {})),
    (lambda add: (add.s(1, y=5).set(queue="q"), (2,), {"y": 3}, {"priority": 4}),
     ("items.add", (2, 1), {"y": 3}, {"queue": "q", "priority": 4})),
], ids=["task", "(task,)", "(task, args)", "args as a list", "args None", "(task, args, kwargs)",
        "(task, args, kwargs, options)", "a list", "signature", "signature with options",
        "(signature, args)", "(signature, args, kwargs, options)"])
def test_each_item_form_becomes_one_signature(add: Any, make_item: Any,
                                              expected: tuple) -> None:
    sig = to_signature(make_item(add), add.app)
    assert type(sig) is Signature
    assert _parts(sig) == expected


def test_a_shared_task_is_an_item_too(app: Celery) -> None:
    from celeriac import _context, shared_task

    @shared_task(name="items.shared_double")
    def double(x: int) -> int:
        return 2 * x

    token = _context.current_app_var.set(app)  # as in a worker: the app running the main task
    try:
        assert _parts(to_signature((double, (4,)), app)) == (
            "items.shared_double", (4,), {}, {})
    finally:
        _context.current_app_var.reset(token)


def test_the_callers_signature_is_never_changed(add: Any) -> None:
    mine = add.s(1).set(queue="q")
    sig = to_signature((mine, (2,), {"y": 3}, {"priority": 4}), add.app)
    sig.options["task_id"] = "set by the dispatch"
    assert sig is not mine
    assert _parts(mine) == ("items.add", (1,), {}, {"queue": "q"})
    alone = to_signature(mine, add.app)
    alone.options["headers"] = {"x": 1}
    assert alone is not mine and "headers" not in mine.options


def test_a_chain_is_one_subtask(add: Any) -> None:
    mine = add.s(1, 2) | add.s(10)
    sig = to_signature(mine, add.app)
    assert isinstance(sig, chain) and sig is not mine
    assert [_parts(task) for task in sig.tasks] == [("items.add", (1, 2), {}, {}),
                                                    ("items.add", (10,), {}, {})]


@pytest.mark.parametrize("kind", ["group", "chord"])
def test_a_group_or_chord_is_refused_with_what_to_do_instead(add: Any, kind: str) -> None:
    item = group(add.s(1), add.s(2)) if kind == "group" else chord([add.s(1)], add.s())
    with pytest.raises(InvalidItem, match=f"a {kind} cannot be one subtask") as caught:
        to_signature(item, add.app)
    assert "yield its members one by one" in str(caught.value)


@pytest.mark.parametrize("make_item", [
    lambda add: 42,
    lambda add: "items.add",
    lambda add: None,
    lambda add: (),
    lambda add: (add, (), {}, {}, "a fifth"),
    lambda add: (42, (1,)),
    lambda add: ("items.add", (1,)),
    lambda add: (group(add.s(1)), (2,)),
], ids=["int", "task name", "None", "empty tuple", "five parts", "not a task", "name in a tuple",
        "group in a tuple"])
def test_anything_else_is_refused_naming_the_item_and_the_forms(add: Any, make_item: Any) -> None:
    item = make_item(add)
    with pytest.raises(InvalidItem) as caught:
        to_signature(item, add.app)
    message = str(caught.value)
    assert message.startswith(f"dispatch: cannot send {item!r}")
    assert "yield a task, a signature, or a tuple (task, args, kwargs, options)" in message


def test_invalid_item_is_a_type_error() -> None:
    assert issubclass(InvalidItem, TypeError)
