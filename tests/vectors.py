"""Where the captured Celery messages live (``shared/vectors/celery``), for every test module.

``CELERIAC_VECTORS`` names the folder; else ``shared/`` beside this checkout, as the project lays
it out; else the machine's ``/work/shared`` (a checkout cloned somewhere else on this machine).
"""

from __future__ import annotations

import os
from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "celery"


def _celery_vectors() -> Path:
    named = os.environ.get("CELERIAC_VECTORS")
    if named:
        return Path(named)
    return _BESIDE if _BESIDE.is_dir() else Path("/work/shared/vectors/celery")


#: the root of the captured Celery 5.7 messages, results and snapshots
CELERY_VECTORS = _celery_vectors()
