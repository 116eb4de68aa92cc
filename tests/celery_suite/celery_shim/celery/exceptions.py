"""``celery.exceptions`` is celeriac's."""

from celeriac.exceptions import *  # noqa: F403
