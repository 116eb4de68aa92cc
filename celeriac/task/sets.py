"""Celery 2's ``celery.task.sets`` import path: ``from celeriac.task.sets import TaskSet, subtask``.

Layer: task. Nothing lives here: ``TaskSet`` is ``canvas/legacy.py``'s, ``subtask`` the canvas's
``signature``.
"""

from __future__ import annotations

from ..canvas.legacy import TaskSet
from ..canvas.signature import maybe_signature, signature, subtask

#: Celery 3's name for ``maybe_signature``
maybe_subtask = maybe_signature

__all__ = ["TaskSet", "maybe_subtask", "signature", "subtask"]
