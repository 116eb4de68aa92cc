"""A caller never waits forever for a message that can no longer run: real worker subprocesses
on SQLite and on Redis store a FAILURE, naming the reason and the fix, for a return value the
result serializer cannot encode and for every message they dead-letter, and go on working."""

from __future__ import annotations

import json
import uuid

import pytest

from celeriac import chord, states
from celeriac.exceptions import (
    ChordError,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    InvalidTaskError,
    WorkerLostError,
)
from celeriac.protocol.message import Message
from celeriac.transport.base import Outgoing
from tests.integration.conftest import Broker, settled
from tests.waiting import wait_for

#: the brokers every test runs on: the ``broker`` fixture of tests/integration/conftest.py

pytestmark = pytest.mark.integration

APP = "tests.integration.stored_failure_tasks"
#: a bound on each wait, not a timing claim: a caller that waited for nothing would hit it
PATIENCE = 30


@pytest.fixture
def app(broker: Broker, task_module):
    return task_module("stored_failure_tasks", broker.url, results=broker.results).app


@pytest.fixture
def tasks(app):
    from tests.integration import stored_failure_tasks

    return stored_failure_tasks


@pytest.fixture
def worker(broker: Broker, start_worker):
    def start(*args: str, env: dict[str, str] | None = None):
        return start_worker(*args, app=APP, url=broker.url, env=broker.worker_env(env))

    return start


def _failure(result, exc_type):
    """What ``get`` raises at once (a FAILURE is stored), and the state it read."""
    with pytest.raises(exc_type) as info:
        result.get(timeout=PATIENCE)
    assert result.state == states.FAILURE
    return info.value


def _letters(app) -> dict:
    return {d.message.headers.get("id"): d for d in app.transport.dead_letters()}


# ---- a return value the result serializer cannot encode -----------------------------------------
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_an_unencodable_return_value_is_stored_as_encode_error(worker, tasks, broker, pool):
    w = worker("-P", pool, "-c", "2")
    bad = tasks.unencodable.delay()
    exc = _failure(bad, EncodeError)
    assert str(exc).startswith(
        "task tests.integration.stored_failure_tasks.unencodable returned a value the 'json' "
        "result serializer cannot encode: set is not JSON serializable; ")
    assert "result_serializer='pickle'" in str(exc)
    assert "EncodeError" in (bad.traceback or "")
    # the message ran and was acked as such: not requeued, not dead-lettered, no internal error
    assert tasks.add.delay(2, 3).get(timeout=PATIENCE) == 5
    settled(broker, tasks.app)
    assert tasks.app.transport.dead_letters() == []
    log = w.log()
    assert f"unencodable[{bad.id}] raised unexpected: EncodeError(" in log
    assert "Internal error" not in log


def test_an_async_task_with_an_unencodable_return_value_fails_too(worker, tasks, broker):
    worker("-P", "threads", "-c", "1")
    exc = _failure(tasks.unencodable_async.delay(), EncodeError)
    assert "unencodable_async returned a value the 'json' result serializer" in str(exc)
    assert tasks.add.delay(1, 1).get(timeout=PATIENCE) == 2
    settled(broker, tasks.app)


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_chord_with_an_unencodable_part_fails_its_callback(worker, tasks, broker, pool):
    worker("-P", pool, "-c", "2")
    header = [tasks.add.s(1, 1), tasks.unencodable.s(), tasks.add.s(2, 2)]
    result = chord(header)(tasks.collect.s())
    # the callback's own outcome (a get() that follows parents may raise the part's EncodeError
    # first, as Celery does, if it reads before the callback is failed)
    with pytest.raises(ChordError) as info:
        result.get(timeout=PATIENCE, follow_parents=False)
    assert result.state == states.FAILURE
    exc = info.value
    assert "EncodeError" in str(exc) and "set is not JSON serializable" in str(exc)
    assert tasks.add.delay(2, 3).get(timeout=PATIENCE) == 5
    settled(broker, tasks.app)


# ---- result_extended: arguments the result serializer cannot encode ------------------------------
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_extended_results_store_arguments_json_cannot_encode_as_reprs(worker, tasks, broker,
                                                                        pool):
    w = worker("-P", pool, "-c", "2", env={"STORED_FAILURE_EXTENDED": "1"})
    arg = tasks.Opaque()
    done = tasks.type_of.apply_async((arg,), serializer="pickle")
    assert done.get(timeout=PATIENCE) == "Opaque"
    meta = tasks.app.backend.get_task_meta(done.id)
    assert meta["args"] == "(<Opaque>,)" and meta["kwargs"] == "{}"
    assert meta["name"] == tasks.type_of.name
    # a failure is stored the same way: the caller reads the task's own error
    failed = tasks.refuse.apply_async((arg,), serializer="pickle")
    with pytest.raises(ValueError, match="refused <Opaque>"):
        failed.get(timeout=PATIENCE)
    assert tasks.app.backend.get_task_meta(failed.id)["args"] == "(<Opaque>,)"
    # an unencodable return value is blamed, not the arguments
    bad = tasks.unencodable_from.apply_async((arg,), serializer="pickle")
    exc = _failure(bad, EncodeError)
    assert "unencodable_from returned a value the 'json' result serializer cannot encode: set " \
           "is not JSON serializable" in str(exc)
    # each ran once and was acked: nothing requeued, dead-lettered or lost
    settled(broker, tasks.app)
    assert tasks.app.transport.dead_letters() == []
    log = w.log()
    assert "Internal error" not in log and "CRITICAL" not in log
    assert log.count(f"{tasks.type_of.name}[{done.id}] received") == 1


