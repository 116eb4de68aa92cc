"""The rpc:// result backend's pure logic: URLs, reply properties and documents, the state cache,
the oid, and what it refuses. Nothing here reaches a broker: the apps point at a closed port, so
any connection attempt would fail the test with an OperationalError."""

from __future__ import annotations

import json

import pytest

import celeriac
from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import DisabledBackend
from celeriac.backends.rpc import (
    E_NO_CHORDS,
    SYNC_TYPE,
    ReplyWrite,
    RPCBackend,
    StateCache,
    connection_params,
    destination_for,
    meta_from_reply,
    queue_arguments,
    reply_properties,
)
from celeriac.exceptions import ContentDisallowed, DecodeError, ImproperlyConfigured
from celeriac.protocol.serialization import normalize_accept
from celeriac.task import Context

JSON_ONLY = normalize_accept(["json"])

#: a closed port: nothing in these tests may connect
NOWHERE = "amqp://guest:secret@127.0.0.1:1/test"

# What a real Celery 5.7 worker published on RabbitMQ 3.10 for ``tasks.add(2, 3)`` with
# ``result_backend='rpc://'`` (captured with py-amqp basic_get from the reply queue).
CELERY_ID = "11a9751a-273d-49a7-a4ef-cd5159608dc1"
CELERY_PROPERTIES = {"content_type": "application/json", "content_encoding": "utf-8",
                     "application_headers": {}, "delivery_mode": 1, "priority": 0,
                     "correlation_id": CELERY_ID}
CELERY_BODY = (b'{"status": "SUCCESS", "result": 5, "traceback": null, "children": [], '
               b'"date_done": "2026-12-06T18:56:23.241527+00:00", '
               b'"task_id": "11a9751a-273d-49a7-a4ef-cd5159608dc1"}')


@pytest.fixture
def app() -> celeriac.Celery:
    return celeriac.Celery("rpc-unit", broker=NOWHERE, backend="rpc://")


# ---- URLs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "host", "vhost"), [
    ("amqp://", "localhost:5672", "/"),
    ("amqp://guest@localhost//", "localhost:5672", "/"),
    ("amqp://h/", "h:5672", "/"),
    ("amqp://h/foo", "h:5672", "foo"),
    ("amqp://h/%2Ffoo", "h:5672", "/foo"),
    ("pyamqp://u:p@h:5673/v", "h:5673", "v"),
    ("amqp://[::1]:5672/v", "[::1]:5672", "v"),
    ("amqp://a/x;amqp://b/y", "a:5672", "x"),
])
def test_broker_urls_read_as_kombu_reads_them(url, host, vhost):
    params = connection_params(url)
    assert (params["host"], params["virtual_host"]) == (host, vhost)
    assert params["heartbeat"] == 0 and params["ssl"] is False


def test_credentials_are_unquoted_and_default_to_guest():
    assert (connection_params("amqp://us%40er:p%2Fw@h/")["userid"],
            connection_params("amqp://us%40er:p%2Fw@h/")["password"]) == ("us@er", "p/w")
    params = connection_params("amqp://h/")
    assert (params["userid"], params["password"]) == ("guest", "guest")


def test_tls_from_the_scheme_the_query_or_broker_use_ssl():
    assert connection_params("amqps://h/")["host"] == "h:5671"
    assert connection_params("amqps://h/")["ssl"] is True
    assert connection_params("amqp://h/?ssl=1")["ssl"] is True
    options = {"ca_certs": "/ca.pem", "cert_reqs": 2}
    assert connection_params("amqps://h/", options)["ssl"] == options
    assert connection_params("amqp://h/", True)["ssl"] is True


def test_timeout_and_login_method():
    assert connection_params("amqp://h/?connect_timeout=2.5")["connect_timeout"] == 2.5
    assert connection_params("amqp://h/?connect_timeout=2.5", None, 7)["connect_timeout"] == 7
    assert connection_params("amqp://h/", login_method="PLAIN")["login_method"] == "PLAIN"
    assert "login_method" not in connection_params("amqp://h/")


@pytest.mark.parametrize("url", ["redis://:secret@localhost/0", "sqlite:///x.db", "", "h:5672"])
def test_a_broker_that_is_not_rabbitmq_is_refused_without_its_password(url):
    with pytest.raises(ImproperlyConfigured, match="must be RabbitMQ") as caught:
        connection_params(url)
    assert "secret" not in str(caught.value)


def test_bad_port_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match="port"):
        connection_params("amqp://h:notaport/")


def test_reply_queue_arguments():
    assert queue_arguments(86400.0) == {"x-expires": 86400000}
    assert queue_arguments(1.5) == {"x-expires": 1500}
    assert queue_arguments(0) == {} and queue_arguments(None) == {}


