"""Serializers and compressors: kombu's bytes, typed round trips, refusing untrusted content."""

from __future__ import annotations

import base64
import json
import pickle
import sys
import threading
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest

from celeriac.exceptions import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MissingDependency,
)
from celeriac.protocol import serialization as ser
from tests.vectors import CELERY_VECTORS

VECTORS = CELERY_VECTORS
CEST = timezone(timedelta(hours=2))


def _vector_message(name: str) -> dict:
    path = VECTORS / "redis" / "send" / f"{name}.json"
    assert path.is_file(), f"missing Celery vector {path}"
    return json.loads(path.read_text())["messages"][0]


# ---- names, content types, accept -----------------------------------------------------------


@pytest.mark.parametrize(("name", "content_type", "encoding"), [
    ("json", "application/json", "utf-8"),
    ("msgpack", "application/x-msgpack", "binary"),
    ("yaml", "application/x-yaml", "utf-8"),
    ("pickle", "application/x-python-serialize", "binary"),
])
def test_dumps_labels_body_like_kombu(name: str, content_type: str, encoding: str) -> None:
    got_type, got_encoding, body = ser.dumps({"a": [1, 2]}, name)
    assert (got_type, got_encoding) == (content_type, encoding)
    assert ser.content_type_of(name) == content_type
    assert ser.loads(body, got_type, got_encoding, frozenset({content_type})) == {"a": [1, 2]}


def test_unknown_serializer_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ImproperlyConfigured, match="'bson'"):
        ser.dumps({}, "bson")
    with pytest.raises(ImproperlyConfigured, match="'bson'"):
        ser.content_type_of("bson")


def test_normalize_accept_takes_names_and_content_types() -> None:
    assert ser.normalize_accept(["json", "application/x-msgpack"]) == frozenset(
        {"application/json", "application/x-msgpack"})
    assert ser.normalize_accept("json, pickle") == frozenset(
        {"application/json", "application/x-python-serialize"})
    assert ser.normalize_accept([]) == frozenset()
    with pytest.raises(ImproperlyConfigured, match="'jsno'"):
        ser.normalize_accept(["json", "jsno"])


# ---- JSON: kombu's dialect --------------------------------------------------------------------


def test_json_bytes_are_kombus() -> None:
    value = {"when": datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "t": (1, "x"),
             "day": date(2030, 1, 2), "at": time(3, 4, 5, 6), "price": Decimal("1.10"),
             "id": UUID("3de8d9c5-a1f4-46c0-a204-ace164e5b64f"), "raw": b"hi", "bin": b"\xff\x00",
             "text": "ü"}
    body = ser.dumps(value)[2]
    assert body == (
        b'{"when": {"__type__": "datetime", "__value__": "2030-01-02T03:04:05+00:00"}, '
        b'"t": [1, "x"], "day": {"__type__": "date", "__value__": "2030-01-02"}, '
        b'"at": {"__type__": "time", "__value__": "03:04:05.000006"}, '
        b'"price": {"__type__": "decimal", "__value__": "1.10"}, '
        b'"id": {"__type__": "uuid", "__value__": {"hex": "3de8d9c5a1f446c0a204ace164e5b64f"}}, '
        b'"raw": {"__type__": "bytes", "__value__": "hi"}, '
        b'"bin": {"__type__": "base64", "__value__": "/wA="}, "text": "\\u00fc"}')


@pytest.mark.parametrize("value", [
    datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
    datetime(2030, 1, 2, 3, 4, 5, tzinfo=CEST),
    datetime(2030, 1, 2, 3, 4, 5),  # naive stays naive
    date(1999, 12, 31), time(23, 59, 1, 5), Decimal("-0.000001"),
    UUID("3de8d9c5-a1f4-46c0-a204-ace164e5b64f"), UUID(int=5), b"plain", b"\x00\xff\xfe",
])
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_tagged_values_round_trip(serializer: str, value: object) -> None:
    content_type, encoding, body = ser.dumps({"v": value, "nested": [value]}, serializer)
    back = ser.loads(body, content_type, encoding, None)
    assert back == {"v": value, "nested": [value]}
    assert type(back["v"]) is type(value)
    if isinstance(value, datetime):
        assert back["v"].utcoffset() == value.utcoffset()


