"""``celery.worker.control``: custom remote-control commands are not supported by celeriac.

The suite's task module registers a few (used by test_inspect.py / test_worker.py, not by the
canvas and task tests); the decorators here keep the function and log once that the command is
not registered, so the module imports.
"""

import logging
from typing import Any, Callable

_log = logging.getLogger("celery_shim")


def _not_registered(kind: str) -> Callable[..., Any]:
    def decorator_factory(*_args: Any, **_kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        def keep(fun: Callable[..., Any]) -> Callable[..., Any]:
            _log.warning("celery shim: custom %s %r is not registered (celeriac has no custom "
                         "remote-control commands)", kind, fun.__name__)
            return fun

        return keep

    return decorator_factory


control_command = _not_registered("control command")
inspect_command = _not_registered("inspect command")


def add_consumer(state: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("celery.worker.control.add_consumer: not supported by celeriac")


def cancel_consumer(state: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("celery.worker.control.cancel_consumer: not supported by celeriac")
