"""What a canvas puts on the wire, compared with the messages real Celery 5.7 sent for the same
calls (``shared/vectors/celery/redis/send/{chain,group,chord,chunks,map,starmap}.json``).

The messages are published to the in-memory broker and read back as a worker would; the
comparison is of layout (which headers and embed fields are set, how signatures are nested),
since ids and times differ from run to run.
"""

from __future__ import annotations

import json

import pytest

from celeriac import Celery, chain, chord, group
from celeriac.protocol import serialization, v2
from tests.vectors import CELERY_VECTORS

VECTORS = CELERY_VECTORS / "redis"
ACCEPT = serialization.normalize_accept(["json"])


def _vector(name: str) -> dict:
    return json.loads((VECTORS / "send" / f"{name}.json").read_text())


def _vector_bodies(name: str) -> list[tuple[dict, list]]:
    """(headers, decoded body) of each captured message, oldest first."""
    out = []
    for message in reversed(_vector(name)["messages"]):  # LPUSHed: the list's tail is the oldest
        out.append((message["envelope"]["headers"], message["decoded_body"]))
    return out


@pytest.fixture
def app(app):
    """The canvas app with the tasks the captured messages call."""

    @app.task(name="tasks.add")
    def add(x, y):
        return x + y

    @app.task(name="tasks.xsum")
    def xsum(values):
        return sum(values)

    return app


def _sent(app: Celery) -> list[tuple[dict, list]]:
    deliveries = app.transport.fetch(["celery"], 1000, 0.1)
    return [(d.message.headers, json.loads(d.message.body)) for d in deliveries]


def _shape(sig: dict) -> dict:
    """A signature's layout without ids: keys, option names, nesting."""
    return {"keys": sorted(sig), "task": sig["task"], "args": sig["args"],
            "options": sorted(sig["options"]), "subtask_type": sig["subtask_type"],
            "immutable": sig["immutable"]}


def test_chain_sends_the_first_task_with_the_rest_reversed(app):
    add = app.tasks["tasks.add"]
    result = chain(add.s(2, 2), add.s(4), add.s(8)).apply_async()
    (headers, body), = _sent(app)
    (celery_headers, celery_body), = _vector_bodies("chain")
    assert body[:2] == celery_body[:2] == [[2, 2], {}]
    assert [_shape(s) for s in body[2]["chain"]] == [_shape(s) for s in celery_body[2]["chain"]]
    assert [s["args"] for s in body[2]["chain"]] == [[8], [4]]  # next step last
    assert [s["options"]["task_id"] for s in body[2]["chain"]] == [result.id, result.parent.id]
    assert headers["id"] == result.parent.parent.id
    assert headers["root_id"] == headers["id"] and headers["parent_id"] is None
    assert sorted(headers) == sorted(celery_headers)


def test_group_sends_one_message_per_member_with_group_headers(app):
    add = app.tasks["tasks.add"]
    result = group(add.s(i, i) for i in range(3)).apply_async()
    sent = _sent(app)
    celery = _vector_bodies("group")
    assert [h["group_index"] for h, _ in sent] == [h["group_index"] for h, _ in celery]
    assert {h["group"] for h, _ in sent} == {result.id}
    assert [h["id"] for h, _ in sent] == [r.id for r in result.results]
    assert all(h["root_id"] == h["id"] for h, _ in sent)
    assert [b for _, b in sent] == [b for _, b in celery]


def test_chord_embeds_the_body_in_each_header_task_and_stores_its_size(app):
    add, xsum = app.tasks["tasks.add"], app.tasks["tasks.xsum"]
    result = chord(group(add.s(i, i) for i in range(3)), xsum.s()).apply_async()
    sent = _sent(app)
    celery = _vector_bodies("chord")
    group_id = result.parent.id
    for (headers, body), (celery_headers, celery_body) in zip(sent, celery):
        assert (headers["group"], headers["group_index"]) == (group_id,
                                                               celery_headers["group_index"])
        assert _shape(body[2]["chord"]) == _shape(celery_body[2]["chord"])
        assert body[2]["chord"]["options"]["task_id"] == result.id
        assert body[2]["chord"]["options"]["group_id"] == group_id
        assert body[:2] == celery_body[:2]
    # the size Celery keeps at celery-taskset-meta-<gid>.s, written before any header task
    size_key = f"celery-taskset-meta-{group_id}.s"
    assert app.backend._get(size_key) == b"3"
    celery_size = _vector("chord")["other_redis_keys"]
    assert any(k.endswith(".s") and v["value"]["text"] == "3" for k, v in celery_size.items())


