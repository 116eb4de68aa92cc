"""The celeriac app a celeriac worker loads to serve Celery's integration suite.

Loaded as ``celeriac -A tests.celery_suite.worker_app worker`` with the ``celery_shim`` directory
first on PYTHONPATH (so ``t/integration/tasks.py``'s ``celery`` imports are celeriac's) and the
extracted suite on it too. It reads what Celery's ``t/integration/conftest.py`` reads
(``TEST_BROKER``, ``TEST_BACKEND``) and uses Celery's settings for the suite's session app.
"""

from __future__ import annotations

import os

from celeriac import Celery

from .redis_side_channel import redirect_side_channel

app = Celery(
    "celery_integration_suite",
    broker=os.environ["TEST_BROKER"],
    backend=os.environ["TEST_BACKEND"],
    result_extended=True,
    task_create_missing_queues=False,
)
app.set_current()
app.set_default()

from t.integration import tasks  # noqa: E402  (shared tasks bind to the app made current above)

# what Celery's ``celery_class_tasks`` fixture registers on the session app
app.register_task(tasks.ClassBasedAutoRetryTask)
redirect_side_channel()