# ---- replies -------------------------------------------------------------------------------------
def test_reply_properties_are_celerys():
    assert reply_properties("application/json", "utf-8", CELERY_ID, False) == CELERY_PROPERTIES
    assert reply_properties("application/json", "utf-8", CELERY_ID, True)["delivery_mode"] == 2


def test_destination_is_the_requests_reply_to_and_correlation_id():
    assert destination_for("t", Context(reply_to="oid", correlation_id="c")) == ("oid", "c")
    assert destination_for("t", Context(reply_to="oid")) == ("oid", "t")
    assert destination_for("t", Context()) == ("", "t")
    assert destination_for("t", None) == ("", "t")


def test_a_celery_workers_reply_is_read():
    task_id, meta = meta_from_reply(CELERY_BODY, CELERY_PROPERTIES, JSON_ONLY)
    assert task_id == CELERY_ID
    assert meta == json.loads(CELERY_BODY)


def test_the_task_id_comes_from_the_body_when_correlation_id_is_missing():
    properties = {k: v for k, v in CELERY_PROPERTIES.items() if k != "correlation_id"}
    assert meta_from_reply(CELERY_BODY, properties, None)[0] == CELERY_ID
    assert meta_from_reply(b'{"status": "SUCCESS"}', properties, None) is None


def test_a_refused_content_type_becomes_the_tasks_failure():
    properties = {**CELERY_PROPERTIES, "content_type": "application/x-python-serialize",
                  "content_encoding": "binary"}
    task_id, meta = meta_from_reply(b"\x80\x04N.", properties, JSON_ONLY)
    assert task_id == CELERY_ID and meta["status"] == states.FAILURE
    assert meta["result"]["exc_type"] == ContentDisallowed.__name__


def test_a_reply_that_is_no_result_document_becomes_a_failure():
    task_id, meta = meta_from_reply(b"[1, 2]", CELERY_PROPERTIES, None)
    assert meta["status"] == states.FAILURE
    assert meta["result"]["exc_type"] == DecodeError.__name__
    assert meta_from_reply(b"[1, 2]", {"content_type": "application/json"}, None) is None


# ---- the state cache -----------------------------------------------------------------------------
def test_cache_keeps_the_latest_state_but_never_replaces_an_end():
    cache = StateCache()
    assert cache.put("a", {"status": states.STARTED})
    assert cache.put("a", {"status": states.RETRY})
    assert cache.put("a", {"status": states.SUCCESS, "result": 1})
    assert not cache.put("a", {"status": states.STARTED})  # stale, arrived late
    assert cache.get("a") == {"status": states.SUCCESS, "result": 1}
    assert cache.put("a", {"status": states.FAILURE})  # one end replaces another
    assert cache.get("a") == {"status": states.FAILURE}


def test_cache_is_bounded_and_tells_what_changed():
    cache = StateCache(limit=2)
    cache.put("a", {"status": states.SUCCESS})
    seen = cache.seq
    cache.put("b", {"status": states.SUCCESS})
    cache.put("c", {"status": states.SUCCESS})
    assert cache.get("a") is None and len(cache) == 2
    assert cache.changed_since(["b"], seen) and not cache.changed_since(["b"], cache.seq)
    assert not cache.changed_since(["zzz"], seen)
    cache.pop("b")
    assert cache.get("b") is None


# ---- the backend, without a broker ---------------------------------------------------------------
def test_rpc_url_builds_the_rpc_backend_with_the_apps_oid(app):
    backend = app.backend
    assert isinstance(backend, RPCBackend)
    assert backend.oid == app.oid == backend.reply_to
    assert backend.persistent is False and backend.receives_results is True
    assert backend.connection_params["virtual_host"] == "test"
    assert "secret" not in repr(backend)


def test_other_backends_want_no_replies():
    disabled = backend_from_url(None)
    assert isinstance(disabled, DisabledBackend)
    assert disabled.reply_to is None and disabled.receives_results is False
    memory = backend_from_url("memory://rpc-unit-other")
    assert memory.reply_to is None and memory.receives_results is True


def test_rpc_with_a_redis_broker_is_refused():
    app = celeriac.Celery("x", broker="redis://localhost:6379/0", backend="rpc://")
    with pytest.raises(ImproperlyConfigured, match="RabbitMQ"):
        app.backend  # noqa: B018


def test_result_write_is_addressed_to_the_requests_reply_to(app):
    write = app.backend.result_write("t1", 5, states.SUCCESS,
                                     request=Context(id="t1", reply_to="q", correlation_id="t1"))
    assert isinstance(write, ReplyWrite)
    assert (write.key, write.correlation_id, write.ttl) == ("q", "t1", None)
    assert json.loads(write.value) == write.meta
    assert write.meta["status"] == states.SUCCESS and write.meta["result"] == 5


