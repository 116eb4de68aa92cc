"""Rate limits kept in the result store: Celery's rate strings, and the run-time overrides.

Layer: client side (beside ``app`` and ``locks``). A task's ``rate_limit`` (or
``task_default_rate_limit``) holds for every worker together: the result store keeps one bucket
per task (its ``RateLimits`` capability, backends/base.py) and each worker asks it before a call
starts (worker/rate_limits.py). ``app.control.rate_limit()`` changes a task's rate at run time
by writing an override here, which every worker reads within about a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.base import Locks, RateLimits
from .exceptions import ImproperlyConfigured, OperationalError
from .locks import Lock

if TYPE_CHECKING:
    from .app import Celery
    from .backends.base import ResultBackend

#: the one key holding every run-time override: {task name: rate string, "0" for no limit}
OVERRIDES_KEY = "celeriac-rate-overrides"
#: the lock its writers take, so two changes at once never lose one
OVERRIDES_LOCK = "celeriac-rate-overrides"
#: overrides are kept until changed (set_value's own default would be ``result_expires``)
OVERRIDES_TTL = 100 * 365 * 86400.0

#: Celery's rate units: calls per second, per minute, per hour
_PER_SECOND = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: Any, what: str = "rate_limit") -> float:
    """Calls per second for a rate as Celery writes it: ``'100/s'``, ``'10/m'``, ``'1000/h'``,
    or a number (per second). 0.0 means no limit (None, ``''``, ``0``, ``'0'``). Anything else
    is a ValueError naming ``what`` and the accepted forms."""
    if value is None or value == "" or value == 0:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(_bad_rate(value, what))
    if isinstance(value, str):
        count, _, unit = value.strip().partition("/")
        seconds = _PER_SECOND.get(unit.strip() or "s")
        try:
            number = float(count)
        except ValueError:
            number = float("nan")
        if seconds is None or number != number:  # (NaN: not a number)
            raise ValueError(_bad_rate(value, what))
        per_second = number / seconds
    else:
        per_second = float(value)
    if per_second < 0 or per_second == float("inf"):
        raise ValueError(_bad_rate(value, what))
    return per_second


def _bad_rate(value: Any, what: str) -> str:
    return (f"{what}={value!r} is not a rate: write calls per unit as '100/s', '10/m' or "
            f"'1000/h', a number of calls per second, or '0'/None for no limit")


def interval_of(value: Any, what: str = "rate_limit") -> float | None:
    """Seconds between two calls at rate ``value``; None when it sets no limit."""
    per_second = parse_rate(value, what)
    return 1.0 / per_second if per_second > 0 else None


def rate_store(app: Celery, what: str) -> RateLimits:
    """The app's result store as the keeper of rate limits, or one line naming the fix."""
    backend = app.backend
    if isinstance(backend, RateLimits):
        return backend
    where = app.conf.result_backend or "none"
    raise ImproperlyConfigured(
        f"{what} needs a result store that keeps rate limits for every worker, and {where!r} "
        f"does not: set result_backend to 'sqlite:///celeriac.db' or 'redis://...' (rpc:// "
        f"keeps no state), or worker_disable_rate_limits=True")


def read_overrides(backend: ResultBackend) -> dict[str, str]:
    """The run-time overrides: task name -> rate string (``"0"``: no limit)."""
    found = backend.get_value(OVERRIDES_KEY)
    if not isinstance(found, dict):
        return {}
    return {str(name): str(rate) for name, rate in found.items()}


def write_override(app: Celery, task_name: str, rate: str | None) -> None:
    """Set (``rate``: a rate string, ``"0"`` for no limit) or drop (None) the override of
    ``task_name``, under the overrides' lock."""
    store = rate_store(app, f"app.control.rate_limit({task_name!r}, ...)")
    backend = app.backend
    if not isinstance(store, Locks):
        raise ImproperlyConfigured(f"app.control.rate_limit needs a result store that holds "
                                   f"locks, and {app.conf.result_backend!r} does not")
    lock = Lock(store, OVERRIDES_LOCK, expire=10.0)
    if not lock.acquire_within(10.0):  # another change is being written: it takes milliseconds
        raise OperationalError(f"could not change the rate limit of {task_name}: the lock "
                               f"{OVERRIDES_LOCK!r} stayed held for 10 s")
    try:
        overrides = read_overrides(backend)
        if rate is None:
            overrides.pop(task_name, None)
        else:
            overrides[task_name] = rate
        backend.set_value(OVERRIDES_KEY, overrides, ttl=OVERRIDES_TTL)
    finally:
        lock.release()
