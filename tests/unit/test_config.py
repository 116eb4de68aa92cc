"""Settings: Celery's names and defaults, typo warnings, validation, loading from objects."""

from __future__ import annotations

import pickle
import sys
import textwrap
import types
from datetime import timedelta

import pytest

from celeriac.config import (
    CELERIAC_EXTRAS,
    DEFAULTS,
    OLD_SETTING_NAMES,
    Settings,
    UnknownSettingWarning,
    settings_from_object,
    validate,
)
from celeriac.exceptions import ImproperlyConfigured


# ---- defaults -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key, expected", [
    ("broker_url", None), ("result_backend", None), ("task_serializer", "json"),
    ("result_serializer", "json"), ("accept_content", ("json",)), ("result_accept_content", None),
    ("worker_prefetch_multiplier", 4), ("worker_concurrency", None), ("task_acks_late", False),
    ("task_default_queue", "celery"), ("task_create_missing_queues", True),
    ("result_expires", timedelta(days=1)), ("broker_transport_options", {}),
    ("task_publish_retry", True), ("enable_utc", True), ("worker_pool", "prefork"),
    ("task_track_started", False), ("result_extended", False), ("task_compression", None),
    ("task_reject_on_worker_lost", None), ("task_always_eager", False),
    ("worker_max_deliveries", 10),
])
def test_defaults_match_celery(key, expected):
    assert DEFAULTS[key] == expected
    assert Settings()[key] == expected


def test_retry_policy_default_is_celerys():
    assert DEFAULTS["task_publish_retry_policy"] == {
        "max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2}


def test_extras_are_settings_and_old_names_point_at_settings():
    assert set(CELERIAC_EXTRAS) <= set(DEFAULTS)
    assert set(OLD_SETTING_NAMES.values()) <= set(DEFAULTS)
    assert all(name.isupper() for name in OLD_SETTING_NAMES)


def test_defaults_pass_validation():
    validate(Settings())


# ---- Settings -----------------------------------------------------------------------------------
def test_attribute_and_item_access_agree():
    conf = Settings(task_serializer="msgpack")
    assert conf.task_serializer == conf["task_serializer"] == "msgpack"
    assert conf.get("task_serializer") == "msgpack"
    conf.task_acks_late = True
    assert conf["task_acks_late"] is True
    assert conf.get("no_such_setting", 7) == 7


@pytest.mark.parametrize("how", ["item", "attribute", "update", "kwargs"])
def test_unknown_setting_warns_with_closest_name_and_is_kept(how):
    conf = Settings()
    with pytest.warns(UnknownSettingWarning,
                      match=r"unknown setting 'task_serialiser'; did you mean 'task_serializer'\?"):
        if how == "item":
            conf["task_serialiser"] = "yaml"
        elif how == "attribute":
            conf.task_serialiser = "yaml"
        elif how == "update":
            conf.update({"task_serialiser": "yaml"})
        else:
            conf.update(task_serialiser="yaml")
    assert conf["task_serialiser"] == "yaml"
    assert conf.task_serializer == "json"


def test_unknown_setting_warns_once_and_old_names_suggest_the_new_one():
    conf = Settings()
    with pytest.warns(UnknownSettingWarning, match="did you mean 'task_always_eager'"):
        conf["CELERY_ALWAYS_EAGER"] = True
    conf["CELERY_ALWAYS_EAGER"] = False  # already known to this Settings: no second warning
    assert conf["CELERY_ALWAYS_EAGER"] is False


def test_unknown_without_a_close_match_has_no_suggestion():
    with pytest.warns(UnknownSettingWarning) as record:
        Settings()["zzqqxx"] = 1
    assert str(record[0].message) == "unknown setting 'zzqqxx'"


def test_reading_an_unknown_attribute_names_the_closest():
    conf = Settings()
    with pytest.raises(AttributeError, match="did you mean 'worker_concurrency'"):
        conf.worker_concurency  # noqa: B018
    with pytest.raises(KeyError):
        conf["worker_concurency"]
    assert not hasattr(conf, "nothing_like_this_at_all")


def test_changes_lists_only_what_the_user_set():
    conf = Settings()
    assert conf.changes == {}
    conf.update({"task_default_queue": "celery", "worker_concurrency": 3})
    assert conf.changes == {"task_default_queue": "celery", "worker_concurrency": 3}


def test_delete_reverts_to_default():
    conf = Settings(worker_concurrency=3)
    del conf["worker_concurrency"]
    assert conf.worker_concurrency is None
    assert "worker_concurrency" not in conf.changes
    with pytest.raises(KeyError):
        del conf["worker_concurrency"]


def test_setdefault_keeps_existing_and_mapping_protocol():
    conf = Settings(task_serializer="yaml")
    assert conf.setdefault("task_serializer", "json") == "yaml"
    assert "task_serializer" in conf
    assert len(conf) == len(list(conf)) == len(DEFAULTS)


def test_mutable_defaults_are_per_instance():
    a, b = Settings(), Settings()
    a.broker_transport_options["visibility_timeout"] = 5
    assert b.broker_transport_options == {}
    assert DEFAULTS["broker_transport_options"] == {}


def test_copy_is_independent():
    conf = Settings(broker_transport_options={"x": 1}, worker_concurrency=2)
    dup = conf.copy()
    assert dup.changes == conf.changes
    dup.worker_concurrency = 9
    dup.broker_transport_options["x"] = 2
    assert conf.worker_concurrency == 2
    assert conf.broker_transport_options == {"x": 1}


def test_settings_pickle_round_trip():
    conf = Settings(worker_concurrency=5)
    again = pickle.loads(pickle.dumps(conf))
    assert again.worker_concurrency == 5
    assert again.changes == {"worker_concurrency": 5}


# ---- validate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key, bad", [
    ("task_serializer", "xml"), ("result_serializer", "bson"), ("accept_content", "json"),
    ("accept_content", ["json", "xml"]), ("result_accept_content", ["nope"]),
    ("worker_prefetch_multiplier", "four"), ("worker_prefetch_multiplier", -1),
    ("worker_prefetch_multiplier", True), ("worker_concurrency", 0),
    ("worker_concurrency", 2.5), ("task_time_limit", 0), ("task_soft_time_limit", "10"),
    ("result_expires", -1), ("result_expires", timedelta(seconds=-1)), ("result_expires", "1d"),
    ("task_default_queue", ""), ("task_default_queue", None), ("broker_url", "localhost"),
    ("result_backend", 5), ("broker_transport_options", [("a", 1)]), ("task_routes", 5),
    ("task_compression", "snappy"), ("task_acks_late", "yes"), ("task_acks_late", 2),
    ("task_acks_late", None), ("task_reject_on_worker_lost", "no"),
    ("task_default_priority", 256), ("worker_max_deliveries", 0),
])
def test_validate_rejects_bad_values_naming_setting_and_value(key, bad):
    with pytest.raises(ImproperlyConfigured) as info:
        validate(Settings({key: bad}))
    message = str(info.value)
    assert message.startswith(f"{key}: expected ")
    assert message.endswith(f"got {bad!r}")