def test_json_reads_what_kombu_writes() -> None:
    text = ('{"u": {"__type__": "uuid", "__value__": {"hex": "3de8d9c5a1f446c0a204ace164e5b64f"}},'
            ' "u2": {"__type__": "uuid", "__value__": {"hex": "3de8d9c5a1f446c0a204ace164e5b64f",'
            ' "version": 4}}, "d": {"__type__": "date", "__value__": "2030-01-02"},'
            ' "b": {"__type__": "base64", "__value__": "/wA="}}')
    got = ser.loads(text.encode(), "application/json", "utf-8", None)
    assert got == {"u": UUID("3de8d9c5-a1f4-46c0-a204-ace164e5b64f"),
                   "u2": UUID("3de8d9c5-a1f4-46c0-a204-ace164e5b64f"),
                   "d": date(2030, 1, 2), "b": b"\xff\x00"}
    assert ser.json_loads(ser.json_dumps(got)) == got


def test_json_leaves_lookalike_maps_alone() -> None:
    maps = {"a": {"__type__": "mystery", "__value__": 1},
            "b": {"__type__": "datetime", "__value__": "2030-01-02", "extra": 1}}
    body = ser.dumps(maps)[2]
    assert ser.loads(body, "application/json", "utf-8", None) == maps


def test_json_uses_the_dunder_json_hook_and_rejects_unknown_types() -> None:
    class Money:
        def __json__(self) -> dict:
            return {"amount": 3}

    assert ser.dumps([Money()])[2] == b'[{"amount": 3}]'
    with pytest.raises(TypeError, match="set"):
        ser.dumps({1, 2})


# ---- msgpack, yaml, pickle --------------------------------------------------------------------


def test_msgpack_keeps_bytes_binary_and_text_str() -> None:
    body = ser.dumps(["é", b"\x01"], "msgpack")[2]
    # fixarray(2), fixstr(2 bytes) "é", bin8 len 1
    assert body == b"\x92\xa2\xc3\xa9\xc4\x01\x01"
    assert ser.loads(body, "application/x-msgpack", "binary", None) == ["é", b"\x01"]


def test_msgpack_reads_the_standard_timestamp_extension() -> None:
    import msgpack
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    body = msgpack.packb({"at": when}, datetime=True)
    assert ser.loads(body, "application/x-msgpack", "binary", None) == {"at": when}


def test_msgpack_body_matches_the_captured_celery_body() -> None:
    record = _vector_message("ser_msgpack")
    body = base64.b64decode(record["body_bytes"]["b64"])
    decoded = ser.loads(body, "application/x-msgpack", "binary", None)
    assert decoded == record["decoded_body"]
    assert ser.dumps(decoded, "msgpack")[2] == body


def test_yaml_round_trip() -> None:
    value = {"args": [1, "two"], "when": datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}
    content_type, encoding, body = ser.dumps((value, None), "yaml")
    assert ser.loads(body, content_type, encoding, None) == [value, None]


def test_pickle_keeps_python_types() -> None:
    value = ((1, 2), {"s": {1, 2}}, frozenset({3}))
    content_type, encoding, body = ser.dumps(value, "pickle")
    assert body[:2] == b"\x80\x04"  # protocol 4, as kombu
    assert ser.loads(body, content_type, encoding, None) == value


def test_celery_pickled_signatures_load_as_plain_dicts() -> None:
    record = _vector_message("ser_pickle")
    body = base64.b64decode(record["body_bytes"]["b64"])
    assert b"celery.canvas" in body
    args, kwargs, embed = ser.loads(body, "application/x-python-serialize", "binary", None)
    assert (args, kwargs) == ((2, 2), {})
    assert type(embed["callbacks"][0]) is dict
    assert embed["callbacks"][0]["task"] == "tasks.add"
    assert embed["callbacks"][0]["args"] == (16,)


