"""Ledger files that task modules write from worker processes and tests read."""

from __future__ import annotations

import os


def append(path: str, line: str) -> None:
    """One ``write`` on an O_APPEND file: whole lines, whichever process writes them."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
