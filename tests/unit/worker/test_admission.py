"""Admission: each step alone, the order of the pipeline, and its decisions carried out by a
Consumer's ``receive`` against the memory broker and result store."""

from __future__ import annotations

import pathlib
import pickle
import time
from datetime import timedelta

import pytest

from celeriac import signals, states
from celeriac.exceptions import (
    ContentDisallowed,
    InvalidTaskError,
    NotRegistered,
    TaskRevokedError,
    WorkerLostError,
)
from celeriac.testing import dispose_test_app, make_test_app
from celeriac.worker.admission import (
    RUN,
    Admission,
    Arrival,
    Decision,
    Verdict,
    accepted_content,
    delivery_limit,
    due,
    not_revoked,
    registered,
    standard_steps,
    well_formed,
)
from celeriac.worker.extensions import Expiry, WorkerExtension
from celeriac.worker.job import Job
from celeriac.worker.revokes import RevokedSet, record_revoke
from tests.waiting import wait_for

from .support import (
    QUEUE,
    bare_message,
    dead_letters,
    delivery,
    fetch_one,
    make_consumer,
    publish,
    task_message,
    utc_in,
    utcnow,
)

JSON = "application/json"
PICKLE = "application/x-python-serialize"


def _define_tasks(app):
    @app.task(name="adm.add")
    def add(x, y):
        return x + y

    return app


@pytest.fixture
def app():
    app = _define_tasks(make_test_app("admission"))
    yield app
    dispose_test_app(app)


def arrival_of(message, *, count=1, now=None):
    return Arrival(delivery(message, count=count), now=now or utcnow())


# ---- each step alone ----------------------------------------------------------------------------
class TestWellFormed:
    def test_a_task_message_passes(self):
        assert well_formed(arrival_of(task_message("adm.add"))) is None

    @pytest.mark.parametrize("headers, missing", [
        ({"id": "abc"}, "task"),
        ({"task": "", "id": "abc"}, "task"),
        ({"task": "adm.add"}, "id"),
        ({"task": "adm.add", "id": None}, "id"),
        ({}, "task"),
    ])
    def test_a_message_without_task_or_id_is_dead_lettered(self, headers, missing):
        decision = well_formed(arrival_of(bare_message(headers)))
        assert decision.verdict is Verdict.DEAD_LETTER
        assert decision.reason == f"invalid message: missing {missing!r} header"
        # (stored only where the message has an id: the consumer's business)
        assert isinstance(decision.failure, InvalidTaskError)
        assert f"has no {missing!r} header" in str(decision.failure)
        assert "protocol 2" in str(decision.failure)

    def test_it_sends_task_rejected(self):
        seen = []
        message = bare_message({"task": "adm.add"})
        signals.task_rejected.connect(lambda **kw: seen.append(kw), weak=False,
                                      dispatch_uid="test_admission.rejected")
        try:
            well_formed(arrival_of(message))
        finally:
            signals.task_rejected.disconnect(dispatch_uid="test_admission.rejected")
        assert len(seen) == 1 and seen[0]["message"] is message


class TestAcceptedContent:
    def test_an_accepted_type_passes(self):
        step = accepted_content(frozenset({JSON}))
        assert step(arrival_of(task_message("adm.add"))) is None

    def test_another_type_is_dead_lettered_with_the_fix_for_its_caller(self):
        step = accepted_content(frozenset({JSON}))
        message = task_message("adm.add", serializer="pickle")
        assert message.content_type == PICKLE
        decision = step(arrival_of(message))
        assert decision.verdict is Verdict.DEAD_LETTER
        assert decision.reason == f"content type {PICKLE!r} not accepted"
        assert isinstance(decision.failure, ContentDisallowed)
        assert str(decision.failure) == (
            f"task adm.add[{message.headers['id']}]: content type {PICKLE!r} is not in this "
            f"worker's accept_content [{JSON!r}]; add 'pickle' to accept_content on the worker, "
            f"or send with serializer='json'.")

    def test_an_unknown_content_type_is_told_which_serializer_to_send_with(self):
        step = accepted_content(frozenset({"application/x-msgpack"}))
        message = bare_message({"task": "adm.add", "id": "t-1"}, content_type="text/plain")
        failure = step(arrival_of(message)).failure
        assert isinstance(failure, ContentDisallowed)
        assert "'text/plain' is not in this worker's accept_content" in str(failure)
        assert str(failure).endswith("send with serializer='msgpack'.")

    def test_nothing_is_accepted_by_an_empty_accept(self):
        step = accepted_content(frozenset())
        assert step(arrival_of(task_message("adm.add"))).verdict is Verdict.DEAD_LETTER