@pytest.mark.parametrize("serializer", ["msgpack", "yaml"])
def test_missing_optional_library_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                  serializer: str) -> None:
    content_type, encoding, body = ser.dumps([1], serializer)
    monkeypatch.setitem(sys.modules, serializer, None)  # makes `import <name>` fail
    with pytest.raises(MissingDependency) as info:
        ser.dumps([1], serializer)
    assert str(info.value) == (f"the {serializer} serializer needs the {serializer!r} package: "
                               f"pip install 'celeriac[{serializer}]'")
    with pytest.raises(DecodeError, match=rf"celeriac\[{serializer}\]"):
        ser.loads(body, content_type, encoding, None)


# ---- values a serializer cannot encode: one line, with what to do -----------------------------


class _Opaque:
    pass


def _local_function() -> object:
    def inner() -> None:
        pass
    return inner


@pytest.mark.parametrize(("serializer", "value", "type_name", "friendly"), [
    ("json", _Opaque(), "_Opaque", "JSON-friendly"),
    ("json", {1, 2}, "set", "JSON-friendly"),
    ("application/json", 1j, "complex", "JSON-friendly"),
    ("msgpack", _Opaque(), "_Opaque", "msgpack-friendly"),
    ("yaml", _Opaque(), "_Opaque", "YAML-friendly"),
])
def test_encode_error_names_the_type_and_points_at_accept_content(
        serializer: str, value: object, type_name: str, friendly: str) -> None:
    with pytest.raises(EncodeError) as info:
        ser.dumps(((1, {"nested": [value]}), {}, {}), serializer)
    name = serializer.rpartition("/")[2]
    assert str(info.value) == (
        f"cannot serialize a value of type {type_name} with {name}; pass {friendly} values, "
        "or choose another serializer (serializer='pickle') and add it to accept_content on "
        "the workers")
    assert isinstance(info.value, TypeError)  # kombu's EncodeError is one too


def test_encode_error_keeps_the_libraries_reason_on_one_line() -> None:
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(EncodeError, match=r"^cannot serialize with json: Circular reference "
                                          r"detected; pass JSON-friendly values, .*accept_content"):
        ser.dumps(looped, "json")


@pytest.mark.parametrize("value", [lambda: 1, _local_function(), threading.Lock()])
def test_pickle_encode_errors_are_encode_errors_with_pickle_advice(value: object) -> None:
    with pytest.raises(EncodeError) as info:
        ser.dumps([value], "pickle")
    message = str(info.value)
    assert message.startswith("cannot serialize with pickle: ")
    assert message.endswith("; pass picklable values (module-level functions and classes; no "
                            "locks, open files or connections)")
    assert "\n" not in message


def test_other_attribute_errors_are_not_encode_errors() -> None:
    class Broken:
        def __json__(self) -> object:
            raise AttributeError("a bug in the hook")

    with pytest.raises(AttributeError, match="a bug in the hook"):
        ser.dumps(Broken(), "json")


# ---- refusing content ---------------------------------------------------------------------------


def _detonate(flag: str) -> str:
    """What the malicious pickle below runs when unpickled: leaves a file behind."""
    Path(flag).write_text("ran")
    return "boom"


class _Bomb:
    def __init__(self, flag: Path) -> None:
        self.flag = str(flag)

    def __reduce__(self) -> tuple:
        return _detonate, (self.flag,)


