"""Finding an app from a ``-A`` spec, shared by the CLI and pool children started fresh.

Layer: utils. Celery's rules: ``module``, ``module:attr`` or ``module.attr``; a module's ``app`` or
``celery`` attribute, its only Celery instance, or its ``celery`` submodule.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..exceptions import ImproperlyConfigured


def find_app(spec: str) -> Any:
    """Load an app from ``module``, ``module:attr`` or ``module.attr`` (Celery's ``-A`` rules)."""
    from ..app import Celery

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if attr or "." not in module_name or exc.name != module_name:
            raise ImproperlyConfigured(
                f"-A {spec}: cannot import module {module_name!r}: {exc}") from exc
        module_name, _, attr = module_name.rpartition(".")
        module = importlib.import_module(module_name)
    if attr:
        app = getattr(module, attr, None)
        if app is None:
            raise ImproperlyConfigured(
                f"-A {spec}: module {module_name!r} has no attribute {attr!r}")
        return app() if callable(app) and not isinstance(app, Celery) else app
    for name in ("app", "celery"):
        candidate = getattr(module, name, None)
        if isinstance(candidate, Celery):
            return candidate
    found = [v for v in vars(module).values() if isinstance(v, Celery)]
    if len(found) == 1:
        return found[0]
    try:  # a package with a celery.py module (proj/celery.py), as Celery looks for
        sub = importlib.import_module(f"{module_name}.celery")
        for name in ("app", "celery"):
            candidate = getattr(sub, name, None)
            if isinstance(candidate, Celery):
                return candidate
    except ModuleNotFoundError:
        pass
    raise ImproperlyConfigured(f"-A {spec}: no celeriac.Celery app found in module {module_name!r} "
                           "(name it `app`, or use -A module:attribute)")
