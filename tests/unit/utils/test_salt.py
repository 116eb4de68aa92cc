"""The per-process salt of Redis lease tokens: a forked child draws its own, also when the fork
bypasses Python's at-fork hooks (as servers that fork in C do)."""

from __future__ import annotations

import ctypes
import os

import pytest

from celeriac.utils.salt import process_salt


def _salt_in_child(fork) -> str:
    read, write = os.pipe()
    child = fork()
    if child == 0:  # the child reports its salt, then leaves at once
        os.close(read)
        os.write(write, process_salt().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as reader:
        salt = reader.read()
    os.waitpid(child, 0)
    return salt


@pytest.mark.parametrize("how", ["os.fork", "libc fork"])
def test_a_forked_child_draws_a_salt_of_its_own(how: str) -> None:
    mine = process_salt()
    assert process_salt() == mine and len(mine) == 12
    # PyDLL keeps the GIL through the call: with CDLL another thread (pytest-xdist's) may hold
    # it at the fork, and the child, which only has this thread, would wait for it forever
    fork = os.fork if how == "os.fork" else ctypes.PyDLL(None, use_errno=True).fork
    child_salt = _salt_in_child(fork)
    assert len(child_salt) == 12 and child_salt != mine
    assert process_salt() == mine
