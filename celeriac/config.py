"""Settings with Celery 5's names and defaults, "did you mean" on typos, and validation.

Layer: core (imports only ``exceptions``). The app keeps one ``Settings``; ``validate`` runs when
the app finalizes, so a bad value fails at startup with the setting named, not deep in a worker.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import numbers
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from datetime import timedelta
from typing import Any, Callable

from .exceptions import ImproperlyConfigured

__all__ = ["DEFAULTS", "CELERIAC_EXTRAS", "NOT_BUILT", "OLD_SETTING_NAMES", "Settings",
           "UnknownSettingWarning", "ineffective_settings", "settings_from_object", "validate"]

PROCESS_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
TASK_LOG_FORMAT = ("[%(asctime)s: %(levelname)s/%(processName)s] "
                   "%(task_name)s[%(task_id)s]: %(message)s")

#: Every Celery 5 setting with Celery's default, except ``broker_url`` and ``result_backend``
#: (None here: the app substitutes the embedded SQLite store), plus ``CELERIAC_EXTRAS``.
DEFAULTS: dict[str, Any] = {
    # -- top level
    "accept_content": ("json",), "result_accept_content": None, "enable_utc": True,
    "imports": (), "include": (), "timezone": None,
    # -- beat
    "beat_max_loop_interval": 0, "beat_schedule": {},
    "beat_scheduler": "celery.beat:PersistentScheduler",
    "beat_schedule_filename": "celerybeat-schedule", "beat_sync_every": 0,
    "beat_cron_starting_deadline": None,
    # -- broker
    "broker_url": None, "broker_read_url": None, "broker_write_url": None,
    "broker_transport": None, "broker_transport_options": {}, "broker_connection_timeout": 4,
    "broker_connection_retry": True, "broker_connection_retry_on_startup": None,
    "broker_connection_max_retries": 100, "broker_channel_error_retry": False,
    "broker_failover_strategy": None, "broker_heartbeat": 120, "broker_heartbeat_checkrate": 3.0,
    "broker_login_method": None, "broker_native_delayed_delivery_queue_type": "quorum",
    "broker_pool_limit": 10, "broker_use_ssl": False, "broker_host": None, "broker_port": None,
    "broker_user": None, "broker_password": None, "broker_vhost": None,
    # -- result store
    "result_backend": None, "result_cache_max": -1, "result_compression": None,
    "result_exchange": "celeryresults", "result_exchange_type": "direct",
    "result_expires": timedelta(days=1), "result_persistent": None, "result_extended": False,
    "result_serializer": "json", "result_backend_transport_options": {},
    "result_chord_retry_interval": 1.0, "result_chord_join_timeout": 3.0,
    "result_backend_max_sleep_between_retries_ms": 10000,
    "result_backend_max_retries": float("inf"),
    "result_backend_base_sleep_between_retries_ms": 10, "result_backend_always_retry": False,
    # -- tasks
    "task_acks_late": False, "task_acks_on_failure_or_timeout": True,
    "task_always_eager": False, "task_annotations": None, "task_compression": None,
    "task_create_missing_queues": True, "task_create_missing_queue_type": "classic",
    "task_create_missing_queue_exchange_type": None, "task_inherit_parent_priority": False,
    "task_default_delivery_mode": 2, "task_default_queue": "celery",
    "task_default_queue_type": "classic", "task_default_exchange": None,
    "task_default_exchange_type": "direct", "task_default_routing_key": None,
    "task_default_rate_limit": None, "task_default_priority": None,
    "task_eager_propagates": False, "task_ignore_result": False,
    "task_store_eager_result": False, "task_protocol": 2, "task_publish_retry": True,
    "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0, "interval_max": 1,
                                  "interval_step": 0.2},
    "task_queues": None, "task_queue_max_priority": None, "task_reject_on_worker_lost": None,
    "task_remote_tracebacks": False, "task_routes": None, "task_send_sent_event": False,
    "task_serializer": "json", "task_soft_time_limit": None, "task_time_limit": None,
    "task_store_errors_even_if_ignored": False, "task_track_started": False,
    "task_allow_error_cb_on_chord_header": False,
    # -- worker
    "worker_agent": None, "worker_autoscaler": "celery.worker.autoscale:Autoscaler",
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "worker_soft_shutdown_timeout": 0.0, "worker_enable_soft_shutdown_on_idle": False,
    "worker_concurrency": None, "worker_consumer": "celery.worker.consumer:Consumer",
    "worker_direct": False, "worker_disable_rate_limits": False,
    "worker_deduplicate_successful_tasks": False, "worker_enable_remote_control": True,
    "worker_hijack_root_logger": True, "worker_log_color": None,
    "worker_log_format": PROCESS_LOG_FORMAT, "worker_lost_wait": 10.0,
    "worker_max_memory_per_child": None, "worker_max_tasks_per_child": None,
    "worker_pool": "prefork", "worker_pool_putlocks": True, "worker_pool_restarts": False,
    "worker_proc_alive_timeout": 4.0, "worker_prefetch_multiplier": 4,
    "worker_enable_prefetch_count_reduction": True, "worker_redirect_stdouts": True,
    "worker_redirect_stdouts_level": "WARNING", "worker_send_task_events": False,
    "worker_state_db": None, "worker_task_log_format": TASK_LOG_FORMAT, "worker_timer": None,
    "worker_timer_precision": 1.0, "worker_detect_quorum_queues": True,
    # -- events and remote control
    "event_queue_expires": 60.0, "event_queue_ttl": 5.0, "event_queue_prefix": "celeryev",
    "event_serializer": "json", "event_exchange": "celeryev",
    "control_queue_ttl": 300.0, "control_queue_expires": 10.0, "control_exchange": "celery",
    # -- message signing
    "security_certificate": None, "security_cert_store": None, "security_key": None,
    "security_key_password": None, "security_digest": "sha256",
    # -- result store specifics
    "database_url": None, "database_engine_options": None,
    "database_short_lived_sessions": False, "database_table_schemas": None,
    "database_table_names": None, "database_create_tables_at_setup": True,
    "redis_backend_use_ssl": None, "redis_db": None, "redis_host": None,
    "redis_max_connections": None, "redis_username": None, "redis_password": None,
    "redis_port": None, "redis_socket_timeout": 120.0, "redis_socket_connect_timeout": None,
    "redis_retry_on_timeout": False, "redis_socket_keepalive": False,
    "cache_backend": None, "cache_backend_options": {},
    "mongodb_backend_settings": None, "couchbase_backend_settings": None,
    "arangodb_backend_settings": None,
    "cassandra_entry_ttl": None, "cassandra_keyspace": None, "cassandra_port": None,
    "cassandra_read_consistency": None, "cassandra_servers": None, "cassandra_bundle_path": None,
    "cassandra_table": None, "cassandra_write_consistency": None,
    "cassandra_auth_provider": None, "cassandra_auth_kwargs": None, "cassandra_options": {},
    "s3_access_key_id": None, "s3_secret_access_key": None, "s3_bucket": None,
    "s3_base_path": None, "s3_endpoint_url": None, "s3_region": None,
    "azureblockblob_container_name": "celery", "azureblockblob_retry_initial_backoff_sec": 2,
    "azureblockblob_retry_increment_base": 2, "azureblockblob_retry_max_attempts": 3,
    "azureblockblob_base_path": "", "azureblockblob_connection_timeout": 20,
    "azureblockblob_read_timeout": 120,
    "gcs_bucket": None, "gcs_project": None, "gcs_base_path": "", "gcs_ttl": 0,
    "cosmosdbsql_database_name": "celerydb", "cosmosdbsql_collection_name": "celerycol",
    "cosmosdbsql_consistency_level": "Session", "cosmosdbsql_max_retry_attempts": 9,
    "cosmosdbsql_max_retry_wait_time": 30,
    "elasticsearch_retry_on_timeout": None, "elasticsearch_max_retries": None,
    "elasticsearch_timeout": None, "elasticsearch_save_meta_as_text": True,
    # -- celeriac's own (see CELERIAC_EXTRAS)
    "worker_max_deliveries": 10, "worker_async_concurrency": 100, "worker_hostname": None,
    "worker_heartbeat_interval": 2.0, "event_skip_unheard": True,
    # metrics and tracing (see docs/monitoring.md)
    "worker_metrics_port": None, "worker_metrics_address": "0.0.0.0", "tracing_enabled": False,
    # dispatch (celery-dispatcher's names and defaults; see docs/dispatch.md)
    "dispatcher_result_backend": None, "dispatcher_batch_size": 100, "dispatcher_poll_size": 100,
    "dispatcher_poll_timeout": 10, "dispatcher_subtask_timeout": 3600,
    "dispatcher_failure_on_subtask_timeout": False,
    "dispatcher_failure_on_subtask_exception": False,
    "dispatcher_progress_update_frequency": 1, "dispatcher_concurrency": 16,
    # beat (see docs/periodic-tasks.md)
    "beat_leader_lease": 10.0,
}

#: Settings Celery does not have.
CELERIAC_EXTRAS: tuple[str, ...] = (
    "worker_max_deliveries",     # a message delivered this many times without finishing is
                                 # dead-lettered (poison-message guard)
    "worker_async_concurrency",  # how many ``async def`` tasks one worker runs at once
    "worker_hostname",           # node name used when the worker is started without ``-n``
    "worker_heartbeat_interval",  # seconds between worker heartbeats (Celery's event freq, 2.0)
    "event_skip_unheard",  # task events nobody received go as one per flush (docs/monitoring.md)
    "worker_metrics_port",     # the worker's Prometheus endpoint: a port, a range, 0 (any free)
    "worker_metrics_address",  # the address that endpoint listens on
    "tracing_enabled",         # OpenTelemetry spans for publish and run (celeriac[otel])
    # celery-dispatcher's settings (dispatch is built in here)
    "dispatcher_result_backend", "dispatcher_batch_size", "dispatcher_poll_size",
    "dispatcher_poll_timeout", "dispatcher_subtask_timeout",
    "dispatcher_failure_on_subtask_timeout", "dispatcher_failure_on_subtask_exception",
    "dispatcher_progress_update_frequency",
    "dispatcher_concurrency",  # how many dispatch main tasks one worker runs at once
    "beat_leader_lease",  # seconds a beat stays the one that fires after its last renewal
)

#: Celery 3 uppercase names -> today's names. An uppercase spelling of a current name
#: (``BROKER_URL``, ``RESULT_EXPIRES``) is also accepted without being listed here.
OLD_SETTING_NAMES: dict[str, str] = {
    "CELERY_ACCEPT_CONTENT": "accept_content", "CELERY_ENABLE_UTC": "enable_utc",
    "CELERY_IMPORTS": "imports", "CELERY_INCLUDE": "include", "CELERY_TIMEZONE": "timezone",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_SCHEDULE": "beat_schedule", "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
    "CELERY_CACHE_BACKEND": "cache_backend",
    "CELERY_CACHE_BACKEND_OPTIONS": "cache_backend_options",
    "CELERY_RESULT_BACKEND": "result_backend", "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_RESULT_PERSISTENT": "result_persistent", "CELERY_RESULT_EXCHANGE": "result_exchange",
    "CELERY_RESULT_COMPRESSION": "result_compression",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires", "CELERY_MAX_CACHED_RESULTS": "result_cache_max",
    "CELERY_RESULT_DBURI": "database_url",
    "CELERY_RESULT_ENGINE_OPTIONS": "database_engine_options",
    "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS": "database_short_lived_sessions",
    "CELERY_RESULT_DB_TABLENAMES": "database_table_names",
    "CELERY_REDIS_HOST": "redis_host", "CELERY_REDIS_PORT": "redis_port",
    "CELERY_REDIS_DB": "redis_db", "CELERY_REDIS_PASSWORD": "redis_password",
    "CELERY_REDIS_MAX_CONNECTIONS": "redis_max_connections",
    "CELERY_MONGODB_BACKEND_SETTINGS": "mongodb_backend_settings",
    "CELERY_SECURITY_KEY": "security_key", "CELERY_SECURITY_CERTIFICATE": "security_certificate",
    "CELERY_SECURITY_CERT_STORE": "security_cert_store",
    "CELERY_ACKS_LATE": "task_acks_late", "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ANNOTATIONS": "task_annotations", "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_IGNORE_RESULT": "task_ignore_result", "CELERY_TASK_PROTOCOL": "task_protocol",
    "CELERY_TASK_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_TASK_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_QUEUES": "task_queues", "CELERY_ROUTES": "task_routes",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit", "CELERY_TRACK_STARTED": "task_track_started",
    "CELERY_STORE_ERRORS_EVEN_IF_IGNORED": "task_store_errors_even_if_ignored",
    "CELERYD_AGENT": "worker_agent", "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYD_CONCURRENCY": "worker_concurrency", "CELERYD_CONSUMER": "worker_consumer",
    "CELERY_WORKER_DIRECT": "worker_direct",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger",
    "CELERYD_LOG_COLOR": "worker_log_color", "CELERYD_LOG_FORMAT": "worker_log_format",
    "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child",
    "CELERYD_POOL": "worker_pool", "CELERYD_POOL_PUTLOCKS": "worker_pool_putlocks",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERY_REDIRECT_STDOUTS": "worker_redirect_stdouts",
    "CELERY_REDIRECT_STDOUTS_LEVEL": "worker_redirect_stdouts_level",
    "CELERY_SEND_EVENTS": "worker_send_task_events", "CELERYD_STATE_DB": "worker_state_db",
    "CELERYD_TASK_LOG_FORMAT": "worker_task_log_format", "CELERYD_TIMER": "worker_timer",
    "CELERYD_TIMER_PRECISION": "worker_timer_precision",
    "CELERY_EVENT_QUEUE_EXPIRES": "event_queue_expires",
    "CELERY_EVENT_QUEUE_TTL": "event_queue_ttl", "CELERY_EVENT_SERIALIZER": "event_serializer",
}

_SETTING_NAMES = tuple(DEFAULTS)


class UnknownSettingWarning(UserWarning):
    """A setting name that is neither Celery's nor celeriac's (usually a typo)."""


def _closest(name: str) -> str | None:
    if name in OLD_SETTING_NAMES:
        return OLD_SETTING_NAMES[name]
    match = difflib.get_close_matches(name.lower(), _SETTING_NAMES, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_message(name: str, prefix: str) -> str:
    hint = _closest(name)
    return f"{prefix} {name!r}; did you mean {hint!r}?" if hint else f"{prefix} {name!r}"


def _fresh(value: Any) -> Any:
    # Each Settings gets its own dicts and lists, so mutating one app's value can't leak to another.
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


class Settings(MutableMapping):
    """One app's settings: Celery's defaults overlaid with what the user set.

    Read by attribute (``conf.task_serializer``) or by key. Unknown names are stored (users keep
    their own values here) but warn with the closest real name, because a typo'd setting would
    otherwise be silently ignored.
    """

    def __init__(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        object.__setattr__(self, "_values", {k: _fresh(v) for k, v in DEFAULTS.items()})
        object.__setattr__(self, "_changed", set())
        self.update(mapping, **kwargs)

    def _set(self, key: str, value: Any, stacklevel: int) -> None:
        if key not in DEFAULTS and key not in self._values:
            warnings.warn(_unknown_message(key, "unknown setting"), UnknownSettingWarning,
                          stacklevel=stacklevel + 1)
        self._values[key] = value
        self._changed.add(key)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._set(key, value, stacklevel=2)

    def __delitem__(self, key: str) -> None:
        """Forget the user's value: a Celery setting reverts to its default."""
        if key not in self._changed:
            raise KeyError(key)
        self._changed.discard(key)
        if key in DEFAULTS:
            self._values[key] = _fresh(DEFAULTS[key])
        else:
            del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # keeps copy/pickle probes and half-built instances sane
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(_unknown_message(name, "no setting")) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._set(name, value, stacklevel=2)

    def update(self,  # type: ignore[override]  # one signature for dict's three overloads
               mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
               /, **kwargs: Any) -> None:
        items = mapping.items() if isinstance(mapping, Mapping) else (mapping or ())
        for key, value in items:
            self._set(key, value, stacklevel=2)
        for key, value in kwargs.items():
            self._set(key, value, stacklevel=2)

    @property
    def changes(self) -> dict[str, Any]:
        """The values the user set (what differs from a fresh app)."""
        return {key: self._values[key] for key in self._values if key in self._changed}

    def copy(self) -> "Settings":
        new = Settings()
        for key, value in self.changes.items():
            new._values[key] = _fresh(value)
            new._changed.add(key)
        return new

    def __repr__(self) -> str:
        return f"<Settings: {len(self._changed)} changed of {len(self._values)}>"


