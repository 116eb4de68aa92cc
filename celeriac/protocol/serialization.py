"""Task-body serializers and compressors, byte-compatible with kombu; layer: protocol (pure).

Celery peers decode what we send with kombu, so every choice here (content types, JSON
separators, the ``{"__type__": ..., "__value__": ...}`` tags, compression header values) follows
kombu's wire behaviour. The accept check in :func:`loads` runs before any byte is parsed: it is
the only thing standing between an untrusted broker and ``pickle``.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import json.encoder as json_encoder
import pickle
import zlib
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Callable, Iterable, Sequence
from uuid import UUID

from ..exceptions import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MissingDependency,
)

JSON = "application/json"
MSGPACK = "application/x-msgpack"
YAML = "application/x-yaml"
PICKLE = "application/x-python-serialize"

#: serializer name -> (content type, content encoding), as kombu registers them.
SERIALIZERS: dict[str, tuple[str, str]] = {
    "json": (JSON, "utf-8"),
    "msgpack": (MSGPACK, "binary"),
    "yaml": (YAML, "utf-8"),
    "pickle": (PICKLE, "binary"),
}
_BY_CONTENT_TYPE = {ct: (ct, enc) for ct, enc in SERIALIZERS.values()}

#: kombu pickles with the interpreter default, protocol 4 on every supported Python.
PICKLE_PROTOCOL = 4

# ---- JSON (kombu's dialect) ---------------------------------------------------------------------


def _tag(obj: Any) -> Any:
    """``default=`` hook: the non-JSON types kombu knows, as tagged maps."""
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    if isinstance(obj, datetime):  # before date: a datetime is a date too
        return {"__type__": "datetime", "__value__": obj.isoformat()}
    if isinstance(obj, date):
        return {"__type__": "date", "__value__": obj.isoformat()}
    if isinstance(obj, time):
        return {"__type__": "time", "__value__": obj.isoformat()}
    if isinstance(obj, Decimal):
        return {"__type__": "decimal", "__value__": str(obj)}
    if isinstance(obj, UUID):
        return {"__type__": "uuid", "__value__": {"hex": obj.hex}}
    if isinstance(obj, bytes):
        try:
            return {"__type__": "bytes", "__value__": obj.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(obj).decode("ascii")}
    raise _Unserializable(obj)


class _Unserializable(TypeError):
    """A value of a type the serializer cannot represent; :func:`dumps` names the type."""

    def __init__(self, obj: object) -> None:
        self.type = type(obj)
        self.type_name = self.type.__qualname__
        super().__init__(f"Object of type {self.type_name} is not serializable")


def _uuid(value: Any) -> UUID:
    # kombu 5.7 sends {"hex"}, some releases added "version"; accept a bare string as well.
    if isinstance(value, dict):
        return UUID(hex=value["hex"], version=value.get("version"))
    return UUID(str(value))


_UNTAG: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": _uuid,
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _untag(obj: dict[str, Any]) -> Any:
    """``object_hook``: turn a tagged map back into its value; anything else passes through."""
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        revive = _UNTAG.get(obj["__type__"])
        if revive is not None:
            return revive(obj["__value__"])
    return obj


def _make_json_encode() -> Callable[[Any], str]:
    """``json.JSONEncoder(default=_tag).encode`` (default separators ", " and ": ",
    ``ensure_ascii``, circular references refused), without the Python layers it goes through
    on every call: the C encoder is made here once per call, straight."""
    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return json.JSONEncoder(default=_tag).encode
    escape = json_encoder.encode_basestring_ascii

    def encode(obj: Any) -> str:
        # a fresh markers map per call, as JSONEncoder does: it finds circular references
        return "".join(make({}, _tag, escape, None, ": ", ", ", False, False, True)(obj, 0))

    return encode


_json_encode = _make_json_encode()


def json_dumper() -> Callable[[Any], str]:
    """``json_dumps`` for many values in a row: one C encoder, made once. Its map of the
    containers being encoded is empty again after each value it encodes; after an error it may
    not be, so a caller that goes on after one makes a new encoder."""
    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return _json_encode
    encode = make({}, _tag, json_encoder.encode_basestring_ascii, None, ": ", ", ",
                  False, False, True)
    join = "".join
    return lambda obj: join(encode(obj, 0))
#: kombu JSON text of one string (quotes included), as the encoder writes string values
json_string: Callable[[str], str] = json_encoder.encode_basestring_ascii
_json_decode_plain = json.JSONDecoder().decode
_json_decode_tagged = json.JSONDecoder(object_hook=_untag).decode


def json_dumps(obj: Any) -> str:
    """kombu's JSON text for ``obj`` (also what Redis envelopes and result metas are made of)."""
    return _json_encode(obj)


