"""``celery.backends.base``: only ``states``, which a task of the suite imports from here."""

from celeriac import states  # noqa: F401
