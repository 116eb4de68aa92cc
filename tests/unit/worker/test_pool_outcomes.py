"""Jobs and a prefork child's reports of them cross the pipe as flat tuples (``_job_bytes``,
``_send_outcome``), not pickled dataclasses: every field the other side reads must come back as
it was sent."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import signal

import pytest

from celeriac.exceptions import DecodeError
from celeriac.protocol.message import Message
from celeriac.transport.base import Delivery
from celeriac.worker.outcome import Ending, Outcome
from celeriac.worker.pools.processes import (
    _job_bytes,
    _pipe_poller,
    _readable_now,
    _recv_job,
    _recv_outcome,
    _send_outcome,
)


@pytest.fixture
def pipe():
    parent, child = multiprocessing.Pipe(duplex=True)
    yield parent, child
    parent.close()
    child.close()


@pytest.mark.parametrize("ending", list(Ending))
def test_every_field_of_an_outcome_comes_back_but_what_the_child_stored(pipe, ending):
    parent, child = pipe
    sent = Outcome(f"task-{ending.value}", "FAILURE", ending, runtime=0.25, retval_repr="'v'",
                   exc_repr="KeyError('k')", traceback="Traceback ...", retval={"big": "value"},
                   reason="lease lost", signum=int(signal.SIGTERM), limit=2.5,
                   pending=object(), failure=None,
                   members=[(7, Outcome("member", "SUCCESS", Ending.SUCCEEDED, runtime=0.5))])
    _send_outcome(child, 41, sent, "ran 3 tasks")
    job_id, got, retiring = _recv_outcome(parent)
    assert (job_id, retiring) == (41, "ran 3 tasks")
    assert got.ending is ending
    # retval and pending stay in the child, which stored them
    assert got == Outcome(sent.task_id, sent.state, ending, 0.25, "'v'", "KeyError('k')",
                          "Traceback ...", None, "lease lost", int(signal.SIGTERM), 2.5, None,
                          None, [(7, Outcome("member", "SUCCESS", Ending.SUCCEEDED,
                                             runtime=0.5))])


def test_an_undecodable_outcome_keeps_its_failure_and_no_retiring_is_none(pipe):
    parent, child = pipe
    sent = Outcome.undecodable("t1", "bad body", DecodeError("cannot decode"))
    _send_outcome(child, 3, sent, None)
    job_id, got, retiring = _recv_outcome(parent)
    assert (job_id, retiring, got.ending, got.reason) == (3, None, Ending.UNDECODABLE, "bad body")
    assert isinstance(got.failure, DecodeError) and got.failure.args == ("cannot decode",)


def test_a_job_and_the_delivery_whose_early_ack_the_child_sends_come_back_whole(pipe):
    parent, child = pipe
    message = Message(b'[[1], {"k": 2}, {}]', "application/x-test", "binary",
                      {"id": "t9", "task": "tasks.add", "retries": 2, "timelimit": [None, 5]},
                      {"correlation_id": "t9", "priority": 3})
    delivery = Delivery(message, "q1", ("tag-9", "lease-token"), 4, True,
                        {"delivery_tag": "tag-9"}, "ex", "rk")
    info = delivery.delivery_info
    parent.send_bytes(_job_bytes((5, message, info, delivery, True)))
    job_id, got_message, got_info, got_delivery, check = _recv_job(child)
    assert (job_id, got_message, got_info, got_delivery, check) == (5, message, info, delivery,
                                                                    True)
    assert got_delivery.message is got_message  # one message, as the parent held it
    parent.send_bytes(_job_bytes((6, message, info, None, False)))  # acked by the parent
    assert _recv_job(child) == (6, message, info, None, False)


def test_a_job_of_anything_but_a_plain_message_is_pickled_whole(pipe):
    parent, child = pipe
    batch = {"requests": [1, 2, 3]}  # as a batch's messages: not a Message
    parent.send_bytes(_job_bytes((7, batch, {}, None, False)))
    assert _recv_job(child) == (7, batch, {}, None, False)
    parent.send_bytes(pickle.dumps(None))  # the parent says to leave
    assert _recv_job(child) is None


def test_the_flat_job_carries_every_field_of_a_message_and_a_delivery():
    # a field added to either must be added to the pipe's encoding (_job_bytes, _recv_job):
    # headers_json alone is left out (a cache of the headers, never needed by the child)
    assert [f.name for f in dataclasses.fields(Message)] == [
        "body", "content_type", "content_encoding", "headers", "properties", "headers_json"]
    assert [f.name for f in dataclasses.fields(Delivery)] == [
        "message", "queue", "receipt", "delivery_count", "redelivered", "extra", "exchange",
        "routing_key"]


def test_a_child_sees_a_job_waiting_in_its_pipe_and_a_parent_gone_without_blocking():
    parent, child = multiprocessing.Pipe(duplex=True)
    poller = _pipe_poller(child)
    assert not _readable_now(poller)
    parent.send_bytes(_job_bytes((8, Message(b"[]"), {}, None, False)))
    assert _readable_now(poller)
    assert _recv_job(child)[0] == 8 and not _readable_now(poller)
    parent.close()  # the parent is gone: readable, and reading says so (EOFError)
    assert _readable_now(poller)
    with pytest.raises(EOFError):
        _recv_job(child)
    child.close()


class _Looks:
    """A poll object whose pipe turns readable after ``after`` looks (None: never)."""

    def __init__(self, after: int | None) -> None:
        self.after, self.looks = after, 0

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        assert timeout == 0, "a look never waits"
        self.looks += 1
        return [(3, 1)] if self.after is not None and self.looks >= self.after else []


def test_a_child_keeps_looking_for_its_next_job_before_it_blocks(monkeypatch) -> None:
    """A child that finished a job looks at its pipe (yielding between looks) until the time
    it was given before it blocks reading it: a job sent meanwhile finds it awake. Given no
    time (its last wait was long), it does not look at all."""
    import time

    from celeriac.utils import spin
    from celeriac.worker.pools import processes

    yields: list[int] = []
    monkeypatch.setattr(spin, "_pause", lambda: yields.append(1))
    later = time.perf_counter() + 60
    readable = _Looks(after=1)
    processes._await_job(readable, later)
    assert (readable.looks, len(yields)) == (1, 0), "a job already there: no wait"
    soon = _Looks(after=5)
    processes._await_job(soon, later)
    assert (soon.looks, len(yields)) == (5, 4), "looked again until the job came"
    never = _Looks(after=None)
    processes._await_job(never, time.perf_counter() + 0.002)
    assert never.looks > 1, "kept looking before giving up"
    not_now = _Looks(after=None)
    processes._await_job(not_now, 0.0)
    assert not_now.looks == 0, "no time given: no look"
