"""Messages spliced from a model (``v2.Likes``) and their Redis envelopes (``publish_runs``) are
byte for byte what the full encoders write: for every captured Celery call that may be a model
(groups with group_id/group_index, chords, links), and for members with other ids, arguments and
group indexes."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol import serialization
from celeriac.protocol.message import Message
from celeriac.protocol.v2 import decode_task, encode_task, likes_of
from celeriac.transport.base import Outgoing
from celeriac.transport.redis import _spliced
from celeriac.transport.redis.envelope import encode
from tests.vectors import CELERY_VECTORS

SENT = sorted(p for folder in ("send", "send-celery5.3.6", "send-celery5.5.3")
              for p in (CELERY_VECTORS / "redis" / folder).glob("*.json"))
TRANSPORT_KEYS = ("delivery_info", "body_encoding", "delivery_tag")
#: other calls made like each captured one: (id, args, kwargs, group index)
OTHERS = [
    ("5a0e3f8e-0000-4000-8000-000000000001", (), {}, 7),
    ("an id \"quoted\" é", (1, "two", [3.5, None]), {"k": {"n": True}}, None),
    ("5a0e3f8e-0000-4000-8000-000000000003", ["x" * 2000], {}, 0),
    ("5a0e3f8e-0000-4000-8000-000000000004", (), {"only": "kwargs"}, 12345),
]


def _cases() -> list[Any]:
    cases = []
    for path in SENT:
        for i, entry in enumerate(json.loads(path.read_text())["messages"]):
            cases.append(pytest.param(entry, id=f"{path.parent.name}/{path.stem}[{i}]"))
    return cases


def _captured(entry: dict[str, Any]) -> tuple[Message, bytes]:
    envelope = entry["envelope"]
    props = {k: v for k, v in envelope["properties"].items() if k not in TRANSPORT_KEYS}
    body = base64.b64decode(entry["body_bytes"]["b64"])
    return (Message(body, envelope["content-type"], envelope["content-encoding"],
                    envelope["headers"], props), base64.b64decode(entry["raw"]["b64"]))


def _encode(captured: Message, task_id: str, args: Any, kwargs: Any, group_index: Any,
            root_id: str | None) -> Message:
    """``encode_task`` of the captured call, with another id, arguments and group index."""
    body = decode_task(captured, None)
    headers = captured.headers
    return encode_task(
        name=body.name, task_id=task_id, args=args, kwargs=kwargs, root_id=root_id,
        parent_id=body.parent_id, group_id=body.group_id, group_index=group_index,
        shadow=body.shadow, retries=body.retries, time_limit=body.time_limit,
        soft_time_limit=body.soft_time_limit, callbacks=body.callbacks,
        errbacks=body.errbacks, chain=body.chain, chord=body.chord, origin=body.origin,
        ignore_result=headers["ignore_result"], reply_to=captured.properties["reply_to"],
        priority=captured.properties.get("priority"),
        replaced_task_nesting=headers["replaced_task_nesting"], json_headers=True)


def _plain(captured: Message) -> bool:
    """Whether the captured call is one the producer may make others from."""
    headers = captured.headers
    return (captured.content_type == serialization.JSON and not headers.get("eta")
            and not headers.get("expires") and "compression" not in headers
            and headers["stamped_headers"] is None and not headers["stamps"]
            and set(headers) <= {"lang", "task", "id", "shadow", "eta", "expires", "group",
                                 "group_index", "retries", "timelimit", "root_id", "parent_id",
                                 "argsrepr", "kwargsrepr", "origin", "ignore_result",
                                 "replaced_task_nesting", "stamped_headers", "stamps"}
            and tuple(captured.properties) == ("correlation_id", "reply_to", "delivery_mode",
                                               "priority"))


@pytest.mark.parametrize("entry", _cases())
def test_messages_made_like_a_captured_call_are_the_full_encoders_bytes(
        entry: dict[str, Any]) -> None:
    captured, raw = _captured(entry)
    if not _plain(captured):  # eta, expires, msgpack...: never a model, as likes_of says
        body = decode_task(captured, None)
        model = encode_task(name=body.name, task_id=body.id, args=body.args,
                            kwargs=body.kwargs, eta=body.eta, expires=body.expires,
                            json_headers=True)
        if body.eta or body.expires:
            assert likes_of(model, body.args, body.kwargs, True) is None
        return
    headers = captured.headers
    derived = headers["root_id"] == headers["id"]
    args, kwargs = json.loads(captured.body)[:2]
    model = _encode(captured, headers["id"], args, kwargs, headers["group_index"],
                    headers["root_id"])
    assert model.body == captured.body
    # chunks, map, starmap: JSON made the tuples in their kwargs lists, so the reprs differ
    exact = model.headers == headers
    likes = likes_of(model, args, kwargs, derived)
    assert likes is not None
    # the captured call itself, then others
    assert likes.add(headers["id"], args, kwargs, headers["group_index"])
    for task_id, other_args, other_kwargs, index in OTHERS:
        assert likes.add(task_id, other_args, other_kwargs, index)
    assert not likes.add(None, (), {}, True)  # a bool group index: built in full instead
    assert not likes.add(b"bytes id", (), {}, None)

    info = json.loads(raw)["properties"]
    queue = info["delivery_info"]["routing_key"]
    tag = info["delivery_tag"]
    item = Outgoing(queue, model, None, info["delivery_info"]["exchange"], queue)
    envelopes = _spliced(item, likes, iter([tag] + [f"tag-{i}" for i in range(len(OTHERS))]))
    # the captured call, spliced: the bytes Celery wrote
    assert envelopes[0].encode() == raw or not exact
    calls = [(headers["id"], args, kwargs, headers["group_index"]), *OTHERS]
    messages = likes.messages()
    for i, ((task_id, a, k, index), (quoted, text, body), message) in enumerate(
            zip(calls, likes.parts(), messages)):
        full = _encode(captured, task_id, a, k, index, task_id if derived else headers["root_id"])
        assert quoted == serialization.json_string(task_id)
        assert text == serialization.json_dumps(full.headers)
        assert body == full.body
        assert (message.body, message.content_type, message.content_encoding) == (
            full.body, full.content_type, full.content_encoding)
        assert list(message.headers.items()) == list(full.headers.items())
        assert list(message.properties.items()) == list(full.properties.items())
        assert message.headers_json == text
        full.headers_json = None  # the general envelope encoder, from the headers
        assert envelopes[i] == encode(full, queue, tag if i == 0 else f"tag-{i - 1}",
                                      exchange=item.exchange, routing_key=queue)


@pytest.mark.parametrize("entry", _cases())
def test_one_call_like_a_captured_call_is_the_full_encoders_bytes(
        entry: dict[str, Any]) -> None:
    """``Likes.one`` (a plain ``delay()`` made like the one before it): a fresh id, no group
    index, the call's arguments; the same text as ``encode_task`` of that call."""
    captured, _ = _captured(entry)
    if not _plain(captured):
        return
    headers = captured.headers
    derived = headers["root_id"] == headers["id"]
    args, kwargs = json.loads(captured.body)[:2]
    model = _encode(captured, headers["id"], args, kwargs, None, headers["root_id"])
    likes = likes_of(model, args, kwargs, derived)
    assert likes is not None
    seen = set()
    for _, other_args, other_kwargs, _ in [*OTHERS, *OTHERS]:  # the second time: its cache
        call_args = tuple(other_args)
        task_id, text, body = likes.one(call_args, other_kwargs)
        assert task_id not in seen and str(uuid.UUID(task_id, version=4)) == task_id
        seen.add(task_id)
        full = _encode(captured, task_id, call_args, other_kwargs, None,
                       task_id if derived else headers["root_id"])
        assert text == serialization.json_dumps(full.headers)
        assert body == full.body
    assert not likes.calls and not likes.ids  # nothing added to the batch