class TestRegistered:
    def test_a_known_task_passes_and_is_remembered(self, app):
        arrival = arrival_of(task_message("adm.add"))
        assert registered(app.tasks)(arrival) is None
        assert arrival.task is app.tasks["adm.add"]

    def test_an_unknown_task_is_dead_lettered_with_a_not_registered_failure(self, app):
        arrival = arrival_of(task_message("adm.unknown"))
        decision = registered(app.tasks)(arrival)
        assert decision.verdict is Verdict.DEAD_LETTER
        assert decision.reason == "unknown task name 'adm.unknown'"
        assert isinstance(decision.failure, NotRegistered)
        assert arrival.task is None


class TestDeliveryLimit:
    @pytest.mark.parametrize("count", [1, 3])
    def test_up_to_the_limit_passes(self, count):
        assert delivery_limit(3)(arrival_of(task_message("adm.add"), count=count)) is None

    def test_over_the_limit_is_a_poison_message_whose_caller_reads_worker_lost(self):
        message = task_message("adm.add")
        decision = delivery_limit(3)(arrival_of(message, count=4))
        assert decision.verdict is Verdict.DEAD_LETTER
        assert decision.reason == "delivered 4 times (poison message)"
        assert isinstance(decision.failure, WorkerLostError)
        text = str(decision.failure)
        assert f"task adm.add[{message.headers['id']}] was delivered 4 times without " \
            "finishing (the worker running it died each time" in text
        assert "dead-lettered" in text and "worker_max_deliveries (now 3)" in text


class TestNotRevoked:
    def test_a_revoked_id_is_dropped_as_revoked(self, app):
        revokes = RevokedSet(app.backend)
        revokes.add(["t-revoked"])
        step = not_revoked(revokes)
        assert step(arrival_of(task_message("adm.add", "t-revoked"))) == Decision(Verdict.REVOKED)
        assert step(arrival_of(task_message("adm.add", "t-other"))) is None


class TestDue:
    def test_no_eta_or_a_past_one_passes(self):
        now = utcnow()
        assert due(arrival_of(task_message("adm.add"), now=now)) is None
        past = task_message("adm.add", eta=now - timedelta(seconds=5))
        assert due(arrival_of(past, now=now)) is None

    def test_an_eta_of_exactly_now_is_due(self):
        now = utcnow()
        assert due(arrival_of(task_message("adm.add", eta=now), now=now)) is None

    def test_a_future_eta_is_deferred_until_then(self):
        now = utcnow()
        eta = now + timedelta(seconds=30)
        decision = due(arrival_of(task_message("adm.add", eta=eta), now=now))
        assert decision == Decision(Verdict.DEFER, not_before=eta.timestamp())

    def test_an_unreadable_eta_is_dead_lettered(self):
        decision = due(arrival_of(bare_message({"task": "adm.add", "id": "x",
                                                "eta": "next tuesday"})))
        assert decision.verdict is Verdict.DEAD_LETTER
        assert decision.reason.startswith("invalid eta/expires header")
        assert isinstance(decision.failure, InvalidTaskError)
        assert str(decision.failure).startswith(
            "task adm.add[x]: its 'eta' header 'next tuesday' is not an ISO 8601 time")