def test_validate_message_format():
    with pytest.raises(ImproperlyConfigured,
                       match=r"^worker_prefetch_multiplier: expected an int >= 0, got 'four'$"):
        validate({"worker_prefetch_multiplier": "four"})


@pytest.mark.parametrize("key, good", [
    ("accept_content", ["json", "application/x-msgpack", "pickle"]), ("task_serializer", "yaml"),
    ("worker_prefetch_multiplier", 0), ("worker_concurrency", 8), ("task_time_limit", 2.5),
    ("result_expires", None), ("result_expires", 0), ("result_expires", timedelta(hours=1)),
    ("broker_url", "redis://localhost:6379/0"), ("result_backend", "sqlite:///x.db"),
    ("task_routes", "proj.routers.route"), ("task_routes", [{"a": "b"}]),
    ("task_routes", lambda *a, **k: None), ("task_compression", "zlib"),
    ("task_acks_late", 1), ("task_acks_late", 0), ("task_reject_on_worker_lost", None),
    ("task_reject_on_worker_lost", True),
])
def test_validate_accepts_good_values(key, good):
    validate({key: good})


# ---- settings_from_object -----------------------------------------------------------------------
def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def test_from_module_takes_lowercase_public_names_and_skips_helpers():
    import datetime

    def helper():
        return None

    mod = _module("cfg", broker_url="memory://", task_serializer="json", _private=1,
                  CamelCase=2, SOME_CONSTANT=3, datetime=datetime, helper=helper,
                  my_own_value=42)
    assert settings_from_object(mod) == {"broker_url": "memory://", "task_serializer": "json",
                                         "my_own_value": 42}


def test_a_setting_may_be_callable():
    def route(name, args, kwargs, options, task=None, **kw):
        return None

    assert settings_from_object(_module("cfg", task_routes=route)) == {"task_routes": route}


