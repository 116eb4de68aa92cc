"""Exceptions users catch, named as Celery names them (``celery.exceptions``)."""

from __future__ import annotations

from typing import Any


class CeleriacError(Exception):
    """Base for celeriac's own errors."""


class ImproperlyConfigured(CeleriacError):
    """A setting is missing or has a value celeriac cannot use."""


class NotRegistered(KeyError, CeleriacError):
    """The task name is not in this process's registry."""

    def __repr__(self) -> str:
        return f"NotRegistered({self.args[0]!r})" if self.args else "NotRegistered()"


class ContentDisallowed(CeleriacError):
    """A message's content type is not in ``accept_content``."""


class DecodeError(CeleriacError):
    """A message body or envelope could not be decoded."""


class EncodeError(CeleriacError, TypeError):
    """A value could not be serialized (kombu's ``EncodeError``; also a TypeError)."""


class InvalidTaskError(CeleriacError):
    """A message is not a well-formed task message."""


class SecurityError(CeleriacError):
    """Refused to do something unsafe (e.g. rebuild a non-exception from result meta)."""


class TimeoutError(CeleriacError):  # noqa: A001 - Celery's name
    """``AsyncResult.get`` waited longer than its timeout."""


class Retry(CeleriacError):
    """Raised by ``Task.retry`` to tell the worker the task is to be retried."""

    def __init__(self, message: str | None = None, exc: BaseException | None = None,
                 when: Any = None, **kwargs: Any) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message or (repr(exc) if exc is not None else "Retry in %ss" % (when,)))

    def humanize(self) -> str:
        return f"in {self.when}s" if isinstance(self.when, (int, float)) else f"at {self.when}"

    def __reduce__(self):  # picklable across the process pool
        return (type(self), (self.message, self.exc, self.when))


RetryTaskError = Retry


class MaxRetriesExceededError(CeleriacError):
    """The task was retried ``max_retries`` times and still failed."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        self.task_args = task_args
        self.task_kwargs = task_kwargs
        super().__init__(*args)


class TaskRevokedError(CeleriacError):
    """The task was revoked (or expired) and will not run."""


class Ignore(CeleriacError):
    """Raised inside a task: the worker records nothing and acks."""


class Reject(CeleriacError):
    """Raised inside a task: reject the message (optionally requeue)."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class WorkerLostError(CeleriacError):
    """The process running the task died."""


class TimeLimitExceeded(CeleriacError):
    """The task ran past its hard time limit and was stopped."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a task when its soft time limit passes."""


class ChordError(CeleriacError):
    """A chord header task failed, so the body cannot run."""


class QueueNotFound(KeyError, CeleriacError):
    """A queue named in routing is not defined and queues may not be created."""


class AlreadyRunning(CeleriacError):
    """A one-at-a-time task is already running with the same lock key."""


class BackendError(CeleriacError):
    """The result store failed."""


class IncompleteStream(CeleriacError):
    """A result stream ended early."""


class OperationalError(CeleriacError, ConnectionError):
    """The broker could not be reached (kombu's ``OperationalError``): raised by a publish once
    ``task_publish_retry_policy`` is spent, naming the broker URL with its password masked.
    Also a ``ConnectionError``, so code that retries on connection errors (a worker sending a
    chain's next step) treats it as the passing fault it is."""


class MissingDependency(ImproperlyConfigured):
    """A feature needs an optional package that is not installed; the message names the
    ``pip install 'celeriac[...]'`` to run."""
