"""Locks (celeriac/locks.py): which key a call of a task with ``lock``/``unique`` locks, the
``Lock`` object behind ``app.lock()``, and the clear errors. On the memory result store; the
stores themselves are checked by the contract suite (tests/contract)."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from celeriac import Celery
from celeriac.backends import memory
from celeriac.exceptions import ImproperlyConfigured
from celeriac.locks import LOCK_PREFIX, key_for


@pytest.fixture
def app() -> Iterator[Celery]:
    name = f"locks-{uuid.uuid4().hex}"
    app = Celery("locks", broker=f"memory://{name}", backend=f"memory://{name}",
                 set_as_current=False)
    yield app
    app.close()
    memory.reset(name)


def test_template_is_filled_with_the_arguments_by_name(app: Celery) -> None:
    @app.task
    def import_feed(feed_url: str, full: bool = False) -> None: ...

    spec = "feed:{feed_url}:{full}"
    assert key_for(import_feed, spec, ["http://a"], {}) == "feed:http://a:False"
    assert key_for(import_feed, spec, [], {"feed_url": "http://a", "full": True}) \
        == "feed:http://a:True"
    assert key_for(import_feed, "nightly", ["http://a"], {}) == "nightly", \
        "a template without fields is one key for every call"


def test_bound_tasks_fill_templates_without_self(app: Celery) -> None:
    @app.task(bind=True)
    def refresh(self: object, user_id: int) -> None: ...

    assert key_for(refresh, "user:{user_id}", [7], {}) == "user:7"


def test_true_is_the_task_name_and_the_same_call_however_it_is_spelled(app: Celery) -> None:
    @app.task
    def resize(image: str, width: int = 100) -> None: ...

    key = key_for(resize, True, ["a.png"], {})
    assert key.startswith(f"{resize.name}:")
    assert key_for(resize, True, [], {"image": "a.png", "width": 100}) == key
    assert key_for(resize, True, ["a.png", 200], {}) != key
    assert key_for(resize, True, ["b.png"], {}) != key


def test_a_callable_gets_the_call_arguments(app: Celery) -> None:
    @app.task
    def charge(account: str, amount: int) -> None: ...

    assert key_for(charge, lambda account, amount: f"acct:{account}", ["x", 5], {}) == "acct:x"
    assert key_for(charge, lambda *a, **kw: f"{a}{kw}", ["x"], {"amount": 5}) \
        == "('x',){'amount': 5}"


def test_a_template_naming_no_argument_is_refused_at_send_time(app: Celery) -> None:
    @app.task(lock="feed:{url}")
    def import_feed(feed_url: str) -> None: ...

    with pytest.raises(ImproperlyConfigured, match=r"'url'.*feed_url"):
        import_feed.delay("http://a")
    assert app.transport.qsize("celery") == 0, "nothing was sent"


def test_an_unusable_key_option_names_what_is_accepted(app: Celery) -> None:
    @app.task(unique=42)
    def job() -> None: ...

    with pytest.raises(ImproperlyConfigured, match="True, a key template string or a callable"):
        job.delay()


def test_unique_sends_a_call_once_while_it_is_queued(app: Celery) -> None:
    @app.task(unique="report:{day}")
    def report(day: str) -> None: ...

    first = report.delay("mon")
    again = report.apply_async(["mon"], countdown=5)
    other = report.delay("tue")
    assert first.already_queued is False and again.already_queued is True  # type: ignore[attr-defined]
    assert again.id == first.id, "the queued call's result comes back"
    assert other.id != first.id and other.already_queued is False  # type: ignore[attr-defined]
    assert app.transport.qsize("celery") == 2


def test_lock_object_is_held_by_its_token(app: Celery) -> None:
    with app.lock("job", expire=30) as acquired:
        assert acquired
        other = app.lock("job", expire=30)
        with other as theirs:
            assert theirs is False and not other.acquired
        assert other.owner() is not None and other.owner() != other.token
        assert isinstance(app.backend, memory.MemoryBackend)
        assert app.backend.lock_owner(LOCK_PREFIX + "job") == other.owner()
    assert app.lock("job").owner() is None, "released on leaving the block"


def test_lock_release_and_extend_only_while_held(app: Celery) -> None:
    lock = app.lock("job", expire=30)
    assert not lock.release(), "never acquired: nothing to release"
    assert not lock.extend()
    assert lock.acquire() and lock.extend(60)
    assert lock.release() and not lock.release()


def test_lock_refuses_a_non_positive_expire(app: Celery) -> None:
    for expire in (0, -1):
        with pytest.raises(ValueError, match="positive number of seconds"):
            app.lock("job", expire=expire)


def test_lock_needs_a_store_that_holds_locks() -> None:
    app = Celery("rpc", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://",
                 set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match=r"'rpc://' does not: set result_backend"):
        app.lock("job")