def test_ids_not_given_are_drawn_once_and_kept() -> None:
    model = encode_task(name="t", task_id="first", json_headers=True)
    likes = likes_of(model, (), {}, True)
    assert likes is not None
    for _ in range(3):
        assert likes.add(None, (), {}, None)
    parts = likes.parts()
    ids = list(likes.ids)
    assert len(set(ids)) == 3 and all(isinstance(i, str) and len(i) == 36 for i in ids)
    assert likes.parts() is parts and likes.ids == ids
    for task_id, (quoted, text, _) in zip(ids, parts):
        assert quoted == f'"{task_id}"'
        headers = json.loads(text)
        assert headers["id"] == headers["root_id"] == task_id


def test_extend_takes_the_calls_add_takes_and_stops_at_the_first_it_refuses() -> None:
    """``Likes.extend`` (a batch of a group's members at once) keeps what ``add`` one by one
    keeps, and leaves the call ``add`` refuses (and those after it) to the caller."""
    model = encode_task(name="t", task_id="first", json_headers=True)
    calls: list[tuple[Any, Any, Any, Any]] = [
        ("a", (), {}, 0), ("b", [1, "x"], {}, 1), ("c", (), {"k": [2]}, None),
        (None, (), {}, 3), ("", (), {}, 4), ("d", (), {}, True), ("e", (), {}, 6)]
    one_by_one, at_once = likes_of(model, (), {}, True), likes_of(model, (), {}, True)
    assert one_by_one is not None and at_once is not None
    taken = 0
    while one_by_one.add(*calls[taken]):
        taken += 1
    assert at_once.extend(calls) == taken == 5
    assert at_once.calls == one_by_one.calls  # ("b", (1, "x"), ...), (None, ...) for ""
    given = 3  # the parts of the calls with ids of their own are the same text
    assert at_once.parts()[:given] == one_by_one.parts()[:given]
    assert at_once.extend(calls, taken + 1) == len(calls)
    assert [call[0] for call in at_once.calls][taken:] == ["e"]


