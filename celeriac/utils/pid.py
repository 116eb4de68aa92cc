"""This process's id, kept current by a fork hook; layer: utils.

Transports and result stores check on every call whether they were forked (a child must not use
its parent's sockets). Asking the kernel each time is a system call per check, several per task;
reading a number the hook refreshes after ``fork()`` is not.
"""

from __future__ import annotations

import os
import secrets
_pid = os.getpid()
_salt = secrets.token_hex(6)


def current() -> int:
    """``os.getpid()``, without the system call."""
    return _pid


def salt() -> str:
    """Random hex drawn again in every forked child: makes counters unique across processes."""
    return _salt


def _refresh() -> None:
    global _pid, _salt
    _pid = os.getpid()
    _salt = secrets.token_hex(6)


os.register_at_fork(after_in_child=_refresh)
