"""Routing end to end on every broker: exchanges, bindings, ``-Q``/``-X`` and ``delivery_info``.

Each test runs on the embedded SQLite broker, on Redis (a private, flushed database), on
``memory://`` and on RabbitMQ (a private virtual host; results in a SQLite file of the test's
own), with real workers started in this process (``celeriac.testing.start_worker``). The
configuration is issue 12's example; the ``delivery_info`` expected is what a Celery 5.7 worker
on Redis printed for it (and on RabbitMQ: the same four keys and values).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Iterator

import pytest

from celeriac import Broadcast, Celery, Queue
from celeriac.testing import start_worker
from tests.conftest import private_redis_db, private_vhost
from tests.routing_example import use_issue_routing
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

#: shared with test_worker_roundtrip (each test holds one database alone, under a file lock)
ROUTING_DBS = (1, 2, 3, 4)
TIMEOUT = 15.0


#: broker URL -> result store URL, where results do not live on the broker (RabbitMQ)
_RESULTS: dict[str, str] = {}


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis), "memory",
                        "amqp"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "amqp":
        with private_vhost() as url:
            _RESULTS[url] = request.getfixturevalue("sqlite_url")
            try:
                yield url
            finally:
                del _RESULTS[url]
    elif request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
    elif request.param == "memory":
        from celeriac.transport import memory

        name = f"routing-{uuid.uuid4().hex[:8]}"
        yield f"memory://{name}"
        memory.reset(name)
    else:
        with private_redis_db(request.getfixturevalue("redis_server"), ROUTING_DBS) as url:
            yield url


def _issue_app(url: str, **conf: Any) -> Celery:
    """Issue 12's configuration, with tasks that report what they saw."""
    app = Celery(f"routing-{uuid.uuid4().hex[:6]}", broker=url, backend=_RESULTS.get(url, url),
                 set_as_current=False)
    use_issue_routing(app.conf, Queue)
    app.conf.update(conf)

    @app.task(name="routing.ping_task", queue="feed_tasks", bind=True)
    def ping_task(self: Any) -> dict:
        return dict(self.request.delivery_info)

    @app.task(name="routing.where", bind=True)
    def where(self: Any) -> dict:
        return dict(self.request.delivery_info)

    return app


@pytest.fixture
def issue_app(broker_url: str) -> Iterator[Celery]:
    app = _issue_app(broker_url)
    yield app
    app.close()


#: what a Celery 5.7 worker on Redis gives the issue's ``ping_task`` (see docs/routing.md)
CELERY_DELIVERY_INFO = {"exchange": "tasks", "routing_key": "feed.#", "priority": 0,
                        "redelivered": False}


def _unset_priority(app: Celery) -> int | None:
    """``delivery_info['priority']`` of a task sent to a named queue without a priority: on
    RabbitMQ Celery 5.7 leaves the property out (its worker gives None, as tests/interop shows);
    kombu's Redis envelope, and celeriac's other brokers, say 0."""
    return None if app.broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp") else 0


@pytest.mark.parametrize("selection", [{"queues": "feed_tasks"}, {"exclude_queues": "default"}],
                         ids=["-Q feed_tasks", "-X default"])
def test_issue_example_runs_on_feed_tasks_only_with_celerys_delivery_info(
        issue_app: Celery, selection: dict[str, str]) -> None:
    app = issue_app
    with start_worker(app, pool="solo", **selection) as worker:
        assert worker.queues == ["feed_tasks"]
        ping = app.tasks["routing.ping_task"]
        assert ping.delay().get(timeout=TIMEOUT) == {**CELERY_DELIVERY_INFO,
                                                     "priority": _unset_priority(app)}
        # a plain task goes to 'default', which this worker does not consume
        waiting = app.tasks["routing.where"].delay()
        # a topic routing key of the feed's reaches the feed queue through the binding
        fed = app.tasks["routing.where"].apply_async(routing_key="feed.rss.pull")
        assert fed.get(timeout=TIMEOUT)["routing_key"] == "feed.rss.pull"
        assert waiting.state == "PENDING"
        assert app.transport.qsize("default") == 1
    with start_worker(app, pool="solo", queues="default", perform_ping_check=False):
        assert waiting.get(timeout=TIMEOUT) == {"exchange": "tasks", "routing_key": "task.#",
                                                "priority": 0, "redelivered": False}


def test_apply_async_exchange_and_routing_key(issue_app: Celery) -> None:
    app = issue_app
    where = app.tasks["routing.where"]
    with start_worker(app, pool="solo"):  # no -Q: every queue of task_queues
        by_exchange = where.apply_async(exchange="tasks", routing_key="task.zz")
        by_queue = where.apply_async(queue="feed_tasks")
        elsewhere = where.apply_async(queue="created_on_use")  # direct, default exchange
        assert by_exchange.get(timeout=TIMEOUT)["routing_key"] == "task.zz"
        assert by_queue.get(timeout=TIMEOUT)["routing_key"] == "feed.#"
    assert app.transport.qsize("created_on_use") == 1
    with start_worker(app, pool="solo", queues="created_on_use", perform_ping_check=False):
        assert elsewhere.get(timeout=TIMEOUT) == {"exchange": "", "routing_key": "created_on_use",
                                                  "priority": _unset_priority(app),
                                                  "redelivered": False}


def test_direct_exchange_reaches_every_queue_bound_with_the_key(broker_url: str) -> None:
    from celeriac import Exchange

    media = Exchange("media", "direct")
    app = _issue_app(broker_url, task_queues=(Queue("images", media, "img"),
                                              Queue("thumbs", media, "img"),
                                              Queue("videos", media, "vid")),
                     task_routes={"routing.where": {"exchange": "media", "routing_key": "img"}})
    try:
        result = app.tasks["routing.where"].delay()
        # both queues bound with "img" got a copy; "videos" none
        assert (app.transport.qsize("images"), app.transport.qsize("thumbs"),
                app.transport.qsize("videos")) == (1, 1, 0)
        with start_worker(app, pool="solo", queues="images", perform_ping_check=False):
            assert result.get(timeout=TIMEOUT)["routing_key"] == "img"
    finally:
        app.close()


def test_broadcast_queue_runs_the_task_on_every_worker(broker_url: str) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def make(name: str) -> Celery:
        # every process (here: every app) has a Broadcast queue of its own, bcast.<uuid>
        app = _issue_app(broker_url, task_queues=(Queue("default", routing_key="task.#"),
                                                  Broadcast("broadcast_tasks")),
                         task_routes={"routing.reload": {"queue": "broadcast_tasks"}})

        @app.task(name="routing.reload", bind=True)
        def reload(self: Any) -> str:
            with lock:
                seen.append(name)
            return name

        return app

    apps = [make("one"), make("two"), make("client")]
    try:
        with start_worker(apps[0], pool="solo", queues="broadcast_tasks",
                          perform_ping_check=False) as w1, \
                start_worker(apps[1], pool="solo", queues="broadcast_tasks",
                             perform_ping_check=False) as w2:
            assert w1.queues[0].startswith("bcast.") and w1.queues != w2.queues
            apps[2].tasks["routing.reload"].delay()
            wait_for(lambda: sorted(seen) == ["one", "two"], timeout=TIMEOUT,
                     message=f"broadcast reached {seen}")
    finally:
        for app in apps:
            app.close()


def test_exclude_every_queue_is_refused(issue_app: Celery) -> None:
    from celeriac.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="No queue left"):
        issue_app.Worker(exclude_queues="default,feed_tasks")