def test_a_model_with_a_root_of_its_own_gives_it_to_every_call() -> None:
    model = encode_task(name="t", task_id="first", root_id="the-root", parent_id="p",
                        json_headers=True)
    likes = likes_of(model, (), {}, False)
    assert likes is not None and likes.add("second", (1,), {}, None)
    headers = json.loads(likes.parts()[0][1])
    assert (headers["id"], headers["root_id"], headers["parent_id"]) == ("second", "the-root", "p")
    # a model whose root is not its own id cannot stand for calls that derive theirs
    assert likes_of(model, (), {}, True) is None


def test_arguments_json_cannot_encode_raise_the_full_encoders_error() -> None:
    model = encode_task(name="t", task_id="first", json_headers=True)
    likes = likes_of(model, (), {}, True)
    assert likes is not None and likes.add("second", (object(),), {}, None)
    with pytest.raises(serialization.EncodeError):
        likes.parts()
    with pytest.raises(serialization.EncodeError):
        encode_task(name="t", task_id="second", args=(object(),))


def test_models_that_are_not_plain_json_have_no_likes() -> None:
    def model(**options: Any) -> Message:
        return encode_task(name="t", task_id="i", json_headers=True, **options)

    assert likes_of(encode_task(name="t", task_id="i"), (), {}, True) is None  # no headers text
    assert likes_of(model(serializer="msgpack"), (), {}, True) is None
    assert likes_of(model(compression="zlib"), (), {}, True) is None
    assert likes_of(model(headers={"custom": 1}), (), {}, True) is None
    assert likes_of(model(), (1,), {}, True) is None  # not the arguments it was made with
    assert likes_of(model(), (), {}, True) is not None
    assert Path(__file__).exists()


def test_extend_of_formed_calls_keeps_them_as_checking_each_would() -> None:
    """``formed`` (a group vouching for its calls' form) takes the calls as they are: the same
    calls and parts as ``extend`` looking at each."""
    model = encode_task(name="t", task_id="first", json_headers=True)
    calls: list[tuple[Any, Any, Any, Any]] = [
        (str(uuid.uuid4()), (), {}, 1), ("given-Id_9", (2,), {"k": 1}, 2), ("x", (), {}, None)]
    checked, formed = likes_of(model, (), {}, True), likes_of(model, (), {}, True)
    assert checked is not None and formed is not None
    assert checked.extend(calls, 1) == formed.extend(calls, 1, formed=True) == len(calls)
    assert formed.calls == checked.calls == calls[1:]
    assert formed.parts() == checked.parts()


@pytest.mark.parametrize("odd", ['a"b', "a\\b", "a\nb", "a\x7fb", "é", "a b", "a_b", ""])
def test_ids_are_quoted_as_is_only_when_json_writes_them_so(odd: str) -> None:
    """Ids of letters, digits and dashes are written in quotes as they are, found for all the
    calls at once; one other id among them (a quote, a backslash, a control or non-ASCII
    character...) has every id written by the JSON encoder."""
    from celeriac.protocol.v2 import _quote_as_is

    plain = [str(uuid.uuid4()), "Task-42", str(uuid.uuid4()).upper()]
    assert _quote_as_is(plain)
    assert not _quote_as_is([*plain, odd]) or json.dumps(odd) == f'"{odd}"'
    model = encode_task(name="t", task_id="first", json_headers=True)
    likes = likes_of(model, (), {}, True)
    assert likes is not None
    ids = [*plain, odd] if odd else plain
    for index, task_id in enumerate(ids):
        assert likes.add(task_id, (), {}, index)
    for (quoted, headers, _), task_id in zip(likes.parts(), ids):
        assert quoted == json.dumps(task_id)
        assert json.loads(headers)["id"] == task_id
