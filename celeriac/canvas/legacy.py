"""Celery 2's ``TaskSet``: a list of signatures sent together as one group.

Layer: canvas. Kept so code written for Celery 2 and 3 (``TaskSet(tasks=[...]).apply_async()``)
runs unchanged; it is a ``group`` underneath, and returns a ``TaskSetResult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .. import _context
from .primitives import group
from .signature import maybe_signature

if TYPE_CHECKING:
    from ..app import Celery
    from ..result import TaskSetResult


class TaskSet(list):
    """Signatures applied together; ``apply_async()`` returns a ``TaskSetResult``."""

    def __init__(self, tasks: Iterable[Any] | None = None, app: "Celery | None" = None,
                 Publisher: Any = None) -> None:  # noqa: N803 - Celery 2's argument name
        super().__init__(maybe_signature(t, app=app) for t in tasks or ())
        self._app = app

    @property
    def app(self) -> "Celery":
        app = self._app or next((t._app for t in self if t._app is not None), None) \
            or _context.get_current_app()
        if app is None:
            from ..exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("TaskSet has no app: create a Celery app first")
        return app

    @property
    def tasks(self) -> list:
        return list(self)

    @property
    def total(self) -> int:
        return len(self)

    def apply_async(self, connection: Any = None, publisher: Any = None,
                    taskset_id: str | None = None, **options: Any) -> "TaskSetResult":
        """Send every task of the set (one group, id ``taskset_id``)."""
        from ..result import TaskSetResult

        app = self.app
        result = group(list(self), app=app).apply_async(task_id=taskset_id, **options)
        return TaskSetResult(result.id, result.results, app=app)

    def apply(self, taskset_id: str | None = None) -> "TaskSetResult":
        """Run every task of the set here, now."""
        from ..result import TaskSetResult

        app = self.app
        result = group(list(self), app=app).apply(task_id=taskset_id)
        return TaskSetResult(result.id, result.results, app=app)
