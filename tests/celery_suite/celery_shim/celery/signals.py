"""``celery.signals`` is celeriac's."""

from celeriac.signals import *  # noqa: F403