def json_template(obj: Any, marks: Sequence[str]) -> tuple[str, ...] | None:
    """``json_dumps(obj)`` cut where the strings ``marks`` stand in ``obj`` (each a value that
    must appear exactly once, in this order): the pieces of text around them, so a caller can
    put per-call JSON values between them. None if a mark is missing or appears twice."""
    text = _json_encode(obj)
    pieces = []
    for mark in marks:
        quoted = json_string(mark)
        if text.count(quoted) != 1:
            return None
        head, _, text = text.partition(quoted)
        pieces.append(head)
    pieces.append(text)
    return tuple(pieces)


def json_loads(text: str | bytes) -> Any:
    """Parse kombu JSON, reviving tagged values."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    # The object hook costs a call per JSON object; skip it when no tag can be present.
    if "__type__" in text:
        return _json_decode_tagged(text)
    return _json_decode_plain(text)


def _text(data: bytes | str, encoding: str) -> str:
    if isinstance(data, str):
        return data
    return bytes(data).decode(encoding if encoding and encoding != "binary" else "utf-8")


# ---- msgpack, yaml, pickle ----------------------------------------------------------------------


def _require(module: str, serializer: str) -> Any:
    # utils.extras.require, which protocol/ may not import: the same check, the same words
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name not in (None, module):
            raise
        raise MissingDependency(
            f"the {serializer} serializer needs the {module!r} package: "
            f"pip install 'celeriac[{serializer}]'") from None


#: content type -> (module, serializer name) of the serializers that need an optional package
_NEEDS: dict[str, tuple[str, str]] = {MSGPACK: ("msgpack", "msgpack"), YAML: ("yaml", "yaml")}


def check_available(names: Iterable[str] | str) -> None:
    """Raise MissingDependency (one line naming the ``pip install``) for the first serializer
    of ``names`` (names or content types; a comma-separated string too) whose package is not
    installed; ImproperlyConfigured for an unknown name. For start-up checks: a worker that
    lacks a serializer it is configured to use fails at once, not at its first message."""
    if isinstance(names, str):
        names = names.split(",")
    for name in names:
        if not name.strip():
            continue
        needed = _NEEDS.get(content_type_of(name.strip()))
        if needed is not None:
            _require(*needed)


def _msgpack_dumps(obj: Any) -> bytes:
    msgpack = _require("msgpack", "msgpack")
    # kombu packs with use_bin_type=True; values msgpack lacks (datetime, Decimal, UUID...) are
    # sent as the same tagged maps as in JSON, since kombu's msgpack has no convention of its own.
    packed: bytes = msgpack.packb(obj, use_bin_type=True, default=_tag)
    return packed


def _msgpack_loads(data: bytes | str, encoding: str) -> Any:
    msgpack = _require("msgpack", "msgpack")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # timestamp=3: a peer that uses msgpack's own Timestamp extension gets datetimes too.
    if b"__type__" in raw:
        return msgpack.unpackb(raw, raw=False, timestamp=3, object_hook=_untag)
    return msgpack.unpackb(raw, raw=False, timestamp=3)


def _yaml_dumps(obj: Any) -> bytes:
    yaml = _require("yaml", "yaml")
    try:
        text: str = yaml.safe_dump(obj)
    except yaml.representer.RepresenterError as exc:  # args: (message, the value)
        raise (_Unserializable(exc.args[1]) if len(exc.args) == 2 else TypeError(exc)) from exc
    return text.encode("utf-8")


def _yaml_loads(data: bytes | str, encoding: str) -> Any:
    yaml = _require("yaml", "yaml")
    return yaml.load(_text(data, encoding), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


class _Unpickler(pickle.Unpickler):
    """Reads Celery's pickled canvas without Celery installed.

    Celery pickles a signature as ``celery.canvas.signature(<dict>)``; rebuilding it as the plain
    dict gives exactly what the JSON and msgpack paths produce.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "celery.canvas" and name in ("signature", "Signature"):
            return dict
        return super().find_class(module, name)


