"""Signals a dispatch sends, in the worker running its main task, as subtasks finish.

Layer: dispatch. ``sender`` is the main task; connect with ``sender=<the main task>`` to hear
only its subtasks. ``root_id`` is the main task's root (its own id when it was called directly).
"""

from __future__ import annotations

from ..signals import Signal

#: a subtask returned: ``root_id``, ``task_id``, ``retval`` (celery-dispatcher's signal)
subtask_success = Signal(name="subtask_success", providing_args=("root_id", "task_id", "retval"))
#: a subtask failed (raised, hit a time limit, lost its worker, was revoked): ``root_id``,
#: ``task_id``, ``exception``, ``traceback``
subtask_failure = Signal(name="subtask_failure",
                         providing_args=("root_id", "task_id", "exception", "traceback"))
#: nothing was heard of a subtask for ``dispatcher_subtask_timeout`` seconds: ``root_id``,
#: ``task_id``, ``exception`` (a ``TimeoutError``)
subtask_timeout = Signal(name="subtask_timeout",
                         providing_args=("root_id", "task_id", "exception"))

__all__ = ["subtask_success", "subtask_failure", "subtask_timeout"]
