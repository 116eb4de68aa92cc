"""``redis_wire._pack_one``: long commands of text are packed in Python, byte for byte as
hiredis packs them; anything else still goes through hiredis (and its refusals)."""

from __future__ import annotations

import hiredis
import pytest

from celeriac.utils import redis_wire


def test_a_long_command_of_text_and_bytes_is_packed_as_hiredis_packs_it() -> None:
    command = ("LPUSH", "q", *[f"envelope-{i}-é" for i in range(40)], b"\x00raw\r\n")
    assert len(command) >= redis_wire._LONG_COMMAND
    assert redis_wire._pack_one(command) == hiredis.pack_command(command)


def test_a_long_command_with_numbers_is_left_to_hiredis() -> None:
    command = ("ZADD", "q", *["1", "a"] * 10, 2.5, "b", 3, "c")
    out = [b"before"]
    assert not redis_wire._texts_into(command, out) and out == [b"before"]
    assert redis_wire._pack_one(command) == hiredis.pack_command(command)


@pytest.mark.parametrize("bad", [None, True])
def test_a_long_command_with_what_redis_cannot_carry_is_refused(bad) -> None:
    with pytest.raises(TypeError):
        redis_wire._pack_one(("LPUSH", "q", *["x"] * 20, bad))


def test_a_batch_packs_as_its_commands_one_by_one() -> None:
    commands = [("MULTI",), ("SADD", "b", "q"), ("LPUSH", "q", *[f"e{i}" for i in range(600)]),
                ("ZADD", "d", *["1.5", "x"] * 10, 2.5, "y"), ("EXEC",), ("PUBLISH", "w", "")]
    assert redis_wire.pack_commands(commands) == b"".join(
        hiredis.pack_command(c) for c in commands)


def test_the_remembered_length_heads_stay_bounded_and_right(monkeypatch) -> None:
    monkeypatch.setattr(redis_wire, "_MAX_HEADS", 8)
    monkeypatch.setattr(redis_wire, "_heads", {})
    command = ("LPUSH", "q", *["x" * size for size in range(40)])
    assert redis_wire._pack_one(command) == hiredis.pack_command(command)
    assert len(redis_wire._heads) <= 8
    assert redis_wire._pack_one(command) == hiredis.pack_command(command)