def test_pickle_is_refused_before_any_byte_is_read(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    body = pickle.dumps(_Bomb(flag), protocol=4)
    with pytest.raises(ContentDisallowed) as info:
        ser.loads(body, "application/x-python-serialize", "binary",
                  ser.normalize_accept(["json", "msgpack"]))
    assert "application/x-python-serialize" in str(info.value)
    assert "application/json" in str(info.value) and "application/x-msgpack" in str(info.value)
    assert not flag.exists()
    # The bomb is live: accepting pickle does run it, so the refusal above is what saved us.
    assert ser.loads(body, "application/x-python-serialize", "binary",
                     frozenset({"application/x-python-serialize"})) == "boom"
    assert flag.read_text() == "ran"


def test_empty_accept_refuses_everything() -> None:
    body = ser.dumps([1])[2]
    with pytest.raises(ContentDisallowed, match="nothing"):
        ser.loads(body, "application/json", "utf-8", frozenset())


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'[1, 2'),
    ("application/json", b'\xff\xfe\x00'),
    ("application/json", b'{"__type__": "datetime", "__value__": "not a date"}'),
    ("application/x-msgpack", b"\xc1"),
    ("application/x-msgpack", b"\x92\x01"),
    ("application/x-yaml", b"a: [1, 2\n"),
    ("application/x-python-serialize", b"\x80\x04garbage"),
    ("application/x-python-serialize", b""),
    ("application/x-bson", b"{}"),
])
def test_undecodable_bodies_raise_decode_error(content_type: str, body: bytes) -> None:
    with pytest.raises(DecodeError):
        ser.loads(body, content_type, "utf-8", None)


# ---- compression --------------------------------------------------------------------------------


def test_zlib_matches_the_captured_celery_body() -> None:
    record = _vector_message("compression_zlib")
    compressed = base64.b64decode(record["body_bytes"]["b64"])
    plain = base64.b64decode(record["body_uncompressed"]["b64"])
    header = record["envelope"]["headers"]["compression"]
    assert header == "application/x-gzip"
    assert ser.decompress(compressed, header) == plain
    assert ser.compress(plain, "zlib") == (header, compressed)


@pytest.mark.parametrize(("method", "header"), [
    ("zlib", "application/x-gzip"), ("gzip", "application/x-gzip"),
    ("bzip2", "application/x-bz2"), ("lzma", "application/x-lzma"), ("xz", "application/x-lzma"),
])
def test_compression_round_trips_under_kombus_header(method: str, header: str) -> None:
    body = b"[[2, 2], {}, {}]" * 50
    got_header, packed = ser.compress(body, method)
    assert got_header == header and len(packed) < len(body)
    assert ser.decompress(packed, got_header) == body
    assert ser.known_compression(method) and ser.known_compression(header)


def test_bad_compression_inputs() -> None:
    assert not ser.known_compression("snappy")
    with pytest.raises(ImproperlyConfigured, match="'snappy'"):
        ser.compress(b"x", "snappy")
    with pytest.raises(DecodeError, match="application/zstd"):
        ser.decompress(b"x", "application/zstd")
    with pytest.raises(DecodeError):
        ser.decompress(b"not zlib at all", "application/x-gzip")


# ---- start-up checks and unencodable values ----------------------------------------------------
def test_check_available_passes_for_installed_serializers():
    ser.check_available(["json", "pickle", "msgpack", "yaml", "application/json"])
    ser.check_available("json, msgpack")  # as an environment variable spells it
    ser.check_available([])


@pytest.mark.parametrize("names, module", [(["json", "msgpack"], "msgpack"),
                                           ("json,yaml", "yaml"),
                                           (["application/x-yaml"], "yaml")])
def test_check_available_names_the_extra_of_a_missing_package(monkeypatch, names, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingDependency) as info:
        ser.check_available(names)
    assert f"pip install 'celeriac[{module}]'" in str(info.value)
    assert "\n" not in str(info.value)


def test_check_available_refuses_an_unknown_serializer():
    with pytest.raises(ImproperlyConfigured, match="unknown serializer 'jsno'"):
        ser.check_available(["jsno"])


def test_an_unencodable_type_is_named_without_the_internal_exception():
    with pytest.raises(EncodeError) as info:
        ser.dumps({"x": {1, 2}}, "json")
    assert "cannot serialize a value of type set with json" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert ser.unserializable_type(info.value) is set