def test_no_reply_to_means_nothing_is_sent(app):
    # the broker is unreachable: any attempt to send would raise OperationalError
    meta = app.backend.mark_as_done("t1", 5, request=Context(id="t1", reply_to=""))
    assert meta["status"] == states.SUCCESS
    app.backend.mark_as_failure("t2", ValueError("x"), request=None)


def test_a_received_end_is_read_without_the_broker(app):
    backend = app.backend
    backend.on_reply(CELERY_BODY, CELERY_PROPERTIES)
    assert backend.get_task_meta(CELERY_ID)["result"] == 5
    assert app.AsyncResult(CELERY_ID).get(timeout=1) == 5
    backend.on_reply(b'{"status": "STARTED", "result": null}', CELERY_PROPERTIES)
    assert backend.get_task_meta(CELERY_ID)["status"] == states.SUCCESS
    backend.forget(CELERY_ID)
    assert backend._read([CELERY_ID])[CELERY_ID]["status"] == states.PENDING


def test_a_sync_marker_is_not_a_result(app):
    backend = app.backend
    backend.on_reply(b"", {"type": SYNC_TYPE, "correlation_id": CELERY_ID})
    assert backend._read([CELERY_ID])[CELERY_ID]["status"] == states.PENDING


def test_a_chord_fails_at_apply_in_one_line(app):
    @app.task(name="rpc.add")
    def add(x, y):
        return x + y

    @app.task(name="rpc.tsum")
    def tsum(values):
        return sum(values)

    with pytest.raises(NotImplementedError) as caught:
        celeriac.chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    assert str(caught.value) == E_NO_CHORDS
    assert "\n" not in E_NO_CHORDS and "rpc://" in E_NO_CHORDS


def test_groups_cannot_be_saved(app):
    backend = app.backend
    with pytest.raises(NotImplementedError, match="does not store groups"):
        backend.save_group("g", [])
    with pytest.raises(NotImplementedError, match="does not store groups"):
        backend.restore_group("g")
    with pytest.raises(NotImplementedError, match="keeps no stored values"):
        backend.set_value("k", 1)


def test_cache_keeps_the_states_of_tasks_waited_for():
    cache = StateCache(limit=2)
    cache.want(["waited"])
    cache.put("waited", {"status": states.SUCCESS})
    for n in range(5):
        cache.put(f"other{n}", {"status": states.SUCCESS})
    assert cache.get("waited") == {"status": states.SUCCESS}  # kept, however old
    assert [cache.get(f"other{n}") is not None for n in range(5)] == [False] * 4 + [True]
    cache.want(["waited"])
    cache.unwant(["waited"])  # a second waiter still waits
    cache.put("other5", {"status": states.SUCCESS})
    assert cache.get("waited") is not None and len(cache) == 2
    cache.unwant(["waited"])  # nobody waits any more: it goes first, as the oldest
    cache.put("other6", {"status": states.SUCCESS})
    assert cache.get("waited") is None and len(cache) == 2


def test_wait_for_without_timeout_finds_a_state_many_later_ones_would_evict(app, monkeypatch):
    backend = app.backend
    backend._cache.limit = 3

    def listener_delivers_a_burst():
        # the waited-for end arrives, then more ends than the cache holds, before the waiter
        # looks (wait_for starts the listener with its lock released)
        for task_id in ["t-waited", *(f"t{n}" for n in range(10))]:
            backend.on_reply(*_reply(task_id))
        if backend._cache.get("t-waited") is None:  # else wait_for(timeout=None) never returns
            raise AssertionError("the state of the task waited for was evicted")

    monkeypatch.setattr(backend, "_ensure_listener", listener_delivers_a_burst)
    got = backend.wait_for("t-waited")
    assert got["status"] == states.SUCCESS and got["task_id"] == "t-waited"


def _reply(task_id):
    body = json.dumps({"status": states.SUCCESS, "result": 1, "traceback": None,
                       "children": [], "task_id": task_id, "date_done": None}).encode()
    return body, {"correlation_id": task_id, "content_type": "application/json",
                  "content_encoding": "utf-8"}


def test_a_reply_the_backend_fails_on_is_logged_not_taken_for_a_lost_connection(
        app, monkeypatch, caplog):
    from types import SimpleNamespace

    from celeriac.backends.rpc import _Listener

    def broken(body, properties):
        raise KeyError("a bug in on_reply")

    monkeypatch.setattr(app.backend, "on_reply", broken)
    message = SimpleNamespace(body=b"{}", properties={"correlation_id": "t1"})
    _Listener(app.backend)._on_message(message)  # raises nothing: _run would reconnect
    assert "could not handle a reply" in caplog.text and "a bug in on_reply" in caplog.text