class TestExpiry:
    def test_before_admission_drops_an_expired_task(self):
        now = utcnow()
        past = task_message("adm.add", expires=now - timedelta(seconds=1))
        assert Expiry().before_admission(arrival_of(past, now=now)) == Decision(Verdict.EXPIRED)
        exactly_now = task_message("adm.add", expires=now)
        assert Expiry().before_admission(arrival_of(exactly_now, now=now)) == Decision(
            Verdict.EXPIRED)

    def test_before_admission_lets_an_unexpired_task_through(self):
        now = utcnow()
        future = task_message("adm.add", expires=now + timedelta(seconds=60))
        assert Expiry().before_admission(arrival_of(future, now=now)) is None
        assert Expiry().before_admission(arrival_of(task_message("adm.add"), now=now)) is None

    def test_before_admission_dead_letters_an_unreadable_expires(self):
        decision = Expiry().before_admission(arrival_of(bare_message(
            {"task": "adm.add", "id": "x", "expires": "soonish"})))
        assert decision.verdict is Verdict.DEAD_LETTER
        assert decision.reason.startswith("invalid eta/expires header")
        assert isinstance(decision.failure, InvalidTaskError)
        assert "its 'expires' header 'soonish' is not an ISO 8601 time" in str(decision.failure)

    @staticmethod
    def _job(app, message):
        return Job(1, delivery(message), app.tasks["adm.add"], late=False, outside_window=False)

    def test_before_run_drops_a_task_that_expired_while_it_waited(self, app):
        expired = task_message("adm.add", expires=utcnow() - timedelta(milliseconds=1))
        assert Expiry().before_run(self._job(app, expired)) == Decision(Verdict.EXPIRED)

    def test_before_run_lets_a_live_task_run(self, app):
        live = task_message("adm.add", expires=utc_in(60))
        assert Expiry().before_run(self._job(app, live)) is None
        assert Expiry().before_run(self._job(app, task_message("adm.add"))) is None
        garbage = bare_message({"task": "adm.add", "id": "x", "expires": "soonish"})
        assert Expiry().before_run(self._job(app, garbage)) is None


# ---- the pipeline's order -----------------------------------------------------------------------
class TestAdmissionOrder:
    def test_the_first_deciding_step_wins_and_later_steps_are_not_consulted(self):
        calls = []
        decided = Decision(Verdict.DEAD_LETTER, "second says no")

        def first(arrival):
            calls.append("first")

        def second(arrival):
            calls.append("second")
            return decided

        def third(arrival):  # must never run
            calls.append("third")
            return Decision(Verdict.REVOKED)

        decision, arrival = Admission([first, second, third]).admit(
            delivery(task_message("adm.add")))
        assert decision is decided
        assert calls == ["first", "second"]
        assert arrival.delivery.message.headers["task"] == "adm.add"

    def test_no_deciding_step_means_run_and_every_step_sees_one_arrival(self):
        seen = []
        decision, arrival = Admission([seen.append, seen.append]).admit(
            delivery(task_message("adm.add")))
        assert decision is RUN
        assert seen == [arrival, arrival]
        assert Admission([]).admit(delivery(task_message("adm.add")))[0] is RUN

    def _admit(self, app, message, *, extra=(), revoked=(), count=1, max_deliveries=10):
        revokes = RevokedSet(app.backend)
        revokes.add(revoked)
        admission = Admission(standard_steps(accept=frozenset({JSON}), tasks=app.tasks,
                                             max_deliveries=max_deliveries, revokes=revokes,
                                             extra=extra))
        return admission.admit(delivery(message, count=count))[0]

    def test_well_formed_comes_before_the_content_type(self, app):
        message = bare_message({"task": "adm.add"}, body=b"\x80\x04N.", content_type=PICKLE)
        assert self._admit(app, message).reason == "invalid message: missing 'id' header"

    def test_the_content_type_comes_before_the_task_name(self, app):
        decision = self._admit(app, task_message("adm.unknown", serializer="pickle"))
        assert decision.reason == f"content type {PICKLE!r} not accepted"
        assert isinstance(decision.failure, ContentDisallowed)  # from the headers, undecoded

    def test_the_task_name_comes_before_the_delivery_limit(self, app):
        decision = self._admit(app, task_message("adm.unknown"), count=99)
        assert decision.reason == "unknown task name 'adm.unknown'"

    def test_the_delivery_limit_comes_before_revokes(self, app):
        decision = self._admit(app, task_message("adm.add", "t-1"), revoked=["t-1"], count=11)
        assert decision.reason == "delivered 11 times (poison message)"

    def test_revokes_come_before_extension_steps(self, app):
        consulted = []
        decision = self._admit(app, task_message("adm.add", "t-1"), revoked=["t-1"],
                               extra=[consulted.append])
        assert decision == Decision(Verdict.REVOKED) and consulted == []

    def test_extension_steps_come_before_due_and_see_the_task(self, app):
        seen = []

        def veto(arrival):
            seen.append(arrival.task)
            return Decision(Verdict.DEAD_LETTER, "vetoed")

        decision = self._admit(app, task_message("adm.add", eta=utc_in(60)), extra=[veto])
        assert decision == Decision(Verdict.DEAD_LETTER, "vetoed")
        assert seen == [app.tasks["adm.add"]]

    def test_expiry_wins_over_a_future_eta(self, app):
        message = task_message("adm.add", eta=utc_in(60), expires=utc_in(-1))
        assert self._admit(app, message, extra=[Expiry().before_admission]) == Decision(
            Verdict.EXPIRED)


