"""``celery.states`` is celeriac's."""

from celeriac.states import *  # noqa: F403
