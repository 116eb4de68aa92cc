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


def _target(router, options=None, name="t", task_queue=None):
    route = router.route(dict(options or {}), name, task_queue=task_queue)
    return route["queue"], router.publish_target(route)


ISSUE_EXAMPLE = dict(
    task_default_queue="default",
    task_queues=(Queue("default", routing_key="task.#"), Queue("feed_tasks", routing_key="feed.#")),
    task_default_exchange="tasks", task_default_exchange_type="topic",
    task_default_routing_key="task.default")


def test_default_queue_when_nothing_else():
    # Celery 5.7 (app.amqp.router.route + send_task_message): ('', 'celery')
    assert _target(_router()) == ("celery", ("", "celery"))
    assert _router().queues["celery"] == Queue("celery", Exchange("celery"), "celery")


@pytest.mark.parametrize("options, task_queue, expected", [
    # observed with Celery 5.7 and this configuration (see docs/routing.md)
    ({}, None, ("default", ("tasks", "task.#"))),
    ({}, "feed_tasks", ("feed_tasks", ("tasks", "feed.#"))),
    ({"queue": "feed_tasks"}, None, ("feed_tasks", ("tasks", "feed.#"))),
    ({"routing_key": "feed.x"}, None, ("default", ("tasks", "feed.x"))),
    ({"exchange": "tasks", "routing_key": "task.zz"}, None, ("default", ("tasks", "task.zz"))),
    ({"queue": "other"}, None, ("other", ("", "other"))),
])
def test_publish_targets_of_the_issue_example_match_celery(options, task_queue, expected):
    assert _target(_router(**ISSUE_EXAMPLE), options, task_queue=task_queue) == expected


def test_queues_without_exchange_or_key_get_the_defaults_as_in_celery():
    router = _router(task_queues=[Queue("a"), Queue("b", routing_key="b.#"),
                                  Queue("c", Exchange("ec", "fanout"))],
                     task_default_exchange_type="topic", task_default_routing_key="drk")
    assert [(q.exchange.name, q.exchange.type, q.routing_key) for q in router.queues.values()] == [
        ("celery", "topic", "drk"), ("celery", "topic", "b.#"), ("ec", "fanout", "drk")]
    # a queue created on first use has a direct exchange and key of its own name
    assert router.resolve("new") == Queue("new", Exchange("new"), "new")


def test_default_exchange_and_routing_key_settings_apply_to_the_default_queue():
    router = _router(task_default_queue="jobs", task_default_exchange="ex",
                     task_default_routing_key="rk")
    assert router.queues["jobs"] == Queue("jobs", Exchange("ex"), "rk")
    assert _target(router) == ("jobs", ("", "jobs"))  # direct: through the default exchange
    topic = _router(task_default_queue="jobs", task_default_exchange_type="topic",
                    task_default_routing_key="x.y")
    assert _target(topic) == ("jobs", ("jobs", "x.y"))


def test_route_with_exchange_and_key_but_no_queue_publishes_to_the_exchange():
    # Celery: task_routes {'t': {'exchange': 'e', 'routing_key': 'k'}} -> no queue, ('e', 'k')
    router = _router(task_routes={"t": {"exchange": "e", "routing_key": "k"}})
    assert _target(router) == (None, ("e", "k"))
    # an explicit exchange with the default queue (Celery's apply_async(exchange=, routing_key=))
    assert _target(_router(), {"exchange": "e", "routing_key": "k"}) == ("celery", ("e", "k"))
    # a routing key alone does not leave a direct queue (Celery publishes to '' with the name)
    assert _target(_router(), {"routing_key": "k"}) == ("celery", ("", "celery"))


def test_router_function_returning_a_queue():
    def by_queue(name, args, kwargs, options, task=None, **kw):
        return Queue("fnq", Exchange("fnex", "topic"), "fn.key")

    router = _router(task_routes=[by_queue])
    assert _target(router) == ("fnq", ("fnex", "fn.key"))


class _KombuExchange:  # the attributes kombu.Exchange has
    def __init__(self, name="", type="direct"):  # noqa: A002
        self.name, self.type, self.durable, self.auto_delete, self.arguments = (
            name, type, True, False, {})


class _KombuQueue:  # the attributes kombu.Queue has (kombu's defaults: exchange '' and key '')
    def __init__(self, name, exchange=None, routing_key="", alias=None):
        self.name, self.exchange, self.routing_key = name, exchange or _KombuExchange(), routing_key
        self.durable, self.exclusive, self.auto_delete = True, False, False
        self.queue_arguments, self.max_priority, self.alias = {"x-max-priority": 5}, None, alias