def _pickle_loads(data: bytes | str, encoding: str) -> Any:
    raw = data.encode("latin-1") if isinstance(data, str) else data
    return _Unpickler(io.BytesIO(raw)).load()


_DUMPERS: dict[str, Callable[[Any], bytes]] = {
    JSON: lambda obj: _json_encode(obj).encode("utf-8"),
    MSGPACK: _msgpack_dumps, YAML: _yaml_dumps, PICKLE: _pickle_dumps,
}
_LOADERS: dict[str, Callable[[Any, str], Any]] = {
    JSON: lambda data, encoding: json_loads(_text(data, encoding)),
    MSGPACK: _msgpack_loads, YAML: _yaml_loads, PICKLE: _pickle_loads,
}

# ---- public API ---------------------------------------------------------------------------------


def _lookup(serializer: str) -> tuple[str, str]:
    found = SERIALIZERS.get(serializer) or _BY_CONTENT_TYPE.get(serializer)
    if found is None:
        raise ImproperlyConfigured(
            f"unknown serializer {serializer!r} (known: {', '.join(SERIALIZERS)})")
    return found


def content_type_of(serializer: str) -> str:
    """The content type a serializer name stands for (``"json"`` -> ``"application/json"``)."""
    return _lookup(serializer)[0]


def normalize_accept(names: Iterable[str]) -> frozenset[str]:
    """``accept_content`` as content types; serializer names and content types both allowed."""
    if isinstance(names, str):  # "json,msgpack" from an environment variable
        names = names.split(",")
    return frozenset(content_type_of(name.strip()) for name in names if name.strip())


def dumps(obj: Any, serializer: str = "json") -> tuple[str, str, bytes]:
    """Serialize ``obj``; returns ``(content_type, content_encoding, body)``."""
    content_type, content_encoding = _lookup(serializer)
    try:
        return content_type, content_encoding, _DUMPERS[content_type](obj)
    except _Unserializable as exc:
        # The message says it all; the internal class and the json/msgpack frames it was raised
        # through would only clutter the worker's log and the stored traceback.
        error = EncodeError(_encode_error(content_type, exc))
        error.unserializable = exc.type  # type: ignore[attr-defined]  # unserializable_type
        raise error from None
    except (TypeError, ValueError, OverflowError, RecursionError, pickle.PicklingError) as exc:
        raise EncodeError(_encode_error(content_type, exc)) from exc
    except AttributeError as exc:  # pickle's "Can't pickle local object"
        if content_type != PICKLE:
            raise
        raise EncodeError(_encode_error(content_type, exc)) from exc


#: content type -> how the serializer is named in prose ("not JSON serializable")
_LABELS = {JSON: "JSON", MSGPACK: "msgpack", YAML: "YAML", PICKLE: "pickle"}
#: content type -> the serializer name a user writes ("application/json" -> "json")
_NAMES = {content_type: name for name, (content_type, _) in SERIALIZERS.items()}


def serializer_name(content_type: str) -> str:
    """The name a user writes for a serializer (``"application/json"`` -> ``"json"``); a name
    passes through, an unknown content type is returned as it is."""
    return _NAMES.get(content_type, content_type)


def serializer_label(serializer: str) -> str:
    """How a serializer (name or content type) is named in prose: ``JSON``, ``msgpack``..."""
    found = SERIALIZERS.get(serializer) or _BY_CONTENT_TYPE.get(serializer)
    return _LABELS[found[0]] if found else serializer


def unserializable_type(exc: BaseException) -> type | None:
    """The type of the value a json, msgpack or yaml ``dumps`` could not represent, when
    ``exc`` (an EncodeError from :func:`dumps`, or its cause) names one; None otherwise (pickle's
    errors name no type; a dict key or nesting too deep is the whole value's fault)."""
    if isinstance(exc, _Unserializable):
        return exc.type
    named = getattr(exc, "unserializable", None)
    if isinstance(named, type):
        return named
    cause = exc.__cause__
    return cause.type if isinstance(cause, _Unserializable) else None


