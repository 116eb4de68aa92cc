"""Live interop tests: real Celery 5 and celeriac clients and workers sharing one Redis."""
