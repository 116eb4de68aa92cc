"""Celery 5.7's own integration tests (t/integration) run against a celeriac worker.

Opt-in, never part of the default suite: ``python tests/celery_suite/run.py --help``. See
docs/testing.md ("Celery's own integration tests").
"""