def encode_advice(serializer: str, *, returned: bool = False) -> str:
    """What to do about a value ``serializer`` cannot encode: one passed to a task, or (with
    ``returned``) one a task returned for the result serializer."""
    content_type = _lookup(serializer)[0]
    if content_type == PICKLE:
        if returned:
            return ("return a value pickle can encode (not a lambda, a local function or class, "
                    "an open file, a lock or a connection)")
        return ("pass picklable values (module-level functions and classes; no locks, open "
                "files or connections)")
    label = _LABELS[content_type]
    if returned:
        return (f"return a {label}-friendly value, or choose a serializer that can, e.g. "
                f"result_serializer='pickle' with 'pickle' in accept_content")
    return (f"pass {label}-friendly values, or choose another serializer (serializer='pickle') "
            f"and add it to accept_content on the workers")


def _encode_error(content_type: str, exc: Exception) -> str:
    """One line: what could not be serialized, and what to do about it."""
    name = serializer_name(content_type)
    if isinstance(exc, _Unserializable):
        problem = f"cannot serialize a value of type {exc.type_name} with {name}"
    else:  # one line, whatever the library's message looks like
        problem = f"cannot serialize with {name}: {' '.join(str(exc).split())}"
    return f"{problem}; {encode_advice(content_type)}"


def check_accepted(content_type: str, accept: frozenset[str] | None) -> None:
    """Raise ContentDisallowed unless ``content_type`` is in ``accept`` (None accepts anything)."""
    if accept is not None and content_type not in accept:
        raise ContentDisallowed(
            f"refusing to deserialize content of type {content_type!r} "
            f"(accepted: {', '.join(sorted(accept)) or 'nothing'})")


def loads(data: bytes, content_type: str, content_encoding: str,
          accept: frozenset[str] | None) -> Any:
    """Deserialize a body, refusing content types outside ``accept`` before reading any byte."""
    check_accepted(content_type, accept)
    loader = _LOADERS.get(content_type)
    if loader is None:
        raise DecodeError(f"no deserializer for content type {content_type!r}")
    try:
        return loader(data, content_encoding)
    except ImproperlyConfigured as exc:  # accepted, but this process lacks the library
        raise DecodeError(str(exc)) from exc
    except Exception as exc:  # untrusted bytes: any failure at all is a decode failure
        raise DecodeError(
            f"cannot decode {content_type} body ({len(data)} bytes): "
            f"{type(exc).__name__}: {exc}") from exc


# ---- compression --------------------------------------------------------------------------------

#: header value (kombu's compressor content type) -> (compress, decompress)
_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "application/x-gzip": (zlib.compress, zlib.decompress),
}
#: method names kombu accepts -> header value. kombu's "gzip" is zlib, not the gzip file format.
_METHODS = {"zlib": "application/x-gzip", "gzip": "application/x-gzip"}
try:
    import bz2
except ImportError:  # pragma: no cover - Python built without bz2
    pass
else:
    _CODECS["application/x-bz2"] = (bz2.compress, bz2.decompress)
    _METHODS.update(bzip2="application/x-bz2", bzip="application/x-bz2")
try:
    import lzma
except ImportError:  # pragma: no cover - Python built without lzma
    pass
else:
    _CODECS["application/x-lzma"] = (lzma.compress, lzma.decompress)
    _METHODS.update(lzma="application/x-lzma", xz="application/x-lzma")


def known_compression(method: str) -> bool:
    """Whether ``method`` (a name or a header value) can be used here; for config validation."""
    return _METHODS.get(method, method) in _CODECS


def compress(body: bytes, method: str) -> tuple[str, bytes]:
    """Compress a serialized body; returns ``(compression header value, compressed bytes)``."""
    header = _METHODS.get(method, method)
    codec = _CODECS.get(header)
    if codec is None:
        raise ImproperlyConfigured(
            f"unknown compression {method!r} (known: {', '.join(_METHODS)})")
    return header, codec[0](body)


def decompress(body: bytes, compression_header: str) -> bytes:
    """Undo :func:`compress`, given the ``compression`` header (or a method name)."""
    codec = _CODECS.get(_METHODS.get(compression_header, compression_header))
    if codec is None:
        raise DecodeError(f"unsupported compression {compression_header!r}")
    try:
        return codec[1](body)
    except Exception as exc:  # zlib.error, OSError, lzma.LZMAError, ...
        raise DecodeError(f"cannot decompress {compression_header} body: {exc}") from exc
