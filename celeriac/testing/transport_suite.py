"""The transport conformance suites: the delivery semantics every broker must keep, as pytest tests.

Layer: testing (imports pytest). One suite per part of ``celeriac.transport.base``:
``CoreContract`` for what every broker does, and ``LeasesContract``, ``DeferralContract``,
``DeadLetterContract``, ``SharedConnectionContract`` (and
``celeriac.testing.broadcast_suite.BroadcastContract``) for the capabilities a broker may declare.
``contracts_for(transport)`` names the suites for what a transport declares, so a transport that
lacks a capability is never asked for it::

    class TestMyTransport(*contracts_for(MyTransport())):
        @pytest.fixture
        def transport_factory(self) -> MakeTransport: ...

Name the subclass ``Test...`` and give it a ``transport_factory`` fixture (and, for
``SharedConnectionContract``, ``matching_backend`` and ``other_backend``); pytest then runs every
check below against that transport. ``TransportContract`` is the all-in-one suite of before
(core, leases, deferral, dead letters), kept for subclasses written against it. Leases are kept
short (``lease`` seconds) so expiry tests stay fast.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Protocol, TypeVar

import pytest

from ..backends.base import ResultBackend, StagedWrites
from ..protocol.entities import Exchange, Queue
from ..protocol.message import Message
from ..transport.base import (
    DeadLetterStore,
    Deferral,
    Delivery,
    Leases,
    Outgoing,
    SharedConnectionSettling,
    Transport,
    capabilities_of,
)

_T = TypeVar("_T")


class LeasingTransport(Transport, Leases, Protocol):
    """A transport that declares ``Leases``."""


class DeferringTransport(Transport, Deferral, Protocol):
    """A transport that declares ``Deferral``."""


class DeadLetteringTransport(Transport, DeadLetterStore, Protocol):
    """A transport that declares ``DeadLetterStore``."""


class SettlingTransport(Transport, SharedConnectionSettling, Protocol):
    """A transport that declares ``SharedConnectionSettling``."""


MakeTransport = Callable[..., Transport]
MakeLeasing = Callable[..., LeasingTransport]
MakeDeferring = Callable[..., DeferringTransport]
MakeDeadLettering = Callable[..., DeadLetteringTransport]
MakeSettling = Callable[..., SettlingTransport]


def message(tag: str, *, priority: int | None = None, **headers: Any) -> Message:
    """A small task-like message whose body and ``id`` header are ``tag``."""
    properties: dict[str, Any] = {"correlation_id": tag}
    if priority is not None:
        properties["priority"] = priority
    return Message(tag.encode(), headers={"id": tag, "task": "tests.noop", **headers},
                   properties=properties)


def awkward_message() -> Message:
    """A message every byte and value of which must come back unchanged: binary body,
    non-ASCII and nested headers, properties a transport might want for itself."""
    return Message(
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


def tags(deliveries: list[Delivery]) -> list[str]:
    return [d.message.body.decode() for d in deliveries]


def in_another_thread(action: Callable[[], _T], timeout: float = 10.0) -> _T:
    """``action()`` run on a thread of its own (so on that thread's own connection), its result
    or its exception handed back to the caller."""
    results: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(action())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    if not results:
        raise AssertionError(f"{action!r} did not finish within {timeout} s")
    return results[0]


class ContractBase:
    """The fixtures and helpers every suite here shares; no tests of its own.

    A subclass provides the fixture ``transport_factory``: a callable ``(**options) -> Transport``
    returning a NEW transport object on the SAME broker every time it is called within one test
    (two objects stand for two workers), and a broker that starts empty for each test. Every
    transport is opened with ``visibility_timeout=lease`` unless the test says otherwise (a
    broker without leases ignores the option, as it ignores any option it does not know).
    """

    #: lease length, in seconds, of the transports the tests open (brokers with ``Leases``)
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

    def take_over(self, holder: Transport, thief: Transport, delivery: Delivery) -> Delivery:
        """Make ``holder``'s ``delivery`` stale: afterwards ``thief`` holds the message.

        With ``Leases`` the holder's lease simply runs out (a stalled or killed worker) and the
        thief's is then renewed for a minute, so the test can settle the message without racing
        the clock; otherwise the holder gives the message back. Returns the thief's delivery.
        (The thief must have a short lease too: on some brokers the fetching side decides when
        a lease has run out, as kombu's Redis transport does.)
        """
        if not isinstance(holder, Leases):
            assert holder.reject(delivery, requeue=True) is True
        got = thief.fetch([delivery.queue], 1, max(3.0, 15 * self.lease))
        assert tags(got) == tags([delivery]), "the message did not come back for another holder"
        if isinstance(thief, Leases):
            thief.extend_lease(got, 60)
        return got[0]


# ---- the core -----------------------------------------------------------------------------------
class CoreContract(ContractBase):
    """What every broker does (``transport.base.Transport``): declare, publish, fetch, ack,
    reject, purge and count, in order and byte for byte."""

    # ---- shape ------------------------------------------------------------------------------
    def test_implements_the_protocol_and_takes_options(self, make_transport: MakeTransport) -> None:
        transport = make_transport(visibility_timeout=12.5, polling_interval=0.01,
                                   an_option_nobody_knows=True)
        assert isinstance(transport, Transport)

    def test_published_message_comes_back_byte_for_byte(self, transport: Transport) -> None:
        sent = awkward_message()
        transport.publish([Outgoing("q", sent)])
        [got] = transport.fetch(["q"], 10, 1.0)
        assert got.message == sent
        assert isinstance(got.message.body, bytes)
        assert (got.queue, got.delivery_count, got.redelivered) == ("q", 1, False)

    def test_a_text_body_in_another_encoding_comes_back_byte_for_byte(
            self, transport: Transport) -> None:
        """A broker client must not decode bodies by ``content_encoding`` (py-amqp does unless
        told not to, and then celeriac would re-encode it as UTF-8)."""
        sent = Message('[["café"], {}, {}]'.encode("latin-1"), content_type="application/json",
                       content_encoding="latin-1", headers={"id": "t-2", "task": "tasks.add"})
        transport.publish([Outgoing("q", sent)])
        [got] = transport.fetch(["q"], 10, 1.0)
        assert got.message.body == sent.body and got.message.content_encoding == "latin-1"

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

    # ---- how it was sent --------------------------------------------------------------------
    def test_exchange_and_routing_key_come_back_with_the_message(self, transport: Transport
                                                                 ) -> None:
        transport.publish([Outgoing("q", message("m"), exchange="ex", routing_key="rk")])
        [got] = transport.fetch(["q"], 1, 1.0)
        assert (tags([got]), got.queue, got.exchange, got.routing_key) == (["m"], "q", "ex", "rk")
        assert got.delivery_info == {"exchange": "ex", "routing_key": "rk",  # Celery's keys
                                     "priority": got.message.properties.get("priority"),
                                     "redelivered": False}
        assert transport.reject(got, requeue=True)  # a redelivery still says how it was sent
        [again] = transport.fetch(["q"], 1, 1.0)
        assert (again.exchange, again.routing_key) == ("ex", "rk")
        assert again.delivery_info["redelivered"] is True
        assert transport.ack([again]) == [True]

    def test_a_plain_publish_goes_to_the_default_exchange(self, transport: Transport) -> None:
        transport.publish([Outgoing("q", message("m"))])
        [got] = transport.fetch(["q"], 1, 1.0)
        assert got.exchange == ""
        assert got.routing_key in (None, "q")
        assert got.delivery_info == {"exchange": "", "routing_key": "q",
                                     "priority": got.message.properties.get("priority"),
                                     "redelivered": False}

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

    # ---- settling ---------------------------------------------------------------------------
    def test_ack_is_batched_and_fenced(self, transport: Transport) -> None:
        assert transport.ack([]) == []
        self.publish(transport, "q", "a", "b", "c")
        got = transport.fetch(["q"], 3, 1.0)
        assert transport.ack(got[:1]) == [True]
        assert transport.ack(got) == [False, True, True]
        assert transport.qsize("q") == 0

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

    def test_a_holder_that_gave_a_message_back_is_fenced_out(self, make_transport: MakeTransport
                                                             ) -> None:
        first, second = make_transport(), make_transport()
        self.publish(first, "q", "m")
        [given_back] = first.fetch(["q"], 1, 1.0)
        assert first.reject(given_back, requeue=True)
        [taken] = second.fetch(["q"], 1, 1.0)
        assert first.ack([given_back]) == [False]
        assert first.reject(given_back, requeue=False) is False
        assert second.qsize("q") == 1
        assert second.ack([taken]) == [True]

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

    def test_declare_takes_a_queue_entity(self, transport: Transport) -> None:
        transport.declare(Queue("entity"))
        transport.declare(Queue("bound", Exchange("ex"), routing_key="rk"))
        assert (transport.qsize("entity"), transport.qsize("bound")) == (0, 0)
        transport.publish([Outgoing("entity", message("m")),
                           Outgoing("bound", message("b"), exchange="ex", routing_key="rk")])
        assert tags(transport.fetch(["entity"], 5, 1.0)) == ["m"]
        [bound] = transport.fetch(["bound"], 5, 1.0)
        assert (tags([bound]), bound.exchange, bound.routing_key) == (["b"], "ex", "rk")

    # ---- bindings: a publish to a named exchange goes where the bindings take it -------------
    def test_topic_exchange_routes_by_binding_key(self, make_transport: MakeTransport) -> None:
        """The issue-12 example: two queues on one topic exchange; a producer in another
        process (another transport) routes through the bindings a worker declared."""
        worker, producer = make_transport(), make_transport()
        tasks = Exchange("tasks", "topic")
        worker.declare(Queue("default", tasks, "task.#"))
        worker.declare(Queue("feed_tasks", tasks, "feed.#"))
        producer.publish([Outgoing("", message("a"), exchange="tasks", routing_key="feed.#"),
                          Outgoing("", message("b"), exchange="tasks", routing_key="feed.rss"),
                          Outgoing("", message("c"), exchange="tasks", routing_key="task.x"),
                          Outgoing("", message("lost"), exchange="tasks", routing_key="other")])
        feed = worker.fetch(["feed_tasks"], 5, 1.0)
        assert sorted(tags(feed)) == ["a", "b"]
        assert {(d.queue, d.exchange, d.routing_key) for d in feed} == {
            ("feed_tasks", "tasks", "feed.#"), ("feed_tasks", "tasks", "feed.rss")}
        [default] = worker.fetch(["default"], 5, 1.0)
        assert (tags([default]), default.delivery_info["routing_key"]) == (["c"], "task.x")
        assert worker.qsize("default") + worker.qsize("feed_tasks") == 3  # nothing else landed

    def test_direct_exchange_copies_to_every_queue_bound_with_the_key(
            self, make_transport: MakeTransport) -> None:
        worker, producer = make_transport(), make_transport()
        media = Exchange("media")
        for name, key in (("images", "img"), ("thumbs", "img"), ("videos", "vid")):
            worker.declare(Queue(name, media, key))
        producer.publish([Outgoing("", message("i"), exchange="media", routing_key="img")])
        assert (tags(worker.fetch(["images"], 5, 1.0)), tags(worker.fetch(["thumbs"], 5, 1.0)),
                worker.qsize("videos")) == (["i"], ["i"], 0)
        producer.publish([Outgoing("", message("v"), exchange="media", routing_key="vid")])
        assert tags(worker.fetch(["videos"], 5, 1.0)) == ["v"]

    def test_fanout_queues_each_get_a_copy(self, make_transport: MakeTransport) -> None:
        """A consumer that declared queues bound to a fanout exchange gets every broadcast
        published after that into each of them (kombu's fanout; Redis: PUBLISH)."""
        one, two, producer = make_transport(), make_transport(), make_transport()
        fan = Exchange("fan", "fanout")
        one.declare(Queue("fan-1", fan, ""))
        two.declare(Queue("fan-2", fan, ""))
        producer.publish([Outgoing("", message("all"), exchange="fan", routing_key="k",
                                   exchange_type="fanout")])
        [got1] = one.fetch(["fan-1"], 5, 2.0)
        [got2] = two.fetch(["fan-2"], 5, 2.0)
        assert tags([got1, got2]) == ["all", "all"]
        assert (got1.exchange, got2.exchange) == ("fan", "fan")
        assert one.ack([got1]) == [True] and two.ack([got2]) == [True]
        one.close()
        two.close()

    def test_transports_on_one_broker_share_queues(self, make_transport: MakeTransport) -> None:
        producer, consumer = make_transport(), make_transport()
        self.publish(producer, "q", "m")
        assert tags(consumer.fetch(["q"], 1, 1.0)) == ["m"]
        assert producer.qsize("q") == 1

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


# ---- Leases -------------------------------------------------------------------------------------
class LeasesContract(ContractBase):
    """``Leases``: a fetched message is leased; a lease that is not renewed expires and the
    message comes back, and the holder of the expired lease is fenced out."""

    def test_declares_leases(self, make_transport: MakeLeasing) -> None:
        transport = make_transport(visibility_timeout=12.5)
        assert isinstance(transport, Leases)
        assert transport.visibility_timeout == 12.5
        assert make_transport().visibility_timeout == self.lease

    def test_expired_lease_is_delivered_again(self, transport: LeasingTransport) -> None:
        self.publish(transport, "q", "m")
        leased_at = time.time()  # taken before the fetch: the lease cannot start earlier
        [first] = transport.fetch(["q"], 1, 1.0)
        assert transport.fetch(["q"], 1, 0) == []  # leased: invisible
        [second] = transport.fetch(["q"], 1, 3.0)  # comes back after the lease, by itself
        assert time.time() - leased_at >= self.lease - 0.05
        assert (tags([second]), second.delivery_count, second.redelivered) == (["m"], 2, True)
        assert second.delivery_info["redelivered"] is True
        assert second.delivery_count == 2
        assert transport.qsize("q") == 1

    def test_stale_lease_holder_is_fenced_out(self, make_transport: MakeLeasing) -> None:
        slow, fast = make_transport(), make_transport()
        self.publish(slow, "q", "m")
        [stale] = slow.fetch(["q"], 1, 1.0)
        [fresh] = fast.fetch(["q"], 1, 3.0)  # after slow's lease expired
        assert fresh.delivery_count == 2
        assert slow.ack([stale]) == [False]
        assert slow.reject(stale, requeue=True) is False
        assert slow.reject(stale, requeue=False) is False
        slow.extend_lease([stale], 60)
        assert fast.qsize("q") == 1
        # the stale renewal did not stretch fast's lease: the message comes back on time
        [third] = fast.fetch(["q"], 1, 3.0)
        assert third.delivery_count == 3
        assert fast.ack([fresh]) == [False]
        assert fast.ack([third]) == [True]
        assert fast.qsize("q") == 0

    def test_expired_lease_not_yet_taken_can_still_be_acked(self, transport: LeasingTransport
                                                            ) -> None:
        self.publish(transport, "q", "m")
        [late] = transport.fetch(["q"], 1, 1.0)
        time.sleep(self.lease + 0.05)
        assert transport.ack([late]) == [True]
        assert transport.fetch(["q"], 1, 0) == []

    def test_extend_lease_keeps_a_long_task_from_redelivery(self, transport: LeasingTransport
                                                            ) -> None:
        self.publish(transport, "q", "long", "other")
        [long_one] = transport.fetch(["q"], 1, 1.0)
        transport.extend_lease([long_one], 0.6)
        time.sleep(self.lease + 0.05)
        assert tags(transport.fetch(["q"], 5, 0)) == ["other"]  # "long" still leased
        transport.extend_lease([long_one])  # default: visibility_timeout from now
        time.sleep(self.lease / 2)
        assert transport.fetch(["q"], 5, 0) == []
        assert transport.ack([long_one]) == [True]

    def test_delivery_counts_keep_growing_across_lost_leases(self, transport: LeasingTransport
                                                             ) -> None:
        self.publish(transport, "q", "m")
        counts: list[tuple[int, bool]] = []
        got: list[Delivery] = []
        for _ in range(3):
            got = transport.fetch(["q"], 1, 3.0)
            counts.extend((d.delivery_count, d.redelivered) for d in got)
        assert counts == [(1, False), (2, True), (3, True)]
        assert transport.reject(got[0], requeue=True)  # a requeue after lost leases counts on
        [again] = transport.fetch(["q"], 1, 1.0)
        assert again.delivery_count == 4
        assert transport.ack([again]) == [True]


# ---- Deferral -----------------------------------------------------------------------------------
class DeferralContract(ContractBase):
    """``Deferral``: a held message can wait for its ETA outside the lease clock."""

    def test_declares_deferral(self, transport: DeferringTransport) -> None:
        assert isinstance(transport, Deferral)

    def test_defer_holds_the_message_outside_the_lease(self, transport: DeferringTransport
                                                       ) -> None:
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

    def test_defer_by_a_holder_that_lost_the_message_is_fenced(
            self, make_transport: MakeDeferring) -> None:
        slow, fast = make_transport(), make_transport()
        self.publish(slow, "q", "m")
        [stale] = slow.fetch(["q"], 1, 1.0)
        fresh = self.take_over(slow, fast, stale)
        assert slow.defer(stale, time.time() + 60) is False
        assert fast.fetch(["q"], 1, 0) == []  # fast's hold is untouched
        assert fast.ack([fresh]) == [True]
        assert fast.defer(fresh, time.time() + 60) is False  # acked: nothing left to defer
        assert fast.qsize("q") == 0


# ---- dead letters -------------------------------------------------------------------------------
class DeadLetterContract(ContractBase):
    """``DeadLetterStore``: messages that can never run are kept byte for byte with a reason."""

    def test_declares_dead_letter_store(self, transport: DeadLetteringTransport) -> None:
        assert isinstance(transport, DeadLetterStore)

    def test_dead_letters_keep_the_message_and_reason(self, transport: DeadLetteringTransport
                                                      ) -> None:
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

    def test_dead_lettering_a_delivery_removes_it_at_once(self, transport: DeadLetteringTransport
                                                          ) -> None:
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

    def test_dead_lettering_a_stale_delivery_stores_nothing(self, make_transport: MakeDeadLettering
                                                            ) -> None:
        slow, fast = make_transport(), make_transport()
        self.publish(slow, "q", "m")
        [stale] = slow.fetch(["q"], 1, 1.0)
        fresh = self.take_over(slow, fast, stale)
        assert slow.dead_letter("q", stale.message, "poison", stale) == ""
        assert fast.dead_letters() == []
        assert fast.ack([fresh]) == [True]

    def test_transports_on_one_broker_share_dead_letters(self, make_transport: MakeDeadLettering
                                                         ) -> None:
        producer, consumer = make_transport(), make_transport()
        dead_id = producer.dead_letter("q", message("d"), "why")
        letter = consumer.dead_letter_get(dead_id)
        assert letter is not None and letter.message == message("d")
        assert consumer.dead_letter_delete([dead_id]) == 1
        assert producer.dead_letters() == []


# ---- settling on a connection shared with the result store --------------------------------------
class SharedConnectionContract(ContractBase):
    """``SharedConnectionSettling``: acks and fetches staged on this thread's connection go out,
    in the order they were staged, at the thread's ``flush``, and only that thread's.

    A subclass also provides the fixtures ``matching_backend`` (a result store that shares the
    transports' connection: same broker, same database) and ``other_backend`` (one that does
    not). What is staged is only ever looked at from another thread: on a real connection any
    round trip of the staging thread carries the staged commands along.
    """

    @pytest.fixture
    def make_settling(self, make_transport: MakeTransport) -> Iterator[MakeSettling]:
        """``make_transport`` for these tests: what a test that failed half-way left staged on
        this thread's connection is flushed afterwards, so the next test does not send it."""
        made: list[SettlingTransport] = []

        def make(**options: Any) -> SettlingTransport:
            transport = make_transport(**options)
            assert isinstance(transport, SharedConnectionSettling)
            made.append(transport)
            return transport

        yield make
        for transport in made:
            with contextlib.suppress(Exception):
                transport.flush()

    @pytest.fixture
    def settling(self, make_settling: MakeSettling) -> SettlingTransport:
        return make_settling()

    def test_declares_shared_connection_settling(self, settling: SettlingTransport) -> None:
        assert isinstance(settling, SharedConnectionSettling)

    def test_shares_its_connection_only_with_the_matching_store(
            self, settling: SettlingTransport, matching_backend: ResultBackend,
            other_backend: ResultBackend) -> None:
        assert settling.shares_connection_with(matching_backend) is True
        assert settling.shares_connection_with(other_backend) is False
        assert settling.shares_connection_with(object()) is False

    def test_ack_later_lands_only_at_flush(self, settling: SettlingTransport) -> None:
        self.publish(settling, "q", "m")
        [d] = settling.fetch(["q"], 1, 1.0)
        replies: list[list[bool] | None] = []
        settling.ack_later([d], replies.append)
        assert replies == []
        assert in_another_thread(lambda: settling.qsize("q")) == 1
        settling.flush()
        assert replies == [[True]]
        assert in_another_thread(lambda: settling.qsize("q")) == 0
        settling.flush()  # nothing is sent twice
        assert replies == [[True]]

    def test_ack_later_without_a_callback(self, settling: SettlingTransport) -> None:
        self.publish(settling, "q", "m0", "m1")
        got = settling.fetch(["q"], 2, 1.0)
        settling.ack_later(got)
        assert in_another_thread(lambda: settling.qsize("q")) == 2
        settling.flush()
        assert in_another_thread(lambda: settling.qsize("q")) == 0

    def test_on_reply_says_which_acks_were_fenced(self, make_settling: MakeSettling) -> None:
        slow, fast = make_settling(), make_settling()
        self.publish(slow, "q", "lost")
        [stale] = slow.fetch(["q"], 1, 1.0)
        fresh = self.take_over(slow, fast, stale)
        self.publish(slow, "q", "kept")
        [held] = slow.fetch(["q"], 1, 1.0)
        batched: list[list[bool] | None] = []
        alone: list[list[bool] | None] = []
        slow.ack_later([stale, held], batched.append)
        slow.ack_later([stale], alone.append)
        slow.flush()
        assert (batched, alone) == ([[False, True]], [[False]])
        assert fast.qsize("q") == 1  # the stale ack left fast's message alone
        assert fast.ack([fresh]) == [True]

    def test_fetch_later_hands_over_the_deliveries_at_flush(self, settling: SettlingTransport
                                                            ) -> None:
        self.publish(settling, "q", "m0", "m1", "m2")
        batches: list[list[Delivery]] = []
        settling.fetch_later(["q"], 2, batches.append)
        assert batches == []
        settling.flush()
        assert [tags(batch) for batch in batches] == [["m0", "m1"]]
        assert all(d.queue == "q" and d.delivery_count == 1 for d in batches[0])
        assert settling.ack(batches[0]) == [True, True]
        # nothing due: an empty batch, without waiting
        settling.fetch_later(["empty"], 1, batches.append)
        started = time.monotonic()
        settling.flush()
        assert time.monotonic() - started < 0.5
        assert batches[1:] == [[]]
        assert settling.qsize("q") == 1

    def test_staged_operations_run_in_staging_order(self, settling: SettlingTransport) -> None:
        self.publish(settling, "q", "m0")
        [d0] = settling.fetch(["q"], 1, 1.0)
        self.publish(settling, "q", "m1", "m2")
        log: list[tuple[str, Any]] = []
        settling.ack_later([d0], lambda reply: log.append(("ack", reply)))
        settling.fetch_later(["q"], 1, lambda got: log.append(("fetch", tags(got))))
        settling.fetch_later(["q"], 1, lambda got: log.append(("fetch", tags(got))))
        settling.ack_later([d0], lambda reply: log.append(("ack", reply)))
        settling.flush()
        assert log == [("ack", [True]), ("fetch", ["m1"]), ("fetch", ["m2"]), ("ack", [False])]

    def test_a_flush_sends_only_its_own_threads_staged_operations(
            self, settling: SettlingTransport) -> None:
        self.publish(settling, "q", "mine", "theirs", "spare")
        mine, theirs = settling.fetch(["q"], 2, 1.0)
        my_replies: list[list[bool] | None] = []
        their_replies: list[list[bool] | None] = []
        their_fetches: list[list[Delivery]] = []
        errors: list[BaseException] = []
        staged, flushed_here = threading.Event(), threading.Event()

        def other_thread() -> None:
            try:
                settling.ack_later([theirs], their_replies.append)
                settling.fetch_later(["q"], 5, their_fetches.append)
                staged.set()
                flushed_here.wait(10)
                settling.flush()
            except BaseException as exc:
                errors.append(exc)
                staged.set()

        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            assert staged.wait(10)
            settling.ack_later([mine], my_replies.append)
            settling.flush()
            assert (my_replies, their_replies, their_fetches) == ([[True]], [], [])
            assert settling.qsize("q") == 2  # "theirs" still held, "spare" still ready
        finally:
            flushed_here.set()
            thread.join(10)
        assert errors == []
        assert their_replies == [[True]]
        assert [tags(batch) for batch in their_fetches] == [["spare"]]
        assert settling.ack(their_fetches[0]) == [True]
        assert settling.qsize("q") == 0

    def test_a_result_staged_on_the_matching_store_goes_out_before_the_ack(
            self, settling: SettlingTransport, matching_backend: ResultBackend) -> None:
        assert isinstance(matching_backend, StagedWrites)
        store: ResultBackend = matching_backend
        task_id = "shared-connection-task"
        self.publish(settling, "q", task_id)
        [d] = settling.fetch(["q"], 1, 1.0)

        def status() -> str:
            return str(store.get_task_meta(task_id)["status"])

        seen_at_ack: list[str] = []
        matching_backend.stage_results([store.result_write(task_id, 42, "SUCCESS")])
        settling.ack_later([d], lambda reply: seen_at_ack.append(in_another_thread(status)))
        assert in_another_thread(status) == "PENDING"
        settling.flush()
        assert seen_at_ack == ["SUCCESS"]  # the write had landed by the time the ack replied
        assert in_another_thread(lambda: settling.qsize("q")) == 0

    def test_writes_staged_with_an_ack_land_with_it_at_flush(
            self, settling: SettlingTransport, matching_backend: ResultBackend) -> None:
        assert isinstance(matching_backend, StagedWrites)
        store: ResultBackend = matching_backend
        ids = ["shared-batch-0", "shared-batch-1"]
        self.publish(settling, "q", *ids)
        got = settling.fetch(["q"], 2, 1.0)
        writes = [store.result_write(task_id, n, "SUCCESS") for n, task_id in enumerate(ids)]

        def seen() -> tuple[list[Any], int]:
            return ([store.get_task_meta(task_id)["result"] for task_id in ids],
                    settling.qsize("q"))

        settling.ack_with_writes_later(got, lambda: matching_backend.stage_results(writes))
        assert in_another_thread(seen) == ([None, None], 2)
        settling.flush()
        assert in_another_thread(seen) == ([0, 1], 0)
        # with nothing to ack, the writes still go out
        late = store.result_write("shared-batch-2", 2, "SUCCESS")
        settling.ack_with_writes_later([], lambda: matching_backend.stage_results([late]))
        settling.flush()
        assert in_another_thread(lambda: store.get_task_meta("shared-batch-2")["result"]) == 2


# ---- composition --------------------------------------------------------------------------------
class TransportContract(CoreContract, LeasesContract, DeferralContract, DeadLetterContract):
    """The all-in-one suite of before: core, leases, deferral and dead letters (what the memory
    and SQLite brokers have always done). New suites should use ``contracts_for``."""


#: the suite of each capability ``transport.base.capabilities_of`` names, in the order their
#: classes are combined (Broadcast's lives in broadcast_suite, which builds on this module)
_CONTRACTS: dict[str, type] = {
    "Leases": LeasesContract,
    "Deferral": DeferralContract,
    "DeadLetterStore": DeadLetterContract,
    "SharedConnectionSettling": SharedConnectionContract,
}


def contracts_for(transport: Any) -> tuple[type, ...]:
    """The suites ``transport`` must pass: ``CoreContract`` and one per capability it declares.

    Combine them as the bases of one test class: ``class TestX(*contracts_for(t)): ...``; they
    all share ``ContractBase``'s fixtures.
    """
    from .broadcast_suite import BroadcastContract

    declared = capabilities_of(transport)
    contracts: list[type] = [CoreContract]
    contracts += [contract for name, contract in _CONTRACTS.items() if name in declared]
    if "Broadcast" in declared:
        contracts.append(BroadcastContract)
    return tuple(contracts)
