"""A random salt drawn once per process; layer: utils.

Redis lease tokens are this salt plus a counter: unique across the fleet without asking the
kernel for random bytes on every fetch. A forked child draws its own (``utils/forks.py`` checks
``os.getpid()``, not an at-fork hook: servers such as uWSGI fork in C without running Python's
fork hooks, and a child sharing its parent's salt would hand out the parent's tokens).
"""

from __future__ import annotations

import secrets

from .forks import ForkLocal

_salt = ForkLocal(lambda: secrets.token_hex(6))


def process_salt() -> str:
    """12 random hex digits belonging to this process (drawn again after any fork)."""
    return _salt.get()