# ---- end to end: Consumer.receive on the memory broker ------------------------------------------
@pytest.fixture
def consumer(app):
    consumer = make_consumer(app)
    consumer.settlement.start()  # the acker thread: drops and expiries are acked in batches
    yield consumer
    consumer.settlement.close()


def _receive_one(app, consumer):
    consumer.receive([fetch_one(app)])


def _nothing_left(app):
    assert app.transport.qsize(QUEUE) == 0
    assert app.transport.fetch([QUEUE], 1, 0.0) == []


class _WritesAFile:
    """A pickle payload that creates ``path`` when it is unpickled."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_a_message_without_an_id_is_dead_lettered_and_not_left_leased(app, consumer):
    message = bare_message({"task": "adm.add"})
    publish(app, message)
    _receive_one(app, consumer)
    [dead] = dead_letters(app)
    assert dead.reason == "invalid message: missing 'id' header"
    assert dead.queue == QUEUE and dead.message.body == message.body
    assert consumer.jobs() == []
    _nothing_left(app)


def test_an_unknown_task_is_dead_lettered_and_its_caller_sees_not_registered(app, consumer):
    message = task_message("adm.unknown", args=[1])
    task_id = publish(app, message)
    _receive_one(app, consumer)
    [dead] = dead_letters(app)
    assert dead.reason == "unknown task name 'adm.unknown'"
    assert dead.message.headers["id"] == task_id and dead.message.body == message.body
    result = app.AsyncResult(task_id)
    assert result.state == states.FAILURE  # stored by receive itself, before it returned
    started = time.monotonic()
    with pytest.raises(NotRegistered):
        result.get(timeout=5)
    assert time.monotonic() - started < 1.0
    assert consumer.jobs() == []
    _nothing_left(app)


def test_a_refused_content_type_is_dead_lettered_without_deserializing(app, consumer, tmp_path):
    # The payload is a real gadget: unpickling it elsewhere does write its file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_WritesAFile(control)))
    assert control.exists()

    target = tmp_path / "pwned"
    message = task_message("adm.add", serializer="pickle", args=[_WritesAFile(target)])
    assert message.content_type == PICKLE
    task_id = publish(app, message)
    _receive_one(app, consumer)
    [dead] = dead_letters(app)
    assert dead.reason == f"content type {PICKLE!r} not accepted"
    assert dead.message.body == message.body  # kept byte for byte, still undecoded
    assert not target.exists()
    # its caller reads why and what to do, from the headers alone (nothing was decoded)
    exc = _failure(app, task_id, ContentDisallowed)
    assert str(exc) == (
        f"task adm.add[{task_id}]: content type {PICKLE!r} is not in this worker's "
        f"accept_content [{JSON!r}]; add 'pickle' to accept_content on the worker, or send "
        f"with serializer='json'. The message is in the dead-letter store: "
        f"`celeriac -A {app.main} dlq replay {dead.id}` after fixing.")
    assert consumer.jobs() == []
    _nothing_left(app)
    assert not target.exists()


def _failure(app, task_id, exc_type):
    """The stored FAILURE of ``task_id``: stored by ``receive`` itself, before it returned."""
    result = app.AsyncResult(task_id)
    assert result.state == states.FAILURE
    with pytest.raises(exc_type) as info:
        result.get(timeout=5)
    return info.value


def test_a_message_without_a_task_header_but_with_an_id_stores_invalid_task(app, consumer):
    task_id = publish(app, bare_message({"id": "t-no-name"}))
    _receive_one(app, consumer)
    [dead] = dead_letters(app)
    exc = _failure(app, task_id, InvalidTaskError)
    assert str(exc).startswith("message 't-no-name' has no 'task' header")
    # not a replay: the same bytes would be refused again
    assert str(exc).endswith(f"The sender must send it again; the original is kept in the "
                             f"dead-letter store ({dead.id}) for inspection: "
                             f"`celeriac -A {app.main} dlq show {dead.id}`.")
    assert "dlq replay" not in str(exc)
    _nothing_left(app)


def test_an_unreadable_eta_stores_invalid_task(app, consumer):
    task_id = publish(app, bare_message({"task": "adm.add", "id": "t-eta", "eta": "tuesday"}))
    _receive_one(app, consumer)
    [dead] = dead_letters(app)
    assert dead.reason.startswith("invalid eta/expires header")
    exc = _failure(app, task_id, InvalidTaskError)
    assert "its 'eta' header 'tuesday' is not an ISO 8601 time" in str(exc)
    _nothing_left(app)


@pytest.mark.parametrize("headers", [{"ignore_result": True}, {}])
def test_a_dead_letter_whose_result_is_ignored_stores_nothing(app, consumer, headers):
    @app.task(name="adm.quiet", ignore_result=True)
    def quiet():
        return None

    # the header wins; without one, the task's own ignore_result decides
    name = "adm.add" if headers else "adm.quiet"
    message = task_message(name, serializer="pickle")
    message.headers.update(headers)
    if not headers:
        message.headers["ignore_result"] = None  # as Celery's send_task sends it
    task_id = publish(app, message)
    _receive_one(app, consumer)
    assert [d.message.headers["id"] for d in dead_letters(app)] == [task_id]
    assert app.AsyncResult(task_id).state == states.PENDING
    _nothing_left(app)


def test_an_extension_step_dead_lettering_without_a_failure_still_fails_its_caller(app):
    class Vetoes(WorkerExtension):
        def before_admission(self, arrival):
            return Decision(Verdict.DEAD_LETTER, "vetoed by policy")  # no failure given

    consumer = make_consumer(app, extensions=[Vetoes()])
    task_id = publish(app, task_message("adm.add", args=[1, 2]))
    _receive_one(app, consumer)
    [dead] = dead_letters(app)
    assert dead.reason == "vetoed by policy"
    exc = _failure(app, task_id, InvalidTaskError)
    assert str(exc).startswith(f"task adm.add[{task_id}] was dead-lettered: vetoed by policy.")


def test_an_expired_task_is_acked_and_stored_revoked(app, consumer):
    task_id = publish(app, task_message("adm.add", args=[1, 2],
                                        expires=utcnow() - timedelta(seconds=10)))
    _receive_one(app, consumer)
    result = app.AsyncResult(task_id)
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)
    wait_for(lambda: app.transport.qsize(QUEUE) == 0, 5, message="the expired task was not acked")
    assert dead_letters(app) == [] and consumer.jobs() == []


def test_a_task_revoked_before_it_arrived_is_acked_and_stored_revoked(app, consumer):
    message = task_message("adm.add", args=[1, 2])
    record_revoke(app.backend, [message.headers["id"]])
    task_id = publish(app, message)
    _receive_one(app, consumer)
    assert app.AsyncResult(task_id).state == states.REVOKED
    wait_for(lambda: app.transport.qsize(QUEUE) == 0, 5, message="the revoked task was not acked")
    assert consumer.jobs() == []


def test_a_future_eta_is_deferred_to_the_broker_and_comes_back_when_due(app, consumer):
    eta = utc_in(0.6)  # far enough ahead to be deferred even on a slow machine
    task_id = publish(app, task_message("adm.add", args=[1, 2], eta=eta))
    _receive_one(app, consumer)
    assert app.transport.qsize(QUEUE) == 1  # still stored...
    assert consumer.jobs() == []  # ...but not held by the consumer
    assert app.transport.fetch([QUEUE], 1, 0.0) == []  # and not fetchable before it is due
    assert dead_letters(app) == []

    back = fetch_one(app, timeout=10)
    assert time.time() >= eta.timestamp()
    assert back.message.headers["id"] == task_id
    assert back.delivery_count == 1 and not back.redelivered  # a deferral is no failed delivery
    consumer.receive([back])
    assert [job.task_id for job in consumer.jobs()] == [task_id]  # due now: held to run


def test_a_message_over_the_delivery_limit_is_dead_lettered():
    app = _define_tasks(make_test_app("admission-limit", worker_max_deliveries=2))
    consumer = make_consumer(app)
    try:
        task_id = publish(app, task_message("adm.add", args=[1, 2]))
        for _ in range(2):  # two deliveries that never finished
            app.transport.reject(fetch_one(app), requeue=True)
        third = fetch_one(app)
        assert third.delivery_count == 3
        consumer.receive([third])
        [dead] = dead_letters(app)
        assert dead.reason == "delivered 3 times (poison message)"
        assert dead.message.headers["id"] == task_id
        exc = _failure(app, task_id, WorkerLostError)
        assert "was delivered 3 times without finishing" in str(exc)
        assert f"`celeriac -A {app.main} dlq replay {dead.id}`" in str(exc)
        assert consumer.jobs() == []
        _nothing_left(app)
    finally:
        dispose_test_app(app)
