"""The public names: pinned, so nothing becomes public (or disappears) by accident.

A Celery project migrates by replacing ``celery`` with ``celeriac`` in its imports; these are the
imports such projects make.
"""

from __future__ import annotations

import importlib

import pytest

import celeriac

PINNED_TOP_LEVEL = [
    "AsyncResult", "Broadcast", "Celery", "EagerResult", "Exchange", "GroupResult", "Queue",
    "ResultSet", "Signature", "Task",
    "TaskSet", "TaskSetResult", "__version__", "chain", "chord", "chunks", "current_app",
    "current_task", "get_current_app", "group", "maybe_signature", "shared_task", "signature",
    "states", "subtask", "xmap", "xstarmap",
]

CELERY_STYLE_IMPORTS = {
    "celeriac.result": ["AsyncResult", "EagerResult", "GroupResult", "ResultSet",
                        "TaskSetResult"],
    "celeriac.exceptions": [
        "Retry", "MaxRetriesExceededError", "TaskRevokedError", "NotRegistered", "Ignore", "Reject",
        "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError", "ChordError",
        "ImproperlyConfigured", "SecurityError", "TimeoutError", "QueueNotFound", "EncodeError",
        "DecodeError", "ContentDisallowed",
    ],
    "celeriac.signals": [
        "before_task_publish", "after_task_publish", "task_prerun", "task_postrun", "task_retry",
        "task_success", "task_failure", "task_internal_error", "task_received", "task_revoked",
        "task_unknown", "task_rejected", "celeryd_init", "celeryd_after_setup", "worker_init",
        "worker_before_create_process", "worker_ready", "heartbeat_sent", "worker_shutting_down",
        "worker_process_init", "worker_process_shutdown", "worker_shutdown", "import_modules",
        "setup_logging", "after_setup_logger", "after_setup_task_logger",
    ],
    "celeriac.utils.log": ["get_task_logger", "get_logger"],
    "celeriac.states": ["PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED",
                        "READY_STATES"],
    "celeriac.canvas": ["Signature", "signature", "subtask", "maybe_signature", "chain", "group",
                        "chord", "chunks", "xmap", "xstarmap", "TaskSet"],
    # Celery 2/3 import paths still found in older projects
    "celeriac.task": ["Task", "task", "shared_task"],
    "celeriac.task.sets": ["TaskSet", "subtask"],
    "celeriac.utils": ["gen_unique_id"],
    # kombu's names, for `from kombu import Queue` -> `from celeriac import Queue`
    "celeriac.routing": ["Queue", "Exchange", "Broadcast"],
}


def test_top_level_all_is_pinned():
    assert sorted(celeriac.__all__) == sorted(PINNED_TOP_LEVEL)
    for name in celeriac.__all__:
        if name not in ("current_app", "current_task"):
            assert getattr(celeriac, name) is not None


@pytest.mark.parametrize("module", sorted(CELERY_STYLE_IMPORTS))
def test_celery_style_imports(module):
    mod = importlib.import_module(module)
    missing = [n for n in CELERY_STYLE_IMPORTS[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lacks {missing}"


def test_current_task_imported_once_is_looked_up_at_each_use():
    from celeriac import current_task  # bound at import time, as a module's top line binds it

    app = celeriac.Celery("ct", broker="memory://ct", backend="memory://ct")
    seen = []

    @app.task(bind=True)
    def probe(self):
        seen.append((bool(current_task), current_task.name, current_task.request.id))
        return current_task == self

    try:
        assert not current_task  # no task runs here
        result = probe.apply(task_id="probe-1")
        assert result.get() is True
        assert seen == [(True, probe.name, "probe-1")]
        assert not current_task
    finally:
        app.close()


def test_current_app_is_looked_up_at_access_time():
    app = celeriac.Celery("pinned", broker="memory://pinned", backend="memory://pinned")
    try:
        # a proxy (as Celery's is), resolved on every use
        assert celeriac.current_app == app
        assert celeriac.current_app._get_current_object() is app
    finally:
        app.close()


def test_routing_entities_are_one_class_everywhere():
    from celeriac import routing
    from celeriac.protocol import entities

    for name in ("Queue", "Exchange", "Broadcast"):
        assert getattr(celeriac, name) is getattr(routing, name) is getattr(entities, name)
