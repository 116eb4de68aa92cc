"""Pure message layer: no I/O. Celery protocol v2 and the serializers."""
