"""Routing: Queue/Exchange value objects and the Router's precedence rules."""

from __future__ import annotations

import re
import sys
import textwrap
from types import SimpleNamespace

import pytest

from celeriac.config import Settings
from celeriac.exceptions import ImproperlyConfigured, QueueNotFound
from celeriac.routing import Exchange, Queue, Router


# ---- Exchange / Queue ------------------------------------------------------------------------
def test_exchange_defaults_repr_and_equality():
    ex = Exchange("media", "topic")
    assert (ex.name, ex.type, ex.durable, ex.auto_delete, ex.arguments) == (
        "media", "topic", True, False, {})
    assert repr(ex) == "<Exchange media(topic)>"
    assert repr(Exchange()) == "<Exchange ''(direct)>"
    assert ex == Exchange("media", "topic") and hash(ex) == hash(Exchange("media", "topic"))
    assert ex != Exchange("media") and ex != Exchange("media", "topic", durable=False)


def test_queue_defaults_to_an_exchange_and_routing_key_of_its_name():
    q = Queue("feeds")
    assert q.exchange == Exchange("feeds") and q.routing_key == "feeds"
    assert repr(q) == "<Queue feeds -> <Exchange feeds(direct)> -> feeds>"
    assert Queue("feeds", "other").exchange == Exchange("other")
    assert Queue("a", routing_key="").routing_key == ""


def test_queue_equality_and_extras():
    q = Queue("hi", Exchange("hi"), "hi", max_priority=10, message_ttl=5)
    assert q.queue_arguments == {"x-max-priority": 10}
    assert q.options == {"message_ttl": 5}
    assert q == Queue("hi", max_priority=10, message_ttl=5)
    assert q != Queue("hi") and hash(q) == hash(Queue("hi"))


# ---- Router precedence ---------------------------------------------------------------------------
def _router(**settings):
    return Router(Settings(settings))


def test_default_queue_when_nothing_else():
    assert _router().route({}, "tasks.add") == {
        "queue": "celery", "exchange": "celery", "routing_key": "celery"}


def test_default_exchange_and_routing_key_settings_apply_to_the_default_queue():
    router = _router(task_default_queue="jobs", task_default_exchange="ex",
                     task_default_routing_key="rk")
    assert router.route({}, "t") == {"queue": "jobs", "exchange": "ex", "routing_key": "rk"}


def test_precedence_explicit_then_routes_then_task_queue_then_default():
    router = _router(task_routes={"tasks.add": {"queue": "routed"}})
    assert router.route({"queue": "explicit"}, "tasks.add", task_queue="own")["queue"] == "explicit"
    assert router.route({}, "tasks.add", task_queue="own")["queue"] == "routed"
    assert router.route({}, "tasks.mul", task_queue="own")["queue"] == "own"
    assert router.route({}, "tasks.mul")["queue"] == "celery"


def test_explicit_queue_object():
    q = Queue("special", Exchange("spx"), "spk")
    assert _router().route({"queue": q}, "t") == {
        "queue": "special", "exchange": "spx", "routing_key": "spk"}


def test_map_routes_exact_glob_regex_and_plain_names():
    router = _router(task_routes={
        "feed.*": {"queue": "feeds"},
        re.compile(r"(video|image)\.tasks\."): {"queue": "media"},
        "tasks.add": "low",
        "feed.special": "special",
    })
    assert router.route({}, "feed.tasks.import")["queue"] == "feeds"
    assert router.route({}, "feed.special")["queue"] == "special"  # exact beats a glob
    assert router.route({}, "video.tasks.encode")["queue"] == "media"
    assert router.route({}, "tasks.add")["queue"] == "low"
    assert router.route({}, "other.feed.x")["queue"] == "celery"


def test_globs_match_the_whole_name():
    router = _router(task_routes={"*.add": "adders"})
    assert router.route({}, "math.add")["queue"] == "adders"
    assert router.route({}, "math.add_many")["queue"] == "celery"


def test_list_of_routers_first_answer_wins_and_callables_get_the_call():
    calls = []

    def undecided(name, args, kwargs, options, task=None, **kw):
        calls.append((name, args, kwargs, options, task))
        return None

    def by_arg(name, args, kwargs, options, task=None, **kw):
        return {"queue": "big"} if args and args[0] > 100 else "small"

    router = _router(task_routes=[undecided, {"never.matches": "x"}, by_arg, {"*": "unreached"}])
    assert router.route({}, "t", (500,), {"k": 1}, task="TASK")["queue"] == "big"
    assert router.route({}, "t", (1,))["queue"] == "small"
    assert calls[0] == ("t", (500,), {"k": 1}, {}, "TASK")