def test_old_uppercase_names_are_translated():
    mod = _module("cfg", BROKER_URL="redis://", CELERY_RESULT_BACKEND="redis://",
                  CELERY_TASK_SERIALIZER="msgpack", CELERYD_CONCURRENCY=4,
                  CELERY_ALWAYS_EAGER=True, CELERYBEAT_SCHEDULE={})
    assert settings_from_object(mod) == {
        "broker_url": "redis://", "result_backend": "redis://", "task_serializer": "msgpack",
        "worker_concurrency": 4, "task_always_eager": True, "beat_schedule": {}}


def test_namespace_takes_prefixed_names_only():
    class DjangoSettings:
        CELERY_BROKER_URL = "redis://"
        CELERY_TASK_ACKS_LATE = True
        CELERY_ALWAYS_EAGER = True  # Celery 3 name with the namespace prefix
        DEBUG = True
        task_serializer = "yaml"

    assert settings_from_object(DjangoSettings, namespace="CELERY") == {
        "broker_url": "redis://", "task_acks_late": True, "task_always_eager": True}


def test_mapping_source():
    assert settings_from_object({"task_serializer": "yaml", "X": 1}) == {"task_serializer": "yaml"}


@pytest.fixture
def config_module(tmp_path, monkeypatch):
    package = tmp_path / "cfgpkg_h4"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celeryconfig.py").write_text(textwrap.dedent("""
        broker_url = "memory://"
        worker_concurrency = 3

        class Config:
            task_default_queue = "from-class"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cfgpkg_h4.celeryconfig"
    for name in ("cfgpkg_h4.celeryconfig", "cfgpkg_h4"):
        sys.modules.pop(name, None)


def test_dotted_module_name(config_module):
    assert settings_from_object(config_module) == {"broker_url": "memory://",
                                                   "worker_concurrency": 3}


@pytest.mark.parametrize("suffix", [":Config", ".Config"])
def test_dotted_path_to_an_object(config_module, suffix):
    assert settings_from_object(config_module + suffix) == {"task_default_queue": "from-class"}


def test_missing_module_raises_import_error(config_module):
    with pytest.raises(ImportError):
        settings_from_object("cfgpkg_h4.does_not_exist")
    with pytest.raises(ImportError):
        settings_from_object("no_such_top_level_module_h4")


# ---- accepted but not built yet -----------------------------------------------------------------
class _Task:
    def __init__(self, rate_limit=None) -> None:
        self.rate_limit = rate_limit


def test_a_fresh_app_has_no_ineffective_settings():
    from celeriac.config import ineffective_settings
    assert ineffective_settings(Settings(), {"tasks.add": _Task()}, {"task_events": False}) == []


def test_each_ineffective_setting_gets_one_line_naming_it():
    from celeriac.config import ineffective_settings

    conf = Settings(beat_schedule={"every-minute": {"task": "tasks.add", "schedule": 60.0}},
                    beat_schedule_filename="/var/run/celerybeat-schedule",
                    worker_direct=True, result_compression="zlib",
                    worker_send_task_events=True, task_send_sent_event=True,
                    event_queue_ttl=1.0)
    lines = ineffective_settings(conf, {})
    assert len(lines) == 4, "beat_schedule and the events settings are built: not named"
    beat = [line for line in lines if line.startswith("beat_")]
    assert len(beat) == 1 and beat[0].startswith("beat_schedule_filename=") and beat[0].endswith(
        " is set but celeriac's beat keeps its state in the result store, not in a file"), beat
    for name in ("worker_direct=True", "result_compression='zlib'", "event_queue_ttl=1.0"):
        assert sum(line.startswith(f"{name} is set but ") for line in lines) == 1, (name, lines)


def test_rate_limits_are_enforced_so_never_reported():
    from celeriac.config import ineffective_settings

    tasks = {"tasks.mul": _Task(), "tasks.add": _Task("1/m")}
    assert ineffective_settings(Settings(task_default_rate_limit="10/s"), tasks) == []


def test_task_events_are_built_so_never_reported():
    from celeriac.config import ineffective_settings

    conf = Settings(worker_send_task_events=True, task_send_sent_event=True,
                    event_serializer="json", event_exchange="celeryev")
    assert ineffective_settings(conf, {}, {"task_events": True}) == []


def test_ineffective_settings_never_print_secrets_or_urls():
    from celeriac.config import ineffective_settings

    conf = Settings(broker_password="hunter2", broker_read_url="redis://:s3cret@h:6379/0",
                    database_url="postgresql://u:pw@db/x", redis_password="s3cret",
                    security_key_password="pw", security_key="-----BEGIN KEY-----")
    lines = ineffective_settings(conf, {})
    text = "\n".join(lines)
    for secret in ("hunter2", "s3cret", "pw@", "'pw'", "BEGIN KEY", "postgresql://"):
        assert secret not in text, (secret, lines)
    # each still gets its line, by name only
    for name in ("broker_password", "broker_read_url", "database_url", "security_key_password",
                 "security_key"):
        assert sum(line.startswith(f"{name} is set but ") for line in lines) == 1, (name, lines)


