"""Broker and result-store URLs as people see them: passwords masked, SQLite paths absolute.

Layer: utils (imports nothing of ours). Used for the worker's banner and log lines and for the
client's "cannot reach the broker" error.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

__all__ = ["redact_url", "display_url"]

_SQLITE_SCHEMES = ("sqlite", "db+sqlite", "sqla+sqlite")


def redact_url(url: str) -> str:
    """Hide the password in a URL: ``redis://:secret@h:6379/0`` -> ``redis://:**@h:6379/0``.

    The user name stays (``amqp://guest:**@h``); a URL without a password is returned as it is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" not in rest:
        return url
    # The last "@" ends the credentials even when an unquoted password holds "/" or "@".
    creds, _, host = rest.rpartition("@")
    user, colon, _password = creds.partition(":")
    if not colon:  # ``redis://user@h``: a user name alone, nothing to hide
        return url
    return f"{scheme}://{user}:**@{host}"


def display_url(url: str) -> str:
    """``redact_url``, and for a SQLite file the absolute path it resolves to from here, since a
    relative ``sqlite:///celeriac.db`` means a different file in every working directory."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _SQLITE_SCHEMES and rest.startswith("/") and len(rest) > 1:
        path, query_sep, query = rest[1:].partition("?")
        if not os.path.isabs(path):
            absolute = os.path.abspath(unquote(path))
            return f"{scheme}:///{path}{query_sep}{query} ({absolute})"
    return redact_url(url)