def test_list_entry_may_be_a_sequence_of_pairs():
    router = _router(task_routes=([("feed.*", {"queue": "feeds"}), ("x", "xq")],))
    assert router.route({}, "feed.a")["queue"] == "feeds"
    assert router.route({}, "x")["queue"] == "xq"


def test_single_callable_as_task_routes():
    router = _router(task_routes=lambda name, *a, **k: name.split(".")[0])
    assert router.route({}, "billing.charge")["queue"] == "billing"


@pytest.fixture
def router_module(tmp_path, monkeypatch):
    (tmp_path / "h4_routers.py").write_text(textwrap.dedent("""
        def route_task(name, args, kwargs, options, task=None, **kw):
            return {"queue": "imported"} if name.startswith("imp.") else None
        not_callable = 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("h4_routers", None)


@pytest.mark.parametrize("path", ["h4_routers.route_task", "h4_routers:route_task"])
def test_dotted_path_router(router_module, path):
    router = _router(task_routes=[path])
    assert router.route({}, "imp.x")["queue"] == "imported"
    assert router.route({}, "other")["queue"] == "celery"


@pytest.mark.parametrize("path", ["h4_routers.missing", "h4_no_such_module.f",
                                  "h4_routers.not_callable"])
def test_bad_router_path_is_a_configuration_error(router_module, path):
    with pytest.raises(ImproperlyConfigured, match=re.escape(repr(path))):
        _router(task_routes=[path])


def test_route_options_merge_and_explicit_values_win():
    router = _router(task_routes={"t": {"queue": "routed", "priority": 3, "routing_key": "rk"}})
    assert router.route({}, "t") == {"queue": "routed", "priority": 3, "routing_key": "rk",
                                     "exchange": "routed"}
    assert router.route({"priority": 9}, "t")["priority"] == 9
    explicit = router.route({"queue": "mine"}, "t")
    assert explicit == {"queue": "mine", "priority": 3, "exchange": "mine", "routing_key": "mine"}


def test_route_does_not_mutate_options_and_ignores_none_values():
    options = {"queue": None, "priority": None}
    result = _router(task_routes={"t": "routed"}).route(options, "t")
    assert options == {"queue": None, "priority": None}
    assert result == {"queue": "routed", "exchange": "routed", "routing_key": "routed"}


def test_exchange_and_routing_key_route_finds_the_bound_queue():
    queues = [Queue("videos", Exchange("media", "topic"), "media.video"), Queue("celery")]
    router = _router(task_queues=queues, task_create_missing_queues=False, task_routes={
        "encode": {"exchange": "media", "routing_key": "media.video"},
        "by_key": {"routing_key": "media.video"},
    })
    assert router.route({}, "encode") == {"queue": "videos", "exchange": "media",
                                          "routing_key": "media.video"}
    assert router.route({}, "by_key")["queue"] == "videos"


# ---- queues --------------------------------------------------------------------------------------
def test_missing_queue_is_refused_when_creation_is_off():
    router = _router(task_queues=[Queue("celery"), Queue("fast")], task_create_missing_queues=False)
    assert router.route({"queue": "fast"}, "t")["queue"] == "fast"
    with pytest.raises(QueueNotFound, match="'slow'"):
        router.route({"queue": "slow"}, "t")
    with pytest.raises(QueueNotFound, match="'routed'"):
        _router(task_routes={"t": "routed"}, task_create_missing_queues=False).route({}, "t")


def test_default_queue_must_be_declared_when_queues_are_listed_and_creation_is_off():
    router = _router(task_queues=[Queue("fast")], task_create_missing_queues=False)
    with pytest.raises(QueueNotFound, match="'celery'"):
        router.route({}, "t")


def test_missing_queues_are_created_once():
    router = _router()
    router.route({"queue": "new"}, "t")
    created = router.queues["new"]
    assert created == Queue("new")
    router.route({"queue": "new"}, "t")
    assert router.queues["new"] is created


def test_queue_names_from_conf():
    assert Router.queue_names(Settings()) == ["celery"]
    assert Router.queue_names(Settings(task_default_queue="jobs")) == ["jobs"]
    assert Router.queue_names(Settings(task_queues=[Queue("a"), "b"])) == ["a", "b"]


def test_dict_form_task_queues():
    router = _router(task_queues={"media": {"exchange": "m", "exchange_type": "topic",
                                            "routing_key": "media.#"}},
                     task_create_missing_queues=False)
    assert router.queues["media"] == Queue("media", Exchange("m", "topic"), "media.#")
    assert router.route({"queue": "media"}, "t")["routing_key"] == "media.#"


def test_conf_may_be_a_plain_object():
    conf = SimpleNamespace(task_routes={"t": "routed"}, task_default_queue="dflt",
                           task_create_missing_queues=True)
    router = Router(conf)
    assert router.route({}, "t")["queue"] == "routed"
    assert router.route({}, "u")["queue"] == "dflt"
