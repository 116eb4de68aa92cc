"""Finding an app from a ``-A`` spec, shared by the CLI and pool children started fresh.

Layer: utils. Celery's rules: ``module``, ``module:attr`` or ``module.attr``; a module's ``app`` or
``celery`` attribute, its only Celery instance, or its ``celery`` submodule.

Every mistake is an ``ImproperlyConfigured`` whose message is one line starting ``-A <spec>:``
(a file path instead of a module name, a module that is not there, a module whose own code fails
while importing, with the file and line where it failed); the CLI shows it as it is.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import traceback
from types import ModuleType
from typing import Any

from ..exceptions import ImproperlyConfigured


def find_app(spec: str) -> Any:
    """Load an app from ``module``, ``module:attr`` or ``module.attr`` (Celery's ``-A`` rules)."""
    from ..app import Celery

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    _refuse_file_path(spec, module_name, attr)
    try:
        module = _import(spec, module_name)
    except ModuleNotFoundError as exc:
        if attr or "." not in module_name:
            raise ImproperlyConfigured(
                f"-A {spec}: cannot import module {module_name!r}: {exc}") from exc
        module_name, _, attr = module_name.rpartition(".")  # module.attr
        try:
            module = _import(spec, module_name)
        except ModuleNotFoundError as exc2:
            raise ImproperlyConfigured(
                f"-A {spec}: cannot import module {spec!r}: {exc}") from exc2
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
        sub = _import(spec, f"{module_name}.celery")
        for name in ("app", "celery"):
            candidate = getattr(sub, name, None)
            if isinstance(candidate, Celery):
                return candidate
    except ModuleNotFoundError:
        pass
    raise ImproperlyConfigured(f"-A {spec}: no celeriac.Celery app found in module {module_name!r} "
                               "(name it `app`, or use -A module:attribute)")


def _refuse_file_path(spec: str, module_name: str, attr: str) -> None:
    """``-A tasks.py`` or ``-A proj/tasks.py``: name the module to use instead."""
    if not (module_name.endswith(".py") or "/" in module_name or os.sep in module_name):
        return
    path = module_name[:-3] if module_name.endswith(".py") else module_name
    path = os.path.relpath(os.path.abspath(path))
    hint = ""
    if path.startswith(os.pardir):  # outside the current folder: only its name can be meant
        hint = f", run from {os.path.dirname(os.path.abspath(path))}"
        path = os.path.basename(path)
    dotted = ".".join(part for part in path.replace(os.sep, "/").split("/") if part)
    suggestion = f"{dotted}:{attr}" if attr else dotted
    raise ImproperlyConfigured(
        f"-A {spec}: use -A {suggestion} (a module name, not a file path{hint})")


def _import(spec: str, module_name: str) -> ModuleType:
    """Import ``module_name``. ``ModuleNotFoundError`` for the module itself (or a parent
    package) passes through; any failure of the module's own code while importing becomes one
    line naming the exception and where it happened."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise
        raise _import_failed(spec, module_name, exc) from exc
    except Exception as exc:  # the user's module raised while being imported
        raise _import_failed(spec, module_name, exc) from exc


def _import_failed(spec: str, module_name: str, exc: BaseException) -> ImproperlyConfigured:
    if isinstance(exc, SyntaxError):
        what = f"{type(exc).__name__}: {exc.msg}"
        where = _where(exc.filename, exc.lineno)
    else:
        what = f"{type(exc).__name__}: {exc}"
        frame = _last_user_frame(exc)
        where = _where(frame.filename, frame.lineno) if frame is not None else ""
    return ImproperlyConfigured(f"-A {spec}: importing {module_name} failed: {what}{where}")


def _where(filename: str | None, lineno: int | None) -> str:
    if not filename:
        return ""
    try:
        relative = os.path.relpath(filename)
        if not relative.startswith(os.pardir):
            filename = relative
    except ValueError:  # another drive (Windows)
        pass
    return f" ({filename}, line {lineno})" if lineno else f" ({filename})"


def _library_dirs() -> tuple[str, ...]:
    """Folders whose files are not the user's code: the standard library, installed packages
    and celeriac itself."""
    dirs = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # the celeriac package
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            dirs.add(os.path.abspath(sysconfig.get_paths()[key]))
        except KeyError:
            pass
    return tuple(d + os.sep for d in dirs)


def _last_user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame in the user's own code (not importlib's machinery, the
    standard library, installed packages or celeriac); else the innermost real file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<")]
    library = _library_dirs()
    for frame in reversed(frames):
        if not os.path.abspath(frame.filename).startswith(library):
            return frame
    return frames[-1] if frames else None
