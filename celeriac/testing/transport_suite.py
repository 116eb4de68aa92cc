"""The transport conformance suite: the delivery semantics every broker must keep, as pytest tests.

Layer: testing (imports pytest). Subclass ``TransportContract`` in a test module, name the subclass
``Test...`` and give it a ``transport_factory`` fixture; pytest then runs every check below against
that transport. Leases are kept short (``lease`` seconds) so expiry tests stay fast.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import pytest

from ..protocol.message import Message
from ..transport.base import Delivery, Outgoing, Transport

MakeTransport = Callable[..., Transport]


def message(tag: str, *, priority: int | None = None, **headers: Any) -> Message:
    """A small task-like message whose body and ``id`` header are ``tag``."""
    properties: dict[str, Any] = {"correlation_id": tag}
    if priority is not None:
        properties["priority"] = priority
    return Message(tag.encode(), headers={"id": tag, "task": "tests.noop", **headers},
                   properties=properties)


def tags(deliveries: list[Delivery]) -> list[str]:
    return [d.message.body.decode() for d in deliveries]


class TransportContract:
    """Checks shared by every transport implementation.

    A subclass provides the fixture ``transport_factory``: a callable ``(**options) -> Transport``
    returning a NEW transport object on the SAME broker every time it is called within one test
    (two objects stand for two workers), and a broker that starts empty for each test.
    """

    #: lease length, in seconds, of the transports the tests open
    lease = 0.2

    @pytest.fixture
    def make_transport(self, transport_factory: MakeTransport) -> Iterator[MakeTransport]:
        opened: list[Transport] = []

        def make(**options: Any) -> Transport:
            options.setdefault("visibility_timeout", self.lease)
            transport = transport_factory(**options)
            opened.append(transport)
            return transport

        yield make
        for transport in opened:
            transport.close()

    @pytest.fixture
    def transport(self, make_transport: MakeTransport) -> Transport:
        return make_transport()

    @staticmethod
    def publish(transport: Transport, queue: str, *names: str, not_before: float | None = None
                ) -> None:
        transport.publish([Outgoing(queue, message(n), not_before) for n in names])

    # ---- shape ------------------------------------------------------------------------------
    def test_implements_the_protocol_and_takes_options(self, make_transport: MakeTransport) -> None:
        transport = make_transport(visibility_timeout=12.5, polling_interval=0.01,
                                   an_option_nobody_knows=True)
        assert isinstance(transport, Transport)
        assert transport.visibility_timeout == 12.5

    def test_message_comes_back_byte_for_byte(self, transport: Transport) -> None:
        sent = Message(
            b"\x00\xff\xfe binary \x80 body",
            content_type="application/x-msgpack",
            content_encoding="binary",
            headers={"id": "t-1", "task": "tasks.add", "argsrepr": "(1, 'é')", "eta": None,
                     "retries": 3, "timelimit": [None, 2.5], "nested": {"a": [1, {"b": True}]},
                     "unicode": "☃ snow \u2028"},
            properties={"correlation_id": "t-1", "reply_to": "r-1", "delivery_mode": 2,
                        "priority": 0, "body_encoding": "base64",
                        "delivery_info": {"exchange": "", "routing_key": "q"}},
        )
        transport.publish([Outgoing("q", sent)])
        [got] = transport.fetch(["q"], 10, 1.0)
        assert got.message == sent
        assert isinstance(got.message.body, bytes)
        assert (got.queue, got.delivery_count, got.redelivered) == ("q", 1, False)

    def test_consumer_changes_do_not_leak_into_the_stored_message(self, transport: Transport
                                                                  ) -> None:
        self.publish(transport, "q", "m0")
        [first] = transport.fetch(["q"], 1, 1.0)
        first.message.headers["id"] = "tampered"
        assert transport.reject(first, requeue=True)
        [again] = transport.fetch(["q"], 1, 1.0)
        assert again.message.headers["id"] == "m0"

    def test_a_failing_publish_stores_nothing(self, transport: Transport) -> None:
        bad = Message(b"x", headers={"id": object()})
        with pytest.raises(TypeError):
            transport.publish([Outgoing("q", message("good")), Outgoing("q", bad)])
        assert transport.qsize("q") == 0
        self.publish(transport, "q", "after")  # the transport is still usable
        assert tags(transport.fetch(["q"], 5, 1.0)) == ["after"]

    def test_bad_fetch_arguments_are_refused(self, transport: Transport) -> None:
        for queues, max_n in (([], 1), ([""], 1), (["q"], 0)):
            with pytest.raises(ValueError):
                transport.fetch(queues, max_n, 0)

    # ---- order ------------------------------------------------------------------------------
    def test_fifo_within_a_batch_and_max_n(self, transport: Transport) -> None:
        names = [f"m{i}" for i in range(12)]
        self.publish(transport, "q", *names)
        first = transport.fetch(["q"], 5, 1.0)
        rest = transport.fetch(["q"], 100, 1.0)
        assert tags(first) == names[:5]
        assert tags(rest) == names[5:]

    def test_higher_priority_first_then_oldest(self, transport: Transport) -> None:
        prios = {"p0a": 0, "p5a": 5, "none": None, "p9": 9, "p5b": 5, "p1": 1}
        transport.publish([Outgoing("q", message(n, priority=p)) for n, p in prios.items()])
        assert tags(transport.fetch(["q"], 2, 1.0)) == ["p9", "p5a"]
        assert tags(transport.fetch(["q"], 10, 1.0)) == ["p5b", "p1", "p0a", "none"]

    def test_queues_are_served_in_turn(self, transport: Transport) -> None:
        self.publish(transport, "a", *(f"a{i}" for i in range(30)))
        self.publish(transport, "b", "b0", "b1", "b2")
        mixed = tags(transport.fetch(["a", "b"], 4, 1.0))
        assert sorted(mixed) == ["a0", "a1", "b0", "b1"]
        assert [t for t in mixed if t[0] == "a"] == ["a0", "a1"]
        # single fetches alternate, so a long queue listed first cannot starve the other one
        singles = [tags(transport.fetch(["a", "b"], 1, 1.0))[0] for _ in range(2)]
        assert sorted(t[0] for t in singles) == ["a", "b"]

    def test_priority_holds_within_each_queue_of_several(self, transport: Transport) -> None:
        transport.publish([Outgoing("a", message("a-low", priority=0)),
                           Outgoing("a", message("a-high", priority=9)),
                           Outgoing("b", message("b-low", priority=0)),
                           Outgoing("b", message("b-high", priority=9))])
        assert sorted(tags(transport.fetch(["a", "b"], 2, 1.0))) == ["a-high", "b-high"]

    def test_a_queue_listed_twice_is_served_once(self, transport: Transport) -> None:
        self.publish(transport, "q", "m0", "m1")
        assert tags(transport.fetch(["q", "q"], 5, 1.0)) == ["m0", "m1"]

    # ---- waiting ----------------------------------------------------------------------------
    def test_fetch_times_out_empty_without_returning_early(self, transport: Transport) -> None:
        started = time.monotonic()
        assert transport.fetch(["q"], 1, 0.15) == []
        assert 0.14 <= time.monotonic() - started < 1.0
        started = time.monotonic()
        assert transport.fetch(["q"], 1, 0) == []
        assert time.monotonic() - started < 0.1

    def test_waiting_does_not_spin(self, transport: Transport) -> None:
        transport.declare("q")
        cpu = time.thread_time()
        assert transport.fetch(["q"], 1, 0.3) == []
        assert time.thread_time() - cpu < 0.1

    def test_a_publish_wakes_a_waiting_fetch(self, make_transport: MakeTransport) -> None:
        consumer, producer = make_transport(), make_transport()
        timer = threading.Timer(0.1, self.publish, (producer, "q", "late"))
        started = time.monotonic()
        timer.start()
        try:
            got = consumer.fetch(["q"], 1, 5.0)
        finally:
            timer.join()
        assert tags(got) == ["late"]
        assert time.monotonic() - started < 1.0

    def test_not_before_holds_a_message_until_due(self, transport: Transport) -> None:
        due = time.time() + 0.3
        self.publish(transport, "q", "later", not_before=due)
        self.publish(transport, "q", "past", not_before=time.time() - 5)
        self.publish(transport, "q", "now")
        ready = transport.fetch(["q"], 10, 0)
        assert tags(ready) == ["past", "now"]
        assert transport.qsize("q") == 3
        assert transport.ack(ready) == [True, True]
        got = transport.fetch(["q"], 10, 5.0)  # must wake by itself when "later" comes due
        assert tags(got) == ["later"]
        assert due - 0.05 <= time.time() < due + 0.7
        assert got[0].delivery_count == 1

    # ---- leases -----------------------------------------------------------------------------
    def test_expired_lease_is_delivered_again(self, transport: Transport) -> None:
        self.publish(transport, "q", "m")
        leased_at = time.time()  # taken before the fetch: the lease cannot start earlier
        [first] = transport.fetch(["q"], 1, 1.0)
        assert transport.fetch(["q"], 1, 0) == []  # leased: invisible
        [second] = transport.fetch(["q"], 1, 3.0)  # comes back after the lease, by itself
        assert time.time() - leased_at >= self.lease - 0.05
        assert (tags([second]), second.delivery_count, second.redelivered) == (["m"], 2, True)
        assert transport.qsize("q") == 1

    def test_stale_lease_holder_is_fenced_out(self, make_transport: MakeTransport) -> None:
        slow, fast = make_transport(), make_transport()
        self.publish(slow, "q", "m")
        [stale] = slow.fetch(["q"], 1, 1.0)
        [fresh] = fast.fetch(["q"], 1, 3.0)  # after slow's lease expired
        assert fresh.delivery_count == 2
        assert slow.ack([stale]) == [False]
        assert slow.reject(stale, requeue=True) is False
        assert slow.reject(stale, requeue=False) is False
        assert slow.defer(stale, time.time() + 60) is False
        slow.extend_lease([stale], 60)
        assert fast.qsize("q") == 1
        # the stale renewal did not stretch fast's lease: the message comes back on time
        [third] = fast.fetch(["q"], 1, 3.0)
        assert third.delivery_count == 3
        assert fast.ack([fresh]) == [False]
        assert fast.ack([third]) == [True]
        assert fast.qsize("q") == 0

    def test_expired_lease_not_yet_taken_can_still_be_acked(self, transport: Transport) -> None:
        self.publish(transport, "q", "m")
        [late] = transport.fetch(["q"], 1, 1.0)
        time.sleep(self.lease + 0.05)
        assert transport.ack([late]) == [True]
        assert transport.fetch(["q"], 1, 0) == []

    def test_ack_is_batched_and_fenced(self, transport: Transport) -> None:
        assert transport.ack([]) == []
        self.publish(transport, "q", "a", "b", "c")
        got = transport.fetch(["q"], 3, 1.0)
        assert transport.ack(got[:1]) == [True]
        assert transport.ack(got) == [False, True, True]
        assert transport.qsize("q") == 0

    def test_extend_lease_keeps_a_long_task_from_redelivery(self, transport: Transport) -> None:
        self.publish(transport, "q", "long", "other")
        [long_one] = transport.fetch(["q"], 1, 1.0)
        transport.extend_lease([long_one], 0.6)
        time.sleep(self.lease + 0.05)
        assert tags(transport.fetch(["q"], 5, 0)) == ["other"]  # "long" still leased
        transport.extend_lease([long_one])  # default: visibility_timeout from now
        time.sleep(self.lease / 2)
        assert transport.fetch(["q"], 5, 0) == []
        assert transport.ack([long_one]) == [True]

    def test_reject_requeue_keeps_its_place_and_counts(self, transport: Transport) -> None:
        self.publish(transport, "q", "m0", "m1", "m2")
        [m0] = transport.fetch(["q"], 1, 1.0)
        assert transport.reject(m0, requeue=True) is True
        assert transport.reject(m0, requeue=True) is False  # the lease is gone with the requeue
        again = transport.fetch(["q"], 1, 1.0)
        assert tags(again) == ["m0"]
        assert (again[0].delivery_count, again[0].redelivered) == (2, True)
        assert transport.reject(again[0], requeue=True)
        assert [d.delivery_count for d in transport.fetch(["q"], 3, 1.0)] == [3, 1, 1]

    def test_reject_without_requeue_drops(self, transport: Transport) -> None:
        self.publish(transport, "q", "m")
        [d] = transport.fetch(["q"], 1, 1.0)
        assert transport.reject(d, requeue=False) is True
        assert transport.qsize("q") == 0
        assert transport.reject(d, requeue=False) is False

    def test_defer_holds_the_message_outside_the_lease(self, transport: Transport) -> None:
        self.publish(transport, "q", "eta")
        [d] = transport.fetch(["q"], 1, 1.0)
        due = time.time() + 0.4  # longer than the lease: it must not come back early
        assert transport.defer(d, due) is True
        assert transport.fetch(["q"], 1, 0.25) == []
        assert transport.ack([d]) == [False]  # deferring gave the lease up
        assert transport.qsize("q") == 1
        [back] = transport.fetch(["q"], 1, 5.0)
        assert due - 0.05 <= time.time() < due + 0.7
        assert (tags([back]), back.delivery_count) == (["eta"], 1)
        assert transport.defer(back, time.time() - 1) is True  # already due: at once
        assert tags(transport.fetch(["q"], 1, 1.0)) == ["eta"]

    # ---- dead letters -----------------------------------------------------------------------
    def test_dead_letters_keep_the_message_and_reason(self, transport: Transport) -> None:
        before = time.time()
        sent = Message(b"\xffnot json", "application/json", "utf-8",
                       {"id": "x", "task": "missing"}, {"correlation_id": "x", "priority": 3})
        first = transport.dead_letter("q", sent, "unknown task")
        second = transport.dead_letter("q2", message("b"), "undecodable")
        third = transport.dead_letter("q", message("c"), "too big")
        assert len({first, second, third}) == 3 and all(isinstance(i, str) for i in (first, second))
        letter = transport.dead_letter_get(first)
        assert letter is not None
        assert (letter.id, letter.queue, letter.reason, letter.message) == (
            first, "q", "unknown task", sent)
        assert before - 1 <= letter.created_at <= time.time() + 1
        assert [d.id for d in transport.dead_letters()] == [first, second, third]
        assert [d.id for d in transport.dead_letters(limit=2)] == [first, second]
        assert transport.dead_letter_delete([second, "no-such-id"]) == 1
        assert transport.dead_letter_get(second) is None
        assert transport.dead_letter_get("no-such-id") is None
        assert transport.dead_letter_delete(None) == 2
        assert transport.dead_letters() == []
        assert transport.qsize("q") == 0  # a dead letter is not a queued message

    def test_dead_lettering_a_delivery_removes_it_at_once(self, transport: Transport) -> None:
        self.publish(transport, "q", "poison", "fine")
        [d] = transport.fetch(["q"], 1, 1.0)
        dead_id = transport.dead_letter("q", d.message, "poison", d)
        assert transport.qsize("q") == 1
        assert transport.ack([d]) == [False]
        letter = transport.dead_letter_get(dead_id)
        assert letter is not None and letter.message == message("poison")
        # replay is publish-then-delete, done by the caller
        transport.publish([Outgoing(letter.queue, letter.message)])
        assert transport.dead_letter_delete([dead_id]) == 1
        assert tags(transport.fetch(["q"], 5, 1.0)) == ["fine", "poison"]

    def test_dead_lettering_a_stale_delivery_stores_nothing(self, make_transport: MakeTransport
                                                            ) -> None:
        slow, fast = make_transport(), make_transport()
        self.publish(slow, "q", "m")
        [stale] = slow.fetch(["q"], 1, 1.0)
        [fresh] = fast.fetch(["q"], 1, 3.0)
        assert slow.dead_letter("q", stale.message, "poison", stale) == ""
        assert fast.dead_letters() == []
        assert fast.ack([fresh]) == [True]

    # ---- admin ------------------------------------------------------------------------------
    def test_purge_drops_waiting_messages_but_not_leased_ones(self, transport: Transport) -> None:
        self.publish(transport, "q", "leased", "r1", "r2")
        self.publish(transport, "q", "delayed", not_before=time.time() + 60)
        self.publish(transport, "other", "kept")
        [leased] = transport.fetch(["q"], 1, 1.0)
        assert transport.qsize("q") == 4
        assert transport.purge("q") == 3
        assert transport.qsize("q") == 1
        assert transport.qsize("other") == 1
        assert transport.ack([leased]) == [True]
        assert transport.purge("never-used") == 0
        assert transport.qsize("never-used") == 0

    def test_declare_then_use(self, transport: Transport) -> None:
        transport.declare("fresh")
        assert transport.qsize("fresh") == 0
        self.publish(transport, "fresh", "m")
        assert transport.qsize("fresh") == 1

    def test_transports_on_one_broker_share_queues(self, make_transport: MakeTransport) -> None:
        producer, consumer = make_transport(), make_transport()
        self.publish(producer, "q", "m")
        assert tags(consumer.fetch(["q"], 1, 1.0)) == ["m"]
        dead_id = producer.dead_letter("q", message("d"), "why")
        assert consumer.dead_letter_get(dead_id) is not None

    def test_threads_sharing_a_transport_get_each_message_once(
            self, make_transport: MakeTransport) -> None:
        shared, producer = make_transport(visibility_timeout=60), make_transport()
        names = [f"m{i}" for i in range(300)]
        seen: list[str] = []
        acked: list[bool] = []
        lock = threading.Lock()

        def consume() -> None:
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 0.3:
                got = shared.fetch(["q"], 7, 0.05)
                if got:
                    idle_since = time.monotonic()
                    result = shared.ack(got)
                    with lock:
                        seen.extend(tags(got))
                        acked.extend(result)

        consumers = [threading.Thread(target=consume) for _ in range(4)]
        for thread in consumers:
            thread.start()
        try:
            for start in range(0, len(names), 50):
                producer.publish([Outgoing("q", message(n)) for n in names[start:start + 50]])
        finally:
            for thread in consumers:
                thread.join()
        assert sorted(seen) == sorted(names)
        assert all(acked) and len(acked) == len(names)
        assert shared.qsize("q") == 0

    def test_close_is_idempotent(self, make_transport: MakeTransport) -> None:
        transport = make_transport()
        self.publish(transport, "q", "m")
        transport.close()
        transport.close()