def test_redis_username_and_password_are_read_so_not_reported():
    from celeriac.config import NOT_BUILT, ineffective_settings

    assert "redis_username" not in NOT_BUILT and "redis_password" not in NOT_BUILT
    assert ineffective_settings(Settings(redis_username="u", redis_password="p"), {}) == []


@pytest.mark.parametrize("key, value", [
    ("beat_schedule", {}), ("worker_max_tasks_per_child", None),
    ("worker_max_tasks_per_child", 0), ("task_default_rate_limit", "10/s"),
    ("worker_send_task_events", False), ("task_acks_on_failure_or_timeout", True),
    ("enable_utc", True), ("timezone", "UTC"), ("worker_disable_rate_limits", True),
    ("broker_connection_retry_on_startup", False), ("broker_connection_max_retries", 3),
])
def test_values_that_ask_for_nothing_new_are_not_reported(key, value):
    """The default (or its "off" spelling), and settings celeriac does act on, stay quiet."""
    from celeriac.config import ineffective_settings
    assert ineffective_settings(Settings({key: value}), {}) == []


@pytest.mark.parametrize("key, value", [
    ("task_acks_on_failure_or_timeout", False), ("enable_utc", False),
    ("timezone", "Europe/Paris"), ("worker_direct", True),
    ("task_annotations", {"tasks.add": {"rate_limit": "1/s"}}), ("result_compression", "zlib"),
    ("worker_hijack_root_logger", False), ("broker_read_url", "redis://replica:6379/0"),
])
def test_settings_without_effect_are_reported(key, value):
    from celeriac.config import ineffective_settings

    [line] = ineffective_settings(Settings({key: value}), {})
    assert line.startswith(key) and " is set but " in line


def test_the_not_built_table_names_only_real_settings_and_none_celeriac_reads():
    """Every entry is a Celery setting, and none is read anywhere in the package (a setting that
    gets built must leave the table, or its warning would lie)."""
    import pathlib
    import re

    from celeriac.config import _BUILT_FOR, NOT_BUILT, PARTLY_BUILT

    assert set(NOT_BUILT) <= set(DEFAULTS)
    package = pathlib.Path(__file__).resolve().parents[2] / "celeriac"
    sources = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "config.py")

    def is_read(key: str) -> bool:  # read as conf.key, conf.get("key") or conf["key"]
        return re.search(rf"conf\.{key}\b|[\"']{key}[\"']", sources) is not None

    read = [key for key in NOT_BUILT
            if key not in _BUILT_FOR and key not in PARTLY_BUILT and is_read(key)]
    assert read == [], f"read somewhere in celeriac/, so maybe built: {read}"
    # and those some brokers use are read (by those brokers)
    assert [key for key in _BUILT_FOR if not is_read(key)] == []


def test_a_setting_only_some_brokers_use_is_warned_about_on_the_others() -> None:
    from celeriac.config import Settings, ineffective_settings

    on_redis = Settings(broker_url="redis://127.0.0.1/0", broker_connection_timeout=7)
    on_rabbitmq = Settings(broker_url="amqp://guest@127.0.0.1//", broker_connection_timeout=7)
    assert ineffective_settings(on_redis) == [
        "broker_connection_timeout=7 is set but only the RabbitMQ broker uses it"]
    assert ineffective_settings(on_rabbitmq) == []


@pytest.mark.parametrize("options, line", [
    ({"optimization": "fair"}, "-O was given but celeriac has no optimization profiles"),
])
def test_worker_flags_without_effect_are_named(options, line):
    from celeriac.config import ineffective_settings
    lines = ineffective_settings({}, {}, options)
    assert len(lines) == 1 and lines[0].startswith(line), lines


def test_autoscale_is_built_so_neither_its_flag_nor_its_setting_is_named():
    from celeriac.config import ineffective_settings
    assert ineffective_settings({"worker_autoscaler": "proj.scaling:Scaler"}, {},
                                {"autoscale": "10,3"}) == []


def test_beat_is_built_so_its_flag_is_not_named():
    from celeriac.config import ineffective_settings
    assert ineffective_settings({}, {}, {"beat": True}) == []


def test_worker_flags_left_off_are_not_named():
    from celeriac.config import ineffective_settings
    assert ineffective_settings({}, {}, {"beat": False, "autoscale": None,
                                         "optimization": None}) == []