# ---- validation -------------------------------------------------------------------------------
SERIALIZERS = ("json", "msgpack", "yaml", "pickle")
CONTENT_TYPES = ("application/json", "application/x-msgpack", "application/x-yaml",
                 "application/x-python-serialize")
COMPRESSIONS = ("zlib", "gzip", "bzip2", "lzma", "xz")

#: booleans whose Celery default is None ("decide from other settings")
_OPTIONAL_BOOLS = frozenset({"broker_connection_retry_on_startup", "result_persistent",
                             "task_reject_on_worker_lost", "worker_log_color",
                             "elasticsearch_retry_on_timeout"})
#: bool settings that also take a dict of options (Celery's TLS settings)
_BOOL_OR_DICT = frozenset({"broker_use_ssl"})
_BOOLS = tuple(k for k, v in DEFAULTS.items()
               if (isinstance(v, bool) or k in _OPTIONAL_BOOLS) and k not in _BOOL_OR_DICT)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_accept_list(v: Any) -> bool:
    return (isinstance(v, (list, tuple, set, frozenset))
            and all(isinstance(x, str) and (x in SERIALIZERS or x in CONTENT_TYPES) for x in v))


def _is_url(v: Any) -> bool:
    return v is None or (isinstance(v, str) and "://" in v)