@pytest.mark.parametrize("name, build", [
    ("chunks", lambda tasks: tasks["tasks.add"].chunks(zip(range(4), range(4)), 2)),
    ("map", lambda tasks: tasks["tasks.xsum"].map([[1, 2], [3, 4]])),
    ("starmap", lambda tasks: tasks["tasks.add"].starmap([(1, 2), (3, 4)])),
])
def test_map_starmap_and_chunks_are_builtin_task_messages(app, name, build):
    vector = _vector(name)
    build(app.tasks).apply_async()
    sent = _sent(app)
    celery = _vector_bodies(name)
    assert [h["task"] for h, _ in sent] == [h["task"] for h, _ in celery]
    for (_, body), (_, celery_body) in zip(sent, celery):
        assert body[0] == celery_body[0] == []
        assert sorted(body[1]) == sorted(celery_body[1]) == ["it", "task"]
        assert _shape(body[1]["task"]) == _shape(celery_body[1]["task"])
        assert body[1]["it"] == celery_body[1]["it"], vector["call"]


def test_the_worker_decodes_what_the_canvas_sent(app):
    add = app.tasks["tasks.add"]
    chain(add.s(1, 1), add.s(2)).apply_async()
    (delivery,) = app.transport.fetch(["celery"], 10, 0.1)
    body = v2.decode_task(delivery.message, ACCEPT)
    assert body.chain[0]["task"] == "tasks.add" and body.chain[0]["args"] == [2]
    assert body.callbacks is None and body.chord is None



def test_a_group_leaves_its_members_as_they_were_and_sends_what_freeze_gave(app):
    add = app.tasks["tasks.add"]
    sig = add.s(1, 1)
    reused = group([sig, sig, add.s(2, 2)])
    first, second = reused.apply_async(), reused.apply_async()
    ids = [r.id for r in first.results + second.results]
    assert len(set(ids)) == 6 and sig.options == {}  # each send its own ids; sig untouched
    sent = _sent(app)
    assert [h["id"] for h, _ in sent] == ids
    assert [h["group"] for h, _ in sent] == [first.id] * 3 + [second.id] * 3
    assert [h["group_index"] for h, _ in sent] == [0, 1, 2] * 2

    frozen = group(add.s(i, i) for i in range(3))
    promised = frozen.freeze()
    result = frozen.apply_async()
    assert result.id == promised.id
    assert [r.id for r in result.results] == [r.id for r in promised.results]
    assert [h["id"] for h, _ in _sent(app)] == [r.id for r in promised.results]

    # partial arguments go before each member's own, but not into an immutable one
    group([add.s(1), add.si(5, 5)]).apply_async((10,))
    assert [body[0] for _, body in _sent(app)] == [[10, 1], [5, 5]]


def test_group_members_not_in_the_form_of_a_like_call_are_sent_as_before(app):
    """A member whose arguments are a list (a signature's dict set by hand) or whose own id is
    not a str is not vouched for as ``formed``: each is sent as ``Likes.add`` takes it."""
    add = app.tasks["tasks.add"]
    listed = add.s(0, 0)
    dict.__setitem__(listed, "args", [4, 4])
    result = group([add.s(1, 1), listed, add.s(2, 2).set(task_id="own-id"), add.s(3, 3)],
                   app=app).apply_async()
    sent = _sent(app)
    assert [h["id"] for h, _ in sent] == [r.id for r in result.results]
    assert result.results[2].id == "own-id"
    assert [h["argsrepr"] for h, _ in sent] == ["(1, 1)", "(4, 4)", "(2, 2)", "(3, 3)"]
    assert [body[0] for _, body in sent] == [[1, 1], [4, 4], [2, 2], [3, 3]]
    assert [h["group_index"] for h, _ in sent] == [0, 1, 2, 3]


def test_a_drawn_member_result_is_what_the_constructor_makes(make_app) -> None:
    """``AsyncResult._drawn`` (a group's members, without the constructor's checks) sets the
    same attributes as ``AsyncResult(...)``: a field added to one must be added to the other."""
    from celeriac.result import AsyncResult

    app = make_app()

    @app.task(name="t.noop")
    def noop() -> None: ...

    made = AsyncResult("an-id", app=app, task_name="t.noop")
    # (a group lays out its plain members' results as _drawn does)
    member = group([noop.s()], app=app).apply_async().results[0]
    for drawn in (AsyncResult._drawn("an-id", app, "t.noop"), member):
        names = set(vars(made)) | set(vars(drawn))  # fields left at the class's defaults
        assert {n: getattr(drawn, n) for n in names} == {
            n: getattr(made, n) for n in names} | {"id": drawn.id}
        assert type(drawn) is AsyncResult


def test_a_large_group_runs_publish_receivers_with_the_cycle_collector_on(app) -> None:
    """A group of thousands of members never pauses the cycle collector: code of the user's
    that runs while it is sent (here a publish signal's receiver) sees it as it left it."""
    import gc

    from celeriac import signals

    @app.task(name="t.noop")
    def noop() -> None: ...

    seen: list[bool] = []

    def receiver(**_: object) -> None:
        seen.append(gc.isenabled())

    assert gc.isenabled()
    signals.before_task_publish.connect(receiver)
    try:
        group(noop.s() for _ in range(2000)).apply_async()
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert len(seen) == 2000 and all(seen)
