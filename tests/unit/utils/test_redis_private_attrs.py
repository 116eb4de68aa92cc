"""What celeriac reads from inside redis-py and hiredis, checked against the installed versions.

``utils/redis_wire.py`` sends and reads on a redis-py ``Connection`` itself (its private ``_sock``
and ``_parser``), and ``backends/redis_pubsub.py`` waits on the pub/sub connection's ``_sock``.
pyproject.toml holds redis-py to the majors these were checked in; when a release renames or
drops one of them, these tests fail naming the attribute and the version, instead of the wire
silently falling back to redis-py's slow path (or breaking in a worker).
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import hiredis
import pytest
import redis
import redis.connection
from packaging.requirements import Requirement
from packaging.version import Version
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

from celeriac.utils import redis_wire

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
CONNECTION_CLASSES = [redis.Connection, redis.UnixDomainSocketConnection, redis.SSLConnection]


def _gone(what: str, used_by: str) -> str:
    return (f"redis-py {redis.__version__} (hiredis {hiredis.__version__}): {what} is gone or "
            f"changed (used by {used_by}). Adapt that code to this release before widening "
            "the redis-py range in pyproject.toml.")


def _connection(cls: type) -> redis.connection.AbstractConnection:
    options = {"path": "/nonexistent.sock"} if cls is redis.UnixDomainSocketConnection else {}
    return cls(**options)


def test_the_installed_redis_py_is_in_the_range_pyproject_pins() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for extra in ("redis", "test"):
        pins = [Requirement(r) for r in extras[extra] if Requirement(r).name == "redis"]
        assert pins, f"the {extra!r} extra no longer names redis-py"
        for pin in pins:
            assert pin.specifier.contains(Version(redis.__version__)), (
                f"redis-py {redis.__version__} is outside {pin} (the {extra!r} extra), the range "
                "celeriac's reads of its private attributes were checked in")
            assert pin.specifier.contains("5.0") and not pin.specifier.contains("9.0"), (
                f"{pin}: widen it only after checking Connection._sock and ._parser there")


@pytest.mark.parametrize("cls", CONNECTION_CLASSES, ids=lambda c: c.__name__)
def test_a_connection_keeps_its_socket_in_sock(cls: type) -> None:
    conn = _connection(cls)
    assert "_sock" in vars(conn), _gone(f"{cls.__name__}._sock (the socket)",
                                        "utils/redis_wire.py and backends/redis_pubsub.py")
    assert conn._sock is None, _gone(f"{cls.__name__}._sock being None before connecting",
                                     "utils/redis_wire.py")


@pytest.mark.parametrize("cls", CONNECTION_CLASSES, ids=lambda c: c.__name__)
def test_a_connection_has_a_parser_that_builds_redis_py_errors(cls: type) -> None:
    conn = _connection(cls)
    parser = vars(conn).get("_parser")
    assert parser is not None, _gone(f"{cls.__name__}._parser", "utils/redis_wire.py")
    parse_error = getattr(parser, "parse_error", None)
    assert callable(parse_error), _gone(f"{type(parser).__name__}.parse_error (via _parser)",
                                        "utils/redis_wire.py's hiredis reader")
    error = parse_error("NOSCRIPT No matching script")
    assert isinstance(error, NoScriptError), _gone("parse_error making NoScriptError",
                                                   "utils/redis_wire.py (reloading scripts)")
    assert isinstance(parse_error("ERR wrong"), ResponseError), _gone(
        "parse_error making ResponseError", "utils/redis_wire.py")
    encoder = getattr(conn, "encoder", None)
    assert encoder is not None and all(
        hasattr(encoder, name) for name in ("decode_responses", "encoding", "encoding_errors")
    ), _gone(f"{cls.__name__}.encoder's decode_responses/encoding/encoding_errors",
             "utils/redis_wire.py")


def test_a_connected_connection_has_a_real_socket_in_sock(redis_server: str) -> None:
    conn = redis_wire.connector(redis.Redis.from_url(redis_server).connection_pool)()
    try:
        sock = getattr(conn, "_sock", None)
        assert isinstance(sock, socket.socket), _gone("Connection._sock holding the socket once "
                                                      "connected", "utils/redis_wire.py")
        wire = redis_wire.Wire(lambda: conn, busy_poll=0)
        assert wire._make_reader(conn) is not None, _gone(
            "what the hiredis reader is built from", "utils/redis_wire.py")
        assert wire.call(("PING",)) == [b"PONG"]
    finally:
        conn.disconnect()


def test_the_redis_py_helpers_celeriac_imports_are_there() -> None:
    # backends/redis.py parses URLs with it, as redis-py's from_url does
    parse_url = getattr(redis.connection, "parse_url", None)
    assert callable(parse_url), _gone("redis.connection.parse_url", "backends/redis.py")
    parsed = parse_url("redis://h:6380/3")
    assert parsed.items() >= {"host": "h", "port": 6380, "db": 3}.items(), _gone(
        "parse_url's result", "backends/redis.py")
    # redis_wire packs commands with these when hiredis is missing
    encoder = redis.connection.Encoder("utf-8", "strict", False)
    pack = redis.connection.PythonRespSerializer(6000, encoder.encode).pack
    command = ("SET", "k", b"v", 1, 2.5)
    assert b"".join(pack(*command)) == hiredis.pack_command(command), _gone(
        "redis.connection.Encoder / PythonRespSerializer", "utils/redis_wire.py without hiredis")


def test_hiredis_has_what_the_wire_uses() -> None:
    marker = object()
    reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError,
                            notEnoughData=marker)
    assert reader.gets() is marker, "hiredis Reader(notEnoughData=...) is not honoured"
    reader.feed(b"-ERR nope\r\n:1\r\n")
    assert isinstance(reader.gets(), ResponseError) and reader.gets() == 1
    assert hasattr(hiredis, "PushNotification"), (
        f"hiredis {hiredis.__version__} has no PushNotification (3.2 and later): "
        "utils/redis_wire.py would take RESP3 pushes for replies")