def test_kombu_shaped_queues_are_accepted_everywhere():
    router = _router(task_default_queue="default", task_default_exchange="tasks",
                     task_default_exchange_type="topic",
                     task_queues=(_KombuQueue("default", routing_key="task.#"),
                                  _KombuQueue("feed_tasks", routing_key="feed.#"),
                                  _KombuQueue("plain")),
                     task_routes={"routed": _KombuQueue("rq", _KombuExchange("rx", "topic"),
                                                        "r.k")})
    feed = router.queues["feed_tasks"]
    assert (feed.exchange, feed.routing_key) == (Exchange("tasks", "topic"), "feed.#")
    assert feed.queue_arguments == {"x-max-priority": 5}
    assert router.queues["plain"].routing_key == "default"  # task_default_routing_key
    assert _target(router, {"queue": "feed_tasks"}) == ("feed_tasks", ("tasks", "feed.#"))
    assert _target(router, name="routed") == ("rq", ("rx", "r.k"))
    explicit = _KombuQueue("kq", _KombuExchange("kx", "fanout"), "")
    # not direct, no key of its own: Celery falls back to task_default_routing_key
    assert _target(router, {"queue": explicit}) == ("kq", ("kx", "default"))


def test_broadcast_queues_go_by_their_alias():
    from celeriac import Broadcast

    bq = Broadcast("broadcast_tasks")
    assert bq.name.startswith("bcast.") and bq.alias == "broadcast_tasks"
    router = _router(task_queues=[Queue("celery"), bq],
                     task_routes={"reload": {"queue": "broadcast_tasks",
                                             "exchange": "broadcast_tasks"}})
    # Celery publishes to the fanout exchange the route names, without a routing key...
    assert _target(router, name="reload") == (bq.name, ("broadcast_tasks", ""))
    # ...or, naming only the queue, with the queue's key (task_default_routing_key)
    assert _target(router, {"queue": "broadcast_tasks"}) == (bq.name, ("broadcast_tasks",
                                                                       "celery"))
    assert [q.name for q in router.consume_from(["broadcast_tasks"])] == [bq.name]
    assert router.exchange_type({}, "broadcast_tasks") == "fanout"


def test_worker_queue_selection_with_include_and_exclude():
    router = _router(**ISSUE_EXAMPLE)
    assert [q.name for q in router.consume_from()] == ["default", "feed_tasks"]
    assert [q.name for q in router.consume_from(exclude=["default"])] == ["feed_tasks"]
    assert [q.name for q in router.consume_from(["feed_tasks"])] == ["feed_tasks"]
    assert [q.name for q in router.consume_from(["a", "b", "a"], ["b"])] == ["a"]
    assert router.consume_from(exclude=["default", "feed_tasks"]) == []


def test_precedence_explicit_then_task_queue_then_routes_then_default():
    # Celery: the task's own queue is an execution option, so it beats task_routes
    router = _router(task_routes={"tasks.add": {"queue": "routed", "priority": 3}})
    assert router.route({"queue": "explicit"}, "tasks.add", task_queue="own")["queue"] == "explicit"
    assert router.route({}, "tasks.add", task_queue="own") == {  # the route's priority stays
        "queue": "own", "priority": 3, "exchange": None, "routing_key": None}
    assert router.route({}, "tasks.add")["queue"] == "routed"
    assert router.route({}, "tasks.mul")["queue"] == "celery"


def test_explicit_queue_object():
    q = Queue("special", Exchange("spx"), "spk")
    route = _router().route({"queue": q}, "t")
    assert route["queue"] == "special"
    assert _router().publish_target(route) == ("", "special")  # direct: the default exchange


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
                                     "exchange": None}
    assert router.route({"priority": 9}, "t")["priority"] == 9
    explicit = router.route({"queue": "mine"}, "t")
    assert explicit == {"queue": "mine", "priority": 3, "exchange": None, "routing_key": None}


def test_route_does_not_mutate_options_and_ignores_none_values():
    options = {"queue": None, "priority": None}
    result = _router(task_routes={"t": "routed"}).route(options, "t")
    assert options == {"queue": None, "priority": None}
    assert result == {"queue": "routed", "exchange": None, "routing_key": None}


def test_exchange_and_routing_key_route_is_left_to_the_broker():
    queues = [Queue("videos", Exchange("media", "topic"), "media.*"), Queue("celery")]
    router = _router(task_queues=queues, task_create_missing_queues=False, task_routes={
        "encode": {"exchange": "media", "routing_key": "media.video"}})
    assert _target(router, name="encode") == (None, ("media", "media.video"))
    assert router.exchange_type({}, "media") == "topic"
    assert router.queues_bound_to("media") == [queues[0]]


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
    assert created == Queue("new", Exchange("new"), "new")
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
    assert _target(router, {"queue": "media"}) == ("media", ("m", "media.#"))


