"""Protocol v2: encode_task's headers/properties/body, decode_task's validation, and safe_repr."""

from __future__ import annotations

import os
import pickle
import socket
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import pytest

from celeriac.exceptions import ContentDisallowed, DecodeError, InvalidTaskError
from celeriac.protocol import serialization
from celeriac.protocol.message import Message
from celeriac.protocol.v2 import (
    TaskBody,
    decode_task,
    encode_task,
    safe_repr,
    uuid4_pair,
    uuid4_text,
    uuid4_texts,
)

UTC = timezone.utc
CEST = timezone(timedelta(hours=2))
ALL = serialization.normalize_accept(["json", "msgpack", "yaml", "pickle"])
JSON_ONLY = serialization.normalize_accept(["json"])
CELERY_HEADER_ORDER = [
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
]


# ---- encode_task --------------------------------------------------------------------------------


def test_plain_send_has_celerys_headers_properties_and_body() -> None:
    m = encode_task(name="tasks.add", task_id="t1", args=(2, 2))
    assert list(m.headers) == CELERY_HEADER_ORDER
    h = m.headers
    assert (h["lang"], h["task"], h["id"], h["root_id"]) == ("py", "tasks.add", "t1", "t1")
    assert h["origin"] == f"gen{os.getpid()}@{socket.gethostname()}"
    assert (h["argsrepr"], h["kwargsrepr"]) == ("(2, 2)", "{}")
    assert (h["retries"], h["timelimit"], h["ignore_result"]) == (0, [None, None], False)
    assert (h["stamped_headers"], h["stamps"], h["replaced_task_nesting"]) == (None, {}, 0)
    assert m.properties == {"correlation_id": "t1", "reply_to": "", "delivery_mode": 2,
                            "priority": 0}
    assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
    assert m.body == (b'[[2, 2], {}, {"callbacks": null, "errbacks": null, '
                      b'"chain": null, "chord": null}]')


def test_options_land_where_celery_puts_them() -> None:
    sig = {"task": "tasks.add", "args": [16], "kwargs": {}, "options": {},
           "subtask_type": None, "immutable": False}
    m = encode_task(name="tasks.echo", task_id="t2", args=[1], kwargs={"x": 1},
                    root_id="r", parent_id="p", group_id="g", group_index=3, shadow="alias",
                    retries=2, time_limit=30, soft_time_limit=20, callbacks=[sig],
                    errbacks=[sig], chain=[sig], chord=sig, origin="w1@host",
                    ignore_result=True, reply_to="oid", priority=5,
                    argsrepr="<args>", kwargsrepr="<kwargs>", stamped_headers=["s"],
                    stamps={"s": 1}, replaced_task_nesting=1)
    h = m.headers
    assert (h["root_id"], h["parent_id"], h["group"], h["group_index"]) == ("r", "p", "g", 3)
    assert (h["shadow"], h["retries"], h["origin"], h["ignore_result"]) == (
        "alias", 2, "w1@host", True)
    assert h["timelimit"] == [30, 20]  # hard first
    assert (h["argsrepr"], h["kwargsrepr"]) == ("<args>", "<kwargs>")
    assert (h["stamped_headers"], h["stamps"], h["replaced_task_nesting"]) == (["s"], {"s": 1}, 1)
    assert (m.properties["reply_to"], m.properties["priority"]) == ("oid", 5)
    args, kwargs, embed = serialization.loads(m.body, m.content_type, "utf-8", None)
    assert (args, kwargs) == ([1], {"x": 1})
    assert embed == {"callbacks": [sig], "errbacks": [sig], "chain": [sig], "chord": sig}


@pytest.mark.parametrize("given", [-4, 0, 7, 42, 255, 300])
def test_priority_is_sent_as_given_for_the_transport_to_clamp(given: int) -> None:
    # Celery 5.7 observed: 20 on the AMQP wire, 20/-5/300 in the Redis envelope
    assert encode_task(name="t", task_id="i", priority=given).properties["priority"] == given


def test_priority_defaults_to_0_and_none_leaves_the_property_out() -> None:
    assert encode_task(name="t", task_id="i").properties["priority"] == 0
    assert "priority" not in encode_task(name="t", task_id="i", priority=None).properties


def test_eta_and_expires_are_iso_with_offset_and_expiration_counts_ms_from_now() -> None:
    now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC)
    m = encode_task(name="t", task_id="i", eta=datetime(2030, 1, 2, 3, 4, 5, 678901),
                    expires=now + timedelta(seconds=90, microseconds=500999), now=now)
    assert m.headers["eta"] == "2030-01-02T03:04:05.678901+00:00"  # naive taken as UTC
    assert m.headers["expires"] == "2030-01-01T00:01:30.500999+00:00"
    assert m.properties["expiration"] == "90500"  # a decimal string of whole milliseconds
    assert list(m.properties) == ["correlation_id", "reply_to", "delivery_mode", "expiration",
                                  "priority"]


