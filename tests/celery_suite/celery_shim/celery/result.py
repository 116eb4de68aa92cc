"""``celery.result`` is celeriac's."""

from celeriac.result import *  # noqa: F403
