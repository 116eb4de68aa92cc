"""``celery.utils.log`` is celeriac's."""

from celeriac.utils.log import get_logger, get_task_logger  # noqa: F401