def _is_routes(v: Any) -> bool:
    return v is None or isinstance(v, (Mapping, list, tuple, str)) or callable(v)


def _is_expires(v: Any) -> bool:
    if isinstance(v, timedelta):
        return v >= timedelta(0)
    return v is None or (_is_number(v) and v >= 0)


def _is_ports(v: Any) -> bool:
    """A port, ``"low-high"`` or 0 (the worker's endpoint checks the numbers, naming the fix)."""
    if v is None or (_is_int(v) and 0 <= v <= 65535):
        return True
    low, _, high = v.partition("-") if isinstance(v, str) else ("", "", "")
    return low.strip().isdigit() and (not high or high.strip().isdigit())


def _optional_positive(v: Any) -> bool:
    return v is None or (_is_number(v) and v > 0)


_SERIALIZER_DESC = "one of " + ", ".join(SERIALIZERS)
_ACCEPT_DESC = "a list of serializer names or content types"

#: setting -> (check, what a valid value is, for the error message)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task_serializer": (lambda v: v in SERIALIZERS, _SERIALIZER_DESC),
    "result_serializer": (lambda v: v in SERIALIZERS, _SERIALIZER_DESC),
    "event_serializer": (lambda v: v in SERIALIZERS, _SERIALIZER_DESC),
    "accept_content": (_is_accept_list, _ACCEPT_DESC),
    "result_accept_content": (lambda v: v is None or _is_accept_list(v), f"None or {_ACCEPT_DESC}"),
    "worker_prefetch_multiplier": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "worker_concurrency": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an int >= 1"),
    "worker_max_deliveries": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "worker_async_concurrency": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "event_skip_unheard": (lambda v: isinstance(v, bool), "True or False"),
    "worker_heartbeat_interval": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and v > 0, "a number of seconds > 0"),
    "worker_metrics_port": (_is_ports, "None, a port, a range of ports ('9808-9815') or 0 "
                                       "(any free port)"),
    "worker_metrics_address": (lambda v: isinstance(v, str) and bool(v),
                               "an address to listen on, such as '0.0.0.0' or '127.0.0.1'"),
    "beat_leader_lease": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                          and v > 0, "a number of seconds > 0"),
    "task_time_limit": (_optional_positive, "None or a number > 0"),
    "task_soft_time_limit": (_optional_positive, "None or a number > 0"),
    "result_expires": (_is_expires, "None, a number >= 0 or a timedelta"),
    "task_default_queue": (lambda v: isinstance(v, str) and bool(v), "a non-empty str"),
    "task_default_priority": (lambda v: v is None or (_is_int(v) and 0 <= v <= 255),
                              "None or an int from 0 to 255"),
    "broker_url": (_is_url, "None or a URL str containing '://'"),
    "broker_read_url": (_is_url, "None or a URL str containing '://'"),
    "broker_write_url": (_is_url, "None or a URL str containing '://'"),
    "result_backend": (_is_url, "None or a URL str containing '://'"),
    "broker_transport_options": (lambda v: isinstance(v, Mapping), "a dict"),
    "broker_use_ssl": (lambda v: isinstance(v, (bool, Mapping)), "a bool or a dict of ssl options"),
    "task_publish_retry_policy": (lambda v: isinstance(v, Mapping), "a dict"),
    "task_routes": (_is_routes, "a dict, list, tuple, dotted path str, callable or None"),
    "task_queues": (lambda v: v is None or isinstance(v, (Mapping, list, tuple, set)),
                    "None or a list of queues"),
    "task_compression": (lambda v: v is None or v in COMPRESSIONS,
                         "None or one of " + ", ".join(COMPRESSIONS)),
    "result_compression": (lambda v: v is None or v in COMPRESSIONS,
                           "None or one of " + ", ".join(COMPRESSIONS)),
    "imports": (lambda v: isinstance(v, (list, tuple, set)), "a list of module names"),
    "include": (lambda v: isinstance(v, (list, tuple, set)), "a list of module names"),
    "timezone": (lambda v: v is None or isinstance(v, str), "None or a time zone name"),
}