def test_other_timezones_are_kept_and_past_expiry_sends_zero_ttl() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    m = encode_task(name="t", task_id="i", eta=datetime(2030, 1, 1, 14, 0, tzinfo=CEST),
                    expires=datetime(2030, 1, 1, 11, 0), now=now)
    assert m.headers["eta"] == "2030-01-01T14:00:00+02:00"
    assert m.properties["expiration"] == "0"
    assert "expiration" not in encode_task(name="t", task_id="i").properties


def test_expiration_defaults_to_the_current_time() -> None:
    m = encode_task(name="t", task_id="i", expires=datetime.now(UTC) + timedelta(hours=1))
    assert 3_590_000 < int(m.properties["expiration"]) <= 3_600_000


def test_user_headers_merge_after_the_standard_ones_and_may_override() -> None:
    m = encode_task(name="t", task_id="i", headers={"x_custom": "v1", "retries": 7})
    assert list(m.headers)[-1] == "x_custom"
    assert (m.headers["x_custom"], m.headers["retries"]) == ("v1", 7)


def test_compression_header_only_when_compressed() -> None:
    plain = encode_task(name="t", task_id="i", args=[1])
    packed = encode_task(name="t", task_id="i", args=[1], compression="zlib")
    assert "compression" not in plain.headers
    assert list(packed.headers)[-1] == "compression"
    assert packed.headers["compression"] == "application/x-gzip"
    assert serialization.decompress(packed.body, "application/x-gzip") == plain.body
    assert packed.content_type == "application/json"  # stays the serializer's


