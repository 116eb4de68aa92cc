"""Small shared helpers (no celeriac layers above them)."""

from __future__ import annotations

import uuid as _uuid


def gen_unique_id() -> str:
    """A new random id (a UUID4 string), the form task ids take: Celery's ``gen_unique_id``."""
    return str(_uuid.uuid4())


#: Celery's other name for it (``celery.utils.uuid``)
uuid = gen_unique_id

__all__ = ["gen_unique_id", "uuid"]
