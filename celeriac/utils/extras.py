"""What a broker or result-store URL needs: optional packages (the ``celeriac[...]`` extras),
imported at first use, and the error for a URL scheme nothing provides.

Layer: utils (used by the ``transport`` and ``backends`` factories). A feature whose package is
missing fails where it is first used, with one line naming the ``pip install`` to run, rather than
with a bare ``ModuleNotFoundError`` from deep inside an import. ``protocol/`` may not import utils:
``protocol/serialization.py`` raises the same error, in the same words, itself.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Sequence

from ..exceptions import ImproperlyConfigured, MissingDependency
from .urls import redact_url


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise MissingDependency naming ``pip install 'celeriac[extra]'``.

    ``feature`` says what needs it, as the user named it (``"the redis:// broker"``). Only the
    absence of ``module`` itself is reported this way: an ImportError from inside an installed
    package (a broken install, a missing dependency of its own) is raised as it is, so its real
    cause stays visible.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name not in (None, module, module.partition(".")[0]):
            raise
        raise MissingDependency(
            f"{feature} needs the {module!r} package: pip install 'celeriac[{extra}]'") from None


def unknown_scheme(setting: str, kind: str, url: str,
                   known: Sequence[str]) -> ImproperlyConfigured:
    """The error for a URL whose scheme is none of ``known``, suggesting the closest one:
    ``broker_url: unknown transport scheme 'redsi' in 'redsi://localhost' (did you mean 'redis'?
    known: memory, sqlite, ...)``."""
    if "://" in url:
        shown, scheme = redact_url(url), url.split("://", 1)[0].lower()
    else:  # no scheme at all: ``guest:secret@localhost`` must not show its password either
        shown = url.rpartition("@")[2]
        scheme = shown.lower()
    close = difflib.get_close_matches(scheme, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ImproperlyConfigured(
        f"{setting}: unknown {kind} scheme {scheme!r} in {shown!r} "
        f"({hint}known: {', '.join(known)})")
