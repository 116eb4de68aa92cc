"""Text helpers for messages a user reads (no celeriac layers above them)."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(value: object) -> str:
    """An exception's message (or any text) on one line, runs of whitespace and line breaks
    joined by single spaces; an exception without a message gives its class name."""
    text = " ".join(str(value).split())
    if not text and isinstance(value, BaseException):
        return type(value).__name__
    return text
