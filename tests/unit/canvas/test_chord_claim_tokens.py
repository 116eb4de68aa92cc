"""Chord dispatch-claim tokens: cheap, yet never shared by two header tasks, even across a fork."""

from __future__ import annotations

import os

import pytest

from celeriac.canvas.chords import claim_token


def test_tokens_in_one_process_are_all_different() -> None:
    tokens = [claim_token() for _ in range(10_000)]
    assert len(set(tokens)) == len(tokens)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_tokens_its_parent_never_does() -> None:
    # prefork children are forked from one parent: the same counter and prefix in two children
    # would let both believe they hold one chord's claim
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first tokens, then out without running pytest's teardown
        try:
            os.write(write_end, "\n".join(claim_token() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    parent = {claim_token() for _ in range(100)}
    assert len(child) == 100
    assert not child & parent