def _bool_ok(key: str, v: Any) -> bool:
    if v is None:
        return key in _OPTIONAL_BOOLS
    return isinstance(v, bool) or (_is_int(v) and v in (0, 1))


def validate(settings: Mapping[str, Any]) -> None:
    """Raise ``ImproperlyConfigured`` naming the first setting whose value celeriac can't use."""
    for key, (check, expected) in _CHECKS.items():
        if key in settings:
            value = settings[key]
            if not check(value):
                raise ImproperlyConfigured(f"{key}: expected {expected}, got {value!r}")
    for key in _BOOLS:
        if key in settings and not _bool_ok(key, settings[key]):
            expected = "a bool or None" if key in _OPTIONAL_BOOLS else "a bool"
            raise ImproperlyConfigured(f"{key}: expected {expected}, got {settings[key]!r}")


# ---- loading from a module or object ----------------------------------------------------------
def _load(name: str) -> Any:
    """Import ``pkg.mod``, ``pkg.mod:attr`` or ``pkg.mod.attr``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        module_name, _, attr = name.rpartition(".")
        if exc.name != name or not module_name:
            raise
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            raise exc from None


def _new_name(name: str) -> str | None:
    """The current name for a Celery 3 or uppercase setting name, or None."""
    if name in OLD_SETTING_NAMES:
        return OLD_SETTING_NAMES[name]
    lower = name.lower()
    return lower if name.isupper() and lower in DEFAULTS else None


def _is_helper(value: Any) -> bool:
    # Imports and helper definitions in a config module are not settings.
    return (isinstance(value, types.ModuleType) or inspect.isclass(value)
            or inspect.isfunction(value))


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """Collect settings from a module, a dotted module name, a mapping or any object.

    Without a namespace: lowercase public names, plus Celery 3's uppercase names. With
    ``namespace="CELERY"`` (Django style): only ``CELERY_*`` names, prefix stripped, lowercased.
    """
    if isinstance(obj, str):
        obj = _load(obj)
    if isinstance(obj, Mapping):
        source = dict(obj)
    else:
        source = {name: getattr(obj, name) for name in dir(obj) if not name.startswith("_")}
    found: dict[str, Any] = {}
    prefix = f"{namespace}_" if namespace else None
    for name, value in source.items():
        if prefix is not None:
            if not name.startswith(prefix):
                continue
            key = name[len(prefix):].lower()
            if key not in DEFAULTS:
                key = OLD_SETTING_NAMES.get(name, key)
        elif name.islower():
            key = name
        elif (new := _new_name(name)) is not None:
            key = new
        else:  # CamelCase helpers, unrelated uppercase constants
            continue
        if key not in DEFAULTS and _is_helper(value):
            continue
        found[key] = value
    return found


# ---- accepted but not built yet -----------------------------------------------------------------
_BEAT_STATE = "celeriac's beat keeps its state in the result store, not in a file"
_SOFT_SHUTDOWN = ("soft shutdown is not built in celeriac yet: a warm shutdown waits for "
                  "running tasks to finish")
_LOGGING = ("celeriac's worker logging does not read it yet: the worker uses its built-in format "
            "and handlers (connect to the setup_logging signal to log your own way)")
_NO_EFFECT = "celeriac does not use it: it has no effect"

#: Every Celery setting celeriac accepts but does not act on yet -> why, as the worker says it.
#: The worker logs one line per entry whose value differs from Celery's default (see
#: ``ineffective_settings``); docs/configuration.md lists the same table. Remove an entry when
#: its feature is built. AMQP-only settings and the settings of result stores celeriac doesn't
#: have are not here: they have no effect in Celery either with celeriac's brokers and stores.
NOT_BUILT: dict[str, str] = {
    # periodic tasks (celery beat): celeriac's beat has one scheduler, with its state in the store
    "beat_scheduler": ("celeriac's beat has one scheduler, which keeps schedules and last runs in "
                       "the result store: no scheduler class is loaded (docs/periodic-tasks.md)"),
    "beat_schedule_filename": _BEAT_STATE,
    "beat_sync_every": "celeriac's beat stores each run as it fires: there is nothing to sync",
    # events: celeriac's receivers subscribe through the broker's own broadcast (Redis pub/sub,
    # a private auto-deleted RabbitMQ queue, the SQLite broadcast table), not a celeryev.* queue
    "event_queue_expires": ("celeriac's event receivers use a private queue that goes when they "
                            "disconnect, so it needs no expiry"),
    "event_queue_ttl": ("celeriac's event receivers read events as they come; their queue keeps "
                        "no message time-to-live"),
    "event_queue_prefix": ("celeriac's event receivers name their private queue themselves "
                           "(celeriac.subscriber.<uuid> on RabbitMQ)"),
    "task_annotations": ("celeriac does not apply task annotations yet: the attributes they set "
                         "(rate_limit and the rest) keep each task's own values"),
    # shutdown and connection loss
    "worker_soft_shutdown_timeout": _SOFT_SHUTDOWN,
    "worker_enable_soft_shutdown_on_idle": _SOFT_SHUTDOWN,
    "worker_cancel_long_running_tasks_on_connection_loss": (
        "celeriac does not cancel running tasks when the broker connection is lost: they run "
        "on, and with acks_late their messages come back once their lease lapses"),
    # task options read from the task only
    "task_acks_on_failure_or_timeout": (
        "celeriac does not read it yet: a task that fails or times out is always acknowledged"),
    "task_store_errors_even_if_ignored": (
        "celeriac reads only the task attribute store_errors_even_if_ignored: set it on the task"),
    "task_inherit_parent_priority": "celeriac does not pass a parent's priority on yet",
    "task_remote_tracebacks": "celeriac does not attach remote tracebacks to exceptions yet",
    "task_allow_error_cb_on_chord_header": "celeriac does not link error callbacks to a chord's "
                                           "header tasks yet",
    "task_protocol": "celeriac sends task protocol 2 only",
    # time zones: periodic schedules follow them; naive datetimes elsewhere are read as UTC
    "enable_utc": ("celeriac reads naive eta/expires datetimes as UTC whatever it says (crontab "
                   "schedules do follow it)"),
    "timezone": ("celeriac reads naive eta/expires datetimes as UTC, not in this zone (crontab "
                 "schedules do run in it)"),
    # worker features not built
    "worker_deduplicate_successful_tasks": "celeriac does not deduplicate tasks yet",
    "worker_direct": "celeriac does not create per-worker queues yet",
    "worker_state_db": "celeriac keeps revokes in the result store, not in a state file",
    "worker_pool_restarts": "pool restarts by remote control are not built in celeriac yet",
    "worker_consumer": "celeriac does not load a custom consumer class",
    "worker_agent": _NO_EFFECT, "worker_timer": _NO_EFFECT, "worker_timer_precision": _NO_EFFECT,
    "worker_lost_wait": _NO_EFFECT, "worker_proc_alive_timeout": _NO_EFFECT,
    "worker_pool_putlocks": _NO_EFFECT, "worker_enable_prefetch_count_reduction": _NO_EFFECT,
    # worker logging
    "worker_hijack_root_logger": _LOGGING, "worker_log_color": _LOGGING,
    "worker_log_format": _LOGGING, "worker_task_log_format": _LOGGING,
    "worker_redirect_stdouts_level": "celeriac does not redirect a task's print() into the log "
                                     "yet",
    # broker connection
    "broker_read_url": "celeriac uses broker_url for reading and writing",
    "broker_write_url": "celeriac uses broker_url for reading and writing",
    "broker_failover_strategy": "broker failover is not built in celeriac yet",
    "broker_connection_timeout": "only the RabbitMQ broker uses it",
    "broker_pool_limit": _NO_EFFECT,
    "broker_host": "celeriac reads the broker only from broker_url",
    "broker_port": "celeriac reads the broker only from broker_url",
    "broker_user": "celeriac reads the broker only from broker_url",
    "broker_password": "celeriac reads the broker only from broker_url",
    "broker_vhost": "celeriac reads the broker only from broker_url",
    # results
    "result_compression": "celeriac does not compress results yet: they are stored as they are",
    "result_cache_max": _NO_EFFECT,
    "result_chord_retry_interval": "celeriac joins chords by counting in the result store, "
                                   "without polling",
    "result_chord_join_timeout": "celeriac joins chords by counting in the result store, "
                                 "without polling",
    "result_backend_always_retry": "celeriac does not retry result-store writes yet",
    "result_backend_max_retries": "celeriac does not retry result-store writes yet",
    "result_backend_base_sleep_between_retries_ms": "celeriac does not retry result-store "
                                                    "writes yet",
    "result_backend_max_sleep_between_retries_ms": "celeriac does not retry result-store "
                                                   "writes yet",
    "redis_host": "celeriac reads the Redis result store only from result_backend",
    "redis_port": "celeriac reads the Redis result store only from result_backend",
    "redis_db": "celeriac reads the Redis result store only from result_backend",
    "database_url": "celeriac reads the SQLite result store only from result_backend",
    "database_engine_options": "celeriac's SQLite result store does not use SQLAlchemy",
    "database_short_lived_sessions": "celeriac's SQLite result store does not use SQLAlchemy",
    "database_table_schemas": "celeriac's SQLite result store has its own table names",
    "database_table_names": "celeriac's SQLite result store has its own table names",
    "database_create_tables_at_setup": "celeriac's SQLite result store creates its tables "
                                       "when first used",
    # message signing
    "security_key": "message signing is not built in celeriac yet: messages are not signed",
    "security_certificate": "message signing is not built in celeriac yet: messages are not "
                            "signed",
    "security_cert_store": "message signing is not built in celeriac yet: messages are not "
                           "signed",
    "security_key_password": "message signing is not built in celeriac yet: messages are not "
                             "signed",
    "security_digest": "message signing is not built in celeriac yet: messages are not signed",
}

#: settings in ``NOT_BUILT`` that celeriac reads for part of what they mean in Celery (and warns
#: about for the rest): ``timezone``/``enable_utc`` place crontab schedules, not naive datetimes
PARTLY_BUILT: frozenset[str] = frozenset({"timezone", "enable_utc"})

#: worker options (Celery's command-line flags, as Worker keyword arguments) -> the setting each
#: one sets, as Celery's worker maps them; one that is not built yet is then warned about
WORKER_OPTION_SETTINGS: dict[str, str] = {
    "time_limit": "task_time_limit", "soft_time_limit": "task_soft_time_limit",
    "max_tasks_per_child": "worker_max_tasks_per_child",
    "max_memory_per_child": "worker_max_memory_per_child",
    "statedb": "worker_state_db", "heartbeat_interval": "worker_heartbeat_interval",
    "metrics_port": "worker_metrics_port",
}

#: worker options (the CLI's flags) that have no effect yet: (option, flag as typed, why)
_NOT_BUILT_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("optimization", "-O", "celeriac has no optimization profiles: it has no effect"),
)

#: task attribute -> why a value of it has no effect; checked on every task (none today:
#: rate_limit is enforced, see worker/rate_limits.py)
_TASK_ATTRIBUTES: dict[str, str] = {}


#: time zone names that mean what celeriac does anyway
_UTC_NAMES = frozenset({"UTC", "ETC/UTC", "GMT", "ETC/GMT", "Z"})


def _differs(value: Any, default: Any) -> bool:
    """Whether a value asks for something the default doesn't (an empty or zero value counts as
    not set when the default is empty, zero or None)."""
    if not default:
        return bool(value)
    return bool(value != default)


#: name parts that mark a setting whose value may hold a secret (a URL can carry a password)
_SECRET_HINTS = ("password", "passwd", "secret", "key", "url", "token", "credential", "auth",
                 "cert", "uri", "dsn")


def _shown(key: str, value: Any) -> str:
    """``key='value'`` for a short scalar, the bare name for a schedule, mapping or list, and for
    any setting whose name suggests a secret or a URL (its value is never printed)."""
    if any(hint in key.lower() for hint in _SECRET_HINTS):
        return key
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return key
    text = repr(value)
    return f"{key}={text}" if len(text) <= 60 else key


#: settings in ``NOT_BUILT`` that some brokers do use: broker URL schemes where they take effect
_BUILT_FOR: dict[str, tuple[str, ...]] = {
    "broker_connection_timeout": ("amqp", "amqps", "pyamqp"),
}


def ineffective_settings(conf: Mapping[str, Any], tasks: Mapping[str, Any] | None = None,
                         options: Mapping[str, Any] | None = None) -> list[str]:
    """One warning line per setting, worker option or task attribute that is set but has no
    effect in celeriac yet (``NOT_BUILT``), in a stable order.

    ``tasks``: name -> task (the app's own tasks); ``options``: the worker's options as the CLI
    passes them (``task_events=True`` for ``-E``).
    """
    lines: list[str] = []
    scheme = str(conf.get("broker_url") or "").split("://", 1)[0].lower()
    for key, reason in NOT_BUILT.items():
        if scheme in _BUILT_FOR.get(key, ()):
            continue
        if key in conf and _differs(conf[key], DEFAULTS[key]) and not (
                key == "timezone" and str(conf[key]).upper() in _UTC_NAMES):
            lines.append(f"{_shown(key, conf[key])} is set but {reason}")
    for option, flag, reason in _NOT_BUILT_OPTIONS:
        if options and options.get(option):
            lines.append(f"{flag} was given but {reason}")
    for name in sorted(tasks or {}):
        task = (tasks or {})[name]
        for attr, reason in _TASK_ATTRIBUTES.items():
            value = getattr(task, attr, None)
            if value is None:
                continue
            lines.append(f"{name} has {attr}={value!r}, {reason}")
    return lines
