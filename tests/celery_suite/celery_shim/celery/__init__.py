"""A stand-in ``celery`` package for the celeriac worker process only.

Celery's ``t/integration/tasks.py`` imports ``celery``; the runner puts this directory first on
the worker subprocess's PYTHONPATH so those imports resolve to celeriac's equivalents. The pytest
process (the Celery client) never sees it.
"""

from celeriac import *  # noqa: F403
from celeriac import Signature, Task, chain, chord, group, shared_task, signature, states  # noqa: F401
from celeriac import __all__ as _celeriac_names

__all__ = list(_celeriac_names)