def test_conf_may_be_a_plain_object():
    conf = SimpleNamespace(task_routes={"t": "routed"}, task_default_queue="dflt",
                           task_create_missing_queues=True)
    router = Router(conf)
    assert router.route({}, "t")["queue"] == "routed"
    assert router.route({}, "u")["queue"] == "dflt"


# ---- bindings (the broker side, shared by every transport) ---------------------------------
from celeriac.transport.bindings import (  # noqa: E402
    Binding,
    binding_of,
    kombu_member,
    kombu_topic_matches,
    parse_kombu_member,
    route,
)

BINDINGS = [Binding("default", "tasks", "topic", "task.#"),
            Binding("feed_tasks", "tasks", "topic", "feed.#"),
            Binding("images", "media", "direct", "img"),
            Binding("thumbs", "media", "direct", "img"),
            Binding("video", "media", "direct", "vid"),
            Binding("b1", "bcast", "fanout", "x"), Binding("b2", "bcast", "fanout", "")]


@pytest.mark.parametrize("exchange, key, expected", [
    ("tasks", "feed.#", ["feed_tasks"]), ("tasks", "feed.rss.pull", ["feed_tasks"]),
    ("tasks", "task.default", ["default"]), ("tasks", "other", []),
    ("media", "img", ["images", "thumbs"]), ("media", "vid", ["video"]), ("media", "x", []),
    ("bcast", "anything", ["b1", "b2"]), ("", "some-queue", ["some-queue"]),
    ("nobody", "k", []),
])
def test_route_by_bindings(exchange, key, expected):
    assert route(BINDINGS, exchange, key) == expected


def test_amqp_and_kombu_topic_matching_differ_only_on_an_empty_hash():
    assert route(BINDINGS, "tasks", "feed") == ["feed_tasks"]  # AMQP: '#' is zero or more words
    assert route(BINDINGS, "tasks", "feed", topic=kombu_topic_matches) == []  # kombu on Redis
    for key in ("feed.x", "feed.x.y", "feed.#"):
        assert kombu_topic_matches("feed.#", key)
    assert kombu_topic_matches("a.*.c", "a.b.c") and not kombu_topic_matches("a.*.c", "a.b.b.c")


def test_kombu_binding_members():
    # as a Celery 5.7 worker wrote them for the issue's example (redis-cli SMEMBERS)
    topic = Binding("feed_tasks", "tasks", "topic", "feed.#")
    assert kombu_member(topic) == "feed.#\x06\x16^feed\\..*?$\x06\x16feed_tasks"
    assert kombu_member(Binding("celery", "celery", "direct", "celery")) == (
        "celery\x06\x16\x06\x16celery")
    assert parse_kombu_member(kombu_member(topic).encode(), "tasks") == topic
    assert parse_kombu_member("celery\x06\x16\x06\x16celery", "celery") == Binding(
        "celery", "celery", "direct", "celery")
    assert parse_kombu_member("garbage", "x") is None


def test_binding_of_a_queue():
    assert binding_of(Queue("feed_tasks", Exchange("tasks", "topic"), "feed.#")) == Binding(
        "feed_tasks", "tasks", "topic", "feed.#")
    assert binding_of("plain") == Binding("plain", "plain", "direct", "plain")
    assert binding_of(Queue("anon", Exchange(""), "k")) is None  # the default exchange


# ---- Celery 5.5+'s task_create_missing_queue_type / _exchange_type ---------------------------
def test_a_missing_queue_is_classic_by_default_with_a_direct_exchange():
    created = _router().resolve("new")
    assert created.queue_arguments == {}
    assert (created.exchange.name, created.exchange.type, created.routing_key) == (
        "new", "direct", "new")


def test_a_missing_queue_takes_the_configured_queue_and_exchange_types():
    created = _router(task_create_missing_queue_type="quorum",
                      task_create_missing_queue_exchange_type="topic").resolve("new")
    assert created.queue_arguments == {"x-queue-type": "quorum"}
    assert (created.exchange.name, created.exchange.type) == ("new", "topic")
    # configured queues are left as they are
    router = _router(task_create_missing_queue_type="quorum", task_queues=[Queue("mine")])
    assert router.resolve("mine").queue_arguments == {}


def test_an_unknown_missing_queue_type_is_refused_when_a_queue_is_created():
    router = _router(task_create_missing_queue_type="stream")  # as Celery: only on creation
    with pytest.raises(ValueError, match="classic.*quorum"):
        router.resolve("new")


def test_the_default_queue_is_quorum_with_task_default_queue_type():
    assert _router(task_default_queue_type="quorum").resolve("celery").queue_arguments == {
        "x-queue-type": "quorum"}
    assert _router().resolve("celery").queue_arguments == {}
