"""The canvas: task calls as data (signatures) and the workflows built from them.

Layer: canvas, above the producer and the result store. ``signature.py`` holds the Signature
itself, ``primitives.py`` chain/group/chord, ``maps.py`` map/starmap/chunks, ``chords.py`` and
``followups.py`` what a worker does when a task of a workflow ends, ``legacy.py`` Celery 2's
TaskSet.
"""

from .legacy import TaskSet
from .maps import chunks, xmap, xstarmap
from .primitives import chain, chord, group
from .signature import Signature, maybe_signature, result_from_tuple, signature, subtask

__all__ = [
    "Signature", "TaskSet", "chain", "chord", "chunks", "group", "maybe_signature",
    "result_from_tuple", "signature", "subtask", "xmap", "xstarmap",
]
