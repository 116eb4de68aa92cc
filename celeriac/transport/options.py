"""``broker_transport_options`` a transport does not use: one warning line each, never silence.

Layer: transport (imports nothing of ours). Every transport takes its options as keyword
arguments and gathers the rest in ``**options``; ``unused_options`` tells which of those it has
no use for, and ``warn_unused`` logs one line per such key, naming the key and the broker, once
per process (a worker logs it at start-up, before its pool forks; a producer at its first
publish). Kombu's names that celeriac knows and does not need say why; a value that asks for
what celeriac does anyway (``fanout_prefix=True`` on Redis) says nothing.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import threading
from typing import Any, Iterable, Mapping

logger = logging.getLogger("celeriac.transport")

__all__ = ["unused_options", "warn_unused"]

_RETRIES = ("celeriac retries a publish by task_publish_retry_policy and a lost broker "
            "connection by broker_connection_retry and broker_connection_max_retries")

#: kombu transport options celeriac knows but has no use for -> why (every broker)
KOMBU_UNUSED: dict[str, str] = {
    "max_retries": _RETRIES, "interval_start": _RETRIES, "interval_step": _RETRIES,
    "interval_max": _RETRIES,
}
#: per broker: kombu options whose effect is built in -> (the value that asks for it, why)
BUILT_IN: dict[str, dict[str, tuple[Any, str]]] = {
    "Redis": {
        "fanout_prefix": (True, "broadcasts always use kombu's prefixed channels "
                                "(/<db>.<exchange>), as with fanout_prefix=True"),
        "fanout_patterns": (True, "broadcasts are always published per routing key, as with "
                                  "fanout_patterns=True"),
    },
}
#: per broker: kombu options that mean nothing there -> why
NOT_HERE: dict[str, dict[str, str]] = {
    "RabbitMQ": {
        "visibility_timeout": ("RabbitMQ has no visibility timeout: a message stays with the "
                               "connection it was delivered on until acked"),
    },
}

_warned: set[tuple[str, str]] = set()  # kept across fork: a pool's children do not repeat it
_warned_lock = threading.Lock()


def accepted_options(transport: type, extra: Iterable[str] = ()) -> list[str]:
    """The option names ``transport``'s constructor takes by name, plus ``extra``."""
    params = list(inspect.signature(transport).parameters.values())
    if params and params[0].kind is params[0].POSITIONAL_OR_KEYWORD:
        params = params[1:]  # the URL, path or name: not an option
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY] + list(extra)


def unused_options(transport: type, options: Mapping[str, Any],
                   extra: Iterable[str] = ()) -> dict[str, Any]:
    """The keys of ``options`` that ``transport``'s constructor does not take by name and that
    are not in ``extra`` (options it passes on, such as a client library's)."""
    known = set(accepted_options(transport, extra))
    return {key: value for key, value in options.items() if key not in known}


def warn_unused(broker: str, unused: Mapping[str, Any], accepted: Iterable[str] = ()) -> None:
    """One warning line per key of ``unused`` (options the ``broker`` transport ignores),
    once per process and key; ``accepted`` (the names it does take) suggests a close one."""
    names = list(accepted)
    for key in sorted(unused, key=str):
        built_in = BUILT_IN.get(broker, {}).get(key)
        if built_in is not None and unused[key] == built_in[0]:
            continue
        with _warned_lock:
            if (broker, key) in _warned:
                continue
            _warned.add((broker, key))
        why = (NOT_HERE.get(broker, {}).get(key) or KOMBU_UNUSED.get(key)
               or (built_in[1] if built_in is not None else None))
        if why is None:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.75)
            why = "no such option" + (f"; did you mean {close[0]!r}?" if close else "")
        logger.warning("broker_transport_options: %r has no effect on the %s broker "
                       "(ignored): %s", key, broker, why)