# ---- messages the worker dead-letters -----------------------------------------------------------
def test_a_pickle_message_to_a_json_worker_fails_at_once_with_the_fix(worker, tasks, broker):
    w = worker("-c", "1")
    refused = tasks.add.apply_async((2, 3), serializer="pickle")
    exc = _failure(refused, ContentDisallowed)
    letters = _letters(tasks.app)
    letter = letters[refused.id]
    assert letter.message.content_type == "application/x-python-serialize"
    assert str(exc) == (
        f"task tests.integration.stored_failure_tasks.add[{refused.id}]: content type "
        f"'application/x-python-serialize' is not in this worker's accept_content "
        f"['application/json']; add 'pickle' to accept_content on the worker, or send with "
        f"serializer='json'. The message is in the dead-letter store: "
        f"`celeriac -A {APP} dlq replay {letter.id}` after fixing.")
    assert tasks.add.delay(2, 3).get(timeout=PATIENCE) == 5  # and the worker goes on
    settled(broker, tasks.app)
    assert "is not in accept_content" in w.log()


def _headers(name: str, task_id: str, **extra) -> dict:
    return {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "retries": 0,
            "timelimit": [None, None], "eta": None, "expires": None, **extra}


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_bad_messages_fail_their_callers_at_once(worker, tasks, broker, pool):
    app, add = tasks.app, tasks.add.name
    ids = {kind: str(uuid.uuid4()) for kind in ("malformed", "shape", "eta", "no_name")}
    body = json.dumps([[1, 2], {}, {}]).encode()
    app.transport.publish([Outgoing("celery", m) for m in (
        Message(body=b'[[1, 2], {"x": ', headers=_headers(add, ids["malformed"])),
        Message(body=b'{"args": 1}', headers=_headers(add, ids["shape"])),
        Message(body=body, headers=_headers(add, ids["eta"], eta="next tuesday")),
        Message(body=body, headers={"id": ids["no_name"]}),
        Message(body=body, headers={"task": add}),  # no id: only dead-lettered
    )])
    worker("-P", pool, "-c", "2")

    malformed = _failure(app.AsyncResult(ids["malformed"]), DecodeError)
    assert str(malformed).startswith(f"task {add}[{ids['malformed']}]: the message body cannot "
                                     f"be decoded (cannot decode application/json body")
    assert "check the client's serializer, compression and task_protocol" in str(malformed)
    shape = _failure(app.AsyncResult(ids["shape"]), InvalidTaskError)
    assert str(shape).startswith(f"task {add}[{ids['shape']}]: the message body cannot be "
                                 f"decoded")
    eta = _failure(app.AsyncResult(ids["eta"]), InvalidTaskError)
    assert "its 'eta' header 'next tuesday' is not an ISO 8601 time" in str(eta)
    no_name = _failure(app.AsyncResult(ids["no_name"]), InvalidTaskError)
    assert "has no 'task' header" in str(no_name)

    # every one kept, the one without an id too (no caller to fail: it may come last)
    expected = {*ids.values(), None}

    def all_kept() -> dict | None:
        found = _letters(app)
        return found if set(found) == expected else None

    letters = wait_for(all_kept, PATIENCE, message=lambda: f"dead letters: {set(_letters(app))}")
    for kind in ("malformed", "shape", "eta", "no_name"):
        exc = app.AsyncResult(ids[kind]).result
        letter_id = letters[ids[kind]].id
        # replaying the same bytes would fail the same way: the advice is to send it again
        assert str(exc).endswith(
            f"The sender must send it again; the original is kept in the dead-letter store "
            f"({letter_id}) for inspection: `celeriac -A {APP} dlq show {letter_id}`."), kind
        assert "dlq replay" not in str(exc), kind
    assert tasks.add.delay(2, 3).get(timeout=PATIENCE) == 5
    settled(broker, app)


@pytest.mark.broker_xfail(
    "amqp", raises=pytest.fail.Exception,
    reason="RabbitMQ's classic queues do not count deliveries (only `redelivered`), so the "
           "delivery limit cannot see a third delivery; quorum queues' x-delivery-count can "
           "(docs/rabbitmq.md)")
def test_a_poison_message_fails_its_caller_with_worker_lost(worker, tasks, broker):
    app = tasks.app
    result = tasks.add.delay(1, 2)
    for _ in range(2):  # two deliveries that never finished (worker_max_deliveries = 2)
        [held] = app.transport.fetch(["celery"], 1, 5.0)
        app.transport.reject(held, requeue=True)
    worker("-c", "1")
    exc = _failure(result, WorkerLostError)
    assert "was delivered 3 times without finishing (the worker running it died each time" \
        in str(exc)
    assert f"`celeriac -A {APP} dlq replay {_letters(app)[result.id].id}`" in str(exc)
    assert tasks.add.delay(2, 3).get(timeout=PATIENCE) == 5
    settled(broker, app)
