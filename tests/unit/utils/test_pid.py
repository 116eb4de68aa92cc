"""The fork-aware process id: a forked child sees its own pid and a salt of its own."""

from __future__ import annotations

import os

from celeriac.utils import pid


def test_a_forked_child_sees_its_own_pid_and_salt() -> None:
    assert pid.current() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports what it sees, then leaves at once
        os.close(read)
        os.write(write, f"{pid.current()} {os.getpid()} {pid.salt()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as reader:
        seen_pid, real_pid, salt = reader.read().split()
    os.waitpid(child, 0)
    assert int(seen_pid) == int(real_pid) == child
    assert salt != pid.salt() and pid.current() == os.getpid()