def test_encode_rejects_bad_args_and_copies_mappings() -> None:
    with pytest.raises(TypeError, match="list or tuple"):
        encode_task(name="t", task_id="i", args="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        encode_task(name="t", task_id="i", kwargs=[("a", 1)])  # type: ignore[arg-type]
    m = encode_task(name="t", task_id="i", kwargs=MappingProxyType({"a": 1}))
    assert decode_task(m, None).kwargs == {"a": 1}


def test_uuid4_text_is_a_random_version_4_uuid() -> None:
    import uuid

    bulk = uuid4_texts(1000)  # laid out all at once
    texts = {uuid4_text() for _ in range(1000)} | set(bulk) | set(uuid4_texts(5))
    assert len(texts) == 2005 and uuid4_texts(0) == []
    for text in texts:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    # every random place of the bulk layout is filled: 16 digits there (4 for the variant)
    for place in range(36):
        seen = {text[place] for text in bulk}
        expected = 1 if place in (8, 13, 14, 18, 23) else 4 if place == 19 else 16
        assert len(seen) == expected, (place, seen)


def test_uuid4_ids_drawn_ahead_are_never_handed_out_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids come from a pool drawn ahead: threads each get their own, pairs are two, and a
    forked child (a new pid, whether or not at-fork hooks ran) never takes its parent's."""
    import threading

    from celeriac.protocol import v2

    first = uuid4_text()
    if not v2._pool:  # that was the last one drawn: the next draws more
        first = uuid4_text()
    left = list(v2._pool)  # what the parent would hand out next
    assert left
    monkeypatch.setattr(v2, "_getpid", lambda: -1)  # as seen in a forked child
    child = {uuid4_text()} | set(uuid4_pair())
    assert len(child) == 3 and not child & set(left) and first not in child
    monkeypatch.undo()

    seen: list[str] = []

    def draw() -> None:
        for _ in range(500):
            seen.extend(uuid4_pair())
            seen.append(uuid4_text())

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == len(seen) == 6000


@pytest.mark.parametrize("options", [
    {},
    {"args": (1, "x"), "kwargs": {"k": [1.5, None, "é"]}},
    {"parent_id": "p", "root_id": "r", "group_id": "g", "group_index": 0},
    {"time_limit": 5, "soft_time_limit": 2.5, "ignore_result": None, "retries": 2},
    {"compression": "zlib", "shadow": "other", "replaced_task_nesting": 1},
    {"name": "t\x00celeriac:id\x00"},  # holds a stand-in: no template, still right
])
def test_headers_json_is_the_json_of_the_headers(options: dict) -> None:
    fields = {"name": "t", "task_id": "i", "origin": "o", **options}
    for _ in range(2):  # a template made, then a template used
        message = encode_task(json_headers=True, **fields)
        assert message.headers_json in (None, serialization.json_dumps(message.headers))
    assert encode_task(**fields).headers_json is None  # only when asked for
    if "\x00" not in fields["name"]:
        assert message.headers_json is not None


def test_headers_json_keeps_numbers_of_other_types_apart() -> None:
    texts = [encode_task(name="t", task_id="i", time_limit=limit, json_headers=True).headers_json
             for limit in (1, 1.0, True)]
    assert [t.split('"timelimit": ')[1].split("]")[0] for t in texts if t] == [
        "[1, null", "[1.0, null", "[true, null"]


@pytest.mark.parametrize("options", [
    {"headers": {"mine": 1}}, {"eta": datetime(2030, 1, 1, tzinfo=UTC)},
    {"expires": datetime(2030, 1, 1, tzinfo=UTC)}, {"stamps": {"a": 1}},
    {"task_id": 5}, {"group_index": True}, {"argsrepr": ["odd"]},
])
def test_headers_json_is_left_to_the_transport_for_uncommon_headers(options: dict) -> None:
    fields = {"name": "t", "task_id": "i", **options}
    assert encode_task(json_headers=True, **fields).headers_json is None


@pytest.mark.parametrize("args", [(), (1, "é", None, [2.5]), ({"a": {"b": []}},)])
@pytest.mark.parametrize("kwargs", [{}, {"x": True}])
def test_json_bodies_are_the_serializers_bytes(args: tuple, kwargs: dict) -> None:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = encode_task(name="t", task_id="i", args=args, kwargs=kwargs).body
    assert body == serialization.dumps((args, kwargs, embed), "json")[2]


def test_the_empty_embeds_text_is_its_json() -> None:
    from celeriac.protocol import v2

    assert v2._NO_EMBED_JSON == serialization.json_dumps(v2._NO_EMBED)


def test_unserializable_arguments_raise_the_serializers_encode_error() -> None:
    from celeriac.exceptions import EncodeError

    loop: list = []
    loop.append(loop)
    for args in ((object(),), (loop,)):
        with pytest.raises(EncodeError) as ours:
            encode_task(name="t", task_id="i", args=args)
        with pytest.raises(EncodeError) as direct:
            serialization.dumps((args, {}, {}), "json")
        assert str(ours.value) == str(direct.value)


# ---- decode_task --------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml", "pickle"])
@pytest.mark.parametrize("compression", [None, "zlib", "bzip2"])
def test_round_trip(serializer: str, compression: str | None) -> None:
    eta = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    expires = datetime(2030, 1, 3, tzinfo=CEST)
    sig = {"task": "tasks.add", "args": [4], "kwargs": {}, "options": {"task_id": "c"},
           "subtask_type": None, "immutable": False}
    m = encode_task(name="tasks.add", task_id="id1", args=[2, "two"], kwargs={"k": [1.5]},
                    serializer=serializer, compression=compression, root_id="r",
                    parent_id="p", group_id="g", group_index=1, shadow="s", eta=eta,
                    expires=expires, retries=3, time_limit=10.5, soft_time_limit=5,
                    callbacks=[sig], errbacks=[sig], chain=[sig, sig], chord=sig,
                    origin="o@h", ignore_result=True, reply_to="oid",
                    headers={"x_custom": "v"}, now=eta)
    body = decode_task(m, ALL)
    assert body == TaskBody(
        id="id1", name="tasks.add", args=[2, "two"],
        kwargs={"k": [1.5]}, callbacks=[sig], errbacks=[sig], chain=[sig, sig], chord=sig,
        root_id="r", parent_id="p", group_id="g", group_index=1, eta=eta, expires=expires,
        retries=3, time_limit=10.5, soft_time_limit=5, ignore_result=True, origin="o@h",
        shadow="s", reply_to="oid", headers=m.headers, argsrepr="(2, 'two')",
        kwargsrepr="{'k': [1.5]}")
    assert body.headers["x_custom"] == "v"
    assert body.headers is not m.headers


def test_minimal_message_gets_defaults_for_missing_optional_headers() -> None:
    m = Message(body=b"[[], {}, null]", headers={"task": "t", "id": "i"}, properties={})
    body = decode_task(m, JSON_ONLY)
    assert (body.args, body.kwargs, body.callbacks, body.chain, body.chord) == (
        [], {}, None, None, None)
    # a missing ignore_result stays None: "not said", so the worker follows the task's own setting
    assert (body.retries, body.ignore_result, body.eta, body.expires, body.reply_to) == (
        0, None, None, None, None)
    assert (body.time_limit, body.soft_time_limit, body.root_id, body.origin) == (
        None, None, None, None)


def test_two_element_body_is_accepted() -> None:
    m = Message(body=b'[[1], {"a": 2}]', headers={"task": "t", "id": "i"})
    body = decode_task(m, JSON_ONLY)
    assert (body.args, body.kwargs, body.errbacks) == ([1], {"a": 2}, None)


@pytest.mark.parametrize(("text", "expected"), [
    ("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2030-01-02T05:04:05+02:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
])
def test_eta_and_expires_parse_to_aware_datetimes(text: str, expected: datetime) -> None:
    m = Message(body=b"[[], {}, {}]", headers={"task": "t", "id": "i", "eta": text,
                                               "expires": text})
    body = decode_task(m, JSON_ONLY)
    assert body.eta == expected and body.eta.tzinfo is not None
    assert body.expires == expected


def _message(body: bytes = b"[[], {}, {}]", **headers: object) -> Message:
    return Message(body=body, headers={"task": "t", "id": "i", **headers})


@pytest.mark.parametrize(("message", "complaint"), [
    (Message(body=b"{}", headers={"id": "i"}), "protocol 1"),
    (Message(body=b"[[], {}, {}]", headers={"task": "t"}), "'id'"),
    (Message(body=b"[[], {}, {}]", headers={"task": 5, "id": "i"}), "strings"),
    (_message(b'{"task": "t", "args": []}'), "dict"),
    (_message(b"[[]]"), "1-element"),
    (_message(b"[[], {}, {}, {}]"), "4-element"),
    (_message(b'["abc", {}, {}]'), "args must be a list"),
    (_message(b"[[], [], {}]"), "kwargs must be a map"),
    (_message(b"[[], {}, []]"), "embed must be a map"),
    (_message(eta="next tuesday"), "'eta'"),
    (_message(expires=12), "'expires'"),
    (_message(retries="2"), "retries"),
    (_message(timelimit=[1, 2, 3]), "timelimit"),
])
def test_malformed_messages_raise_invalid_task_error(message: Message, complaint: str) -> None:
    with pytest.raises(InvalidTaskError, match=complaint):
        decode_task(message, JSON_ONLY)


def test_kwargs_keys_must_be_strings() -> None:
    body = pickle.dumps(((), {1: "x"}, {}), protocol=4)
    m = _message(body)
    m.content_type, m.content_encoding = "application/x-python-serialize", "binary"
    with pytest.raises(InvalidTaskError, match="kwargs key 1"):
        decode_task(m, ALL)


def test_content_type_is_checked_before_anything_else() -> None:
    m = Message(body=b"not even pickle", content_type="application/x-python-serialize",
                headers={})  # no task header either: the content type still wins
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        decode_task(m, JSON_ONLY)
    with pytest.raises(InvalidTaskError):
        decode_task(m, ALL)


def test_garbage_bodies_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_task(_message(b"[[], {"), JSON_ONLY)
    with pytest.raises(DecodeError):
        decode_task(_message(b"\x78\x9c broken", compression="application/x-gzip"), JSON_ONLY)


# ---- safe_repr (Celery's saferepr rendering) -----------------------------------------------------


@pytest.mark.parametrize(("value", "rendered"), [
    ((2, 2), "(2, 2)"),
    ((1,), "(1,)"),
    ({"x": 1, "y": [1, 2]}, "{'x': 1, 'y': [1, 2]}"),
    (("it's",), "('it\\'s',)"),                      # quotes escaped, not switched
    (("a\nb",), "('a\nb',)"),                        # no escaping of control characters
    ((b"hi", b"\xff\x00"), "(b'hi', b'ff00')"),      # undecodable bytes shown as hex
    (({1}, frozenset({2}), set()), "({1}, frozenset({2}), set())"),
    (([[[[1]]]],), "([[[...]]],)"),                  # three levels deep, then elided
    ((True, None, 2.5), "(True, None, 2.5)"),
])
def test_safe_repr_renders_like_celery(value: object, rendered: str) -> None:
    assert safe_repr(value) == rendered


def test_safe_repr_truncates_long_values_and_closes_brackets() -> None:
    text = safe_repr(tuple(range(1000)))
    assert text.startswith("(0, 1, 2, ") and text.endswith(", ...)")
    assert 1024 <= len(text) < 1040
    assert safe_repr(["word " * 400]) == "['" + ("word " * 204).rstrip() + "...']"
    assert safe_repr([1, [2, [3, [4]]]], maxlen=4) == "[1, , ...]"
    assert safe_repr(({"k": "v" * 10},), maxlen=8) == "({'k': 'v...'},)"


def test_safe_repr_survives_recursion_and_broken_reprs() -> None:
    loop: list = [1]
    loop.append(loop)
    assert safe_repr(loop) == f"[1, <Recursion on list with id={id(loop)}>]"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("nope")

    assert "Unrepresentable" in safe_repr((Broken(),))
