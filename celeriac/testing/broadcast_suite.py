"""The broadcast conformance suite: kombu's fanout semantics every ``Broadcast`` broker must keep.

Layer: testing (imports pytest). ``transport_suite.contracts_for`` adds ``BroadcastContract`` for
a transport declaring ``Broadcast``; or subclass it as ``Test...`` with a ``transport_factory``
fixture. Its tests are named ``test_broadcast_*`` so they never shadow the core suite's.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from ..protocol.message import Message
from ..transport.base import Broadcast, Subscription
from .transport_suite import ContractBase, awkward_message

MakeBroadcast = Callable[..., Any]  # (**options) -> a transport that is also a Broadcast
Subscribe = Callable[..., Subscription]


def note(tag: str, **headers: Any) -> Message:
    """A small event-like message whose body and ``id`` header are ``tag``."""
    return Message(tag.encode(), headers={"id": tag, **headers}, properties={"correlation_id": tag})


def collect(subscription: Subscription, count: int, timeout: float = 5.0) -> list[Message]:
    """Messages from ``subscription`` until ``count`` arrived or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    out: list[Message] = []
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        out.extend(subscription.get(remaining))
    return out


def bodies(messages: list[Message]) -> list[str]:
    return [m.body.decode() for m in messages]


class BroadcastContract(ContractBase):
    """Checks shared by every ``Broadcast`` implementation.

    A subclass provides the fixture ``transport_factory``: a callable ``(**options) -> transport``
    returning a NEW transport object on the SAME broker every time it is called within one test
    (two objects stand for two processes).
    """

    #: seconds a negative check ("nothing more arrives") waits
    quiet = 0.15

    @pytest.fixture
    def subscribe(self, make_transport: MakeBroadcast) -> Iterator[Subscribe]:
        """``subscribe(exchange, binding="#", transport=None)``, on a new transport by default;
        every subscription is closed after the test."""
        made: list[Subscription] = []

        def sub(exchange: str, binding: str = "#", transport: Any = None) -> Subscription:
            subscription: Subscription = (transport or make_transport()).subscribe(exchange,
                                                                                  binding)
            made.append(subscription)
            return subscription

        yield sub
        for subscription in made:
            subscription.close()

    @pytest.fixture
    def exchange(self) -> str:
        """An exchange name no other test uses (Redis channels are server-wide)."""
        return f"bcast-{uuid.uuid4().hex[:12]}"

    # ---- fanout -----------------------------------------------------------------------------
    def test_broadcast_declares_the_capability(self, make_transport: MakeBroadcast) -> None:
        assert isinstance(make_transport(), Broadcast)

    def test_broadcast_every_subscriber_gets_every_message_in_order(
            self, make_transport: MakeBroadcast, subscribe: Subscribe, exchange: str) -> None:
        publisher = make_transport()
        subscribers = [subscribe(exchange), subscribe(exchange, "#"),
                       subscribe(exchange, transport=publisher)]  # a publisher hears itself too
        names = [f"m{i}" for i in range(6)]
        for name in names:
            publisher.broadcast(exchange, note(name), "worker.heartbeat")
        for subscription in subscribers:
            assert bodies(collect(subscription, len(names))) == names
            assert subscription.get(self.quiet) == []

    def test_broadcast_nobody_subscribed_nobody_gets_it(self, make_transport: MakeBroadcast,
                                              subscribe: Subscribe, exchange: str) -> None:
        publisher = make_transport()
        publisher.broadcast(exchange, note("before"))
        late = subscribe(exchange)
        assert late.get(self.quiet) == []
        publisher.broadcast(exchange, note("after"))
        assert bodies(collect(late, 1)) == ["after"]
        assert late.get(self.quiet) == []

    def test_broadcast_a_count_it_gives_never_misses_a_receiver(
            self, make_transport: MakeBroadcast, subscribe: Subscribe, exchange: str) -> None:
        """A broker that says how many got a message (``broadcast`` returns an int) may count
        too many, never too few: the event dispatcher stops sending to nobody on a 0."""
        publisher = make_transport()
        if publisher.broadcast(exchange, note("alone"), "task.multi") is None:
            pytest.skip("this broker does not say how many got a broadcast")
        assert publisher.broadcast(exchange, note("alone-again"), "task.multi") == 0
        listeners = [subscribe(exchange, "#"), subscribe(exchange, "task.*")]
        other = subscribe(exchange, "worker.#")
        assert publisher.broadcast(exchange, note("heard"), "task.multi") >= 2
        for subscription in listeners:
            assert bodies(collect(subscription, 1)) == ["heard"]
        assert other.get(self.quiet) == []

    def test_broadcast_bindings_are_amqp_topic_patterns(self, make_transport: MakeBroadcast,
                                             subscribe: Subscribe, exchange: str) -> None:
        keys = ["worker.heartbeat", "worker.online", "task.sent", "worker.a.b", "worker", ""]
        expected = {
            "#": keys,
            "worker.*": ["worker.heartbeat", "worker.online"],
            "worker.heartbeat": ["worker.heartbeat"],
            "worker.#": ["worker.heartbeat", "worker.online", "worker.a.b", "worker"],
            "*.online": ["worker.online"],
            "": [""],
        }
        subscriptions = {binding: subscribe(exchange, binding) for binding in expected}
        publisher = make_transport()
        for key in keys:
            publisher.broadcast(exchange, note(key or "<empty>"), key)
        for binding, wanted in expected.items():
            got = collect(subscriptions[binding], len(wanted))
            assert bodies(got) == [key or "<empty>" for key in wanted], binding
            assert subscriptions[binding].get(self.quiet) == [], binding

    def test_broadcast_exchanges_are_isolated(self, make_transport: MakeBroadcast,
                                             subscribe: Subscribe,
                                    exchange: str) -> None:
        names = [exchange, f"{exchange}.more", f"{exchange}more"]  # names sharing a prefix
        subscriptions = [subscribe(name) for name in names]
        publisher = make_transport()
        for name in names:
            publisher.broadcast(name, note(f"to {name}"), "k")
            publisher.broadcast(name, note(f"to {name} bare"))
        for name, subscription in zip(names, subscriptions):
            assert bodies(collect(subscription, 2)) == [f"to {name}", f"to {name} bare"]
            assert subscription.get(self.quiet) == []

    # ---- the message ------------------------------------------------------------------------
    def test_broadcast_message_comes_back_byte_for_byte(self, make_transport: MakeBroadcast,
                                              subscribe: Subscribe, exchange: str) -> None:
        sent = awkward_message()
        first, second = subscribe(exchange), subscribe(exchange, "control.*")
        make_transport().broadcast(exchange, sent, "control.ping")
        for subscription in (first, second):
            [got] = collect(subscription, 1)
            assert got == sent
            assert isinstance(got.body, bytes)

    def test_broadcast_a_receiver_changing_its_copy_changes_no_other(
            self, make_transport: MakeBroadcast, subscribe: Subscribe, exchange: str) -> None:
        first, second = subscribe(exchange), subscribe(exchange)
        make_transport().broadcast(exchange, note("m", nested={"a": [1]}))
        [mine] = collect(first, 1)
        mine.headers["nested"]["a"].append(2)
        mine.properties["correlation_id"] = "tampered"
        [theirs] = collect(second, 1)
        assert theirs == note("m", nested={"a": [1]})

    def test_broadcast_an_unserializable_message_is_refused(self, make_transport: MakeBroadcast,
                                                  subscribe: Subscribe, exchange: str) -> None:
        subscription = subscribe(exchange)
        publisher = make_transport()
        with pytest.raises(TypeError):
            publisher.broadcast(exchange, Message(b"x", headers={"id": object()}))
        publisher.broadcast(exchange, note("after"))  # still usable, and nothing half-sent
        assert bodies(collect(subscription, 1)) == ["after"]
        assert subscription.get(self.quiet) == []

    # ---- lifetime and waiting ---------------------------------------------------------------
    def test_broadcast_close_stops_delivery(self, make_transport: MakeBroadcast,
                                           subscribe: Subscribe,
                                  exchange: str) -> None:
        closing, staying = subscribe(exchange), subscribe(exchange)
        closing.close()
        make_transport().broadcast(exchange, note("m"))
        assert bodies(collect(staying, 1)) == ["m"]
        started = time.monotonic()
        assert closing.get(self.quiet) == []
        assert time.monotonic() - started < self.quiet + 1.0
        closing.close()  # a second close is harmless

    def test_broadcast_get_waits_for_the_first_message(self, make_transport: MakeBroadcast,
                                             subscribe: Subscribe, exchange: str) -> None:
        subscription = subscribe(exchange)
        publisher = make_transport()
        timer = threading.Timer(0.2, publisher.broadcast, args=(exchange, note("late")))
        started = time.monotonic()
        timer.start()
        try:
            got = subscription.get(10.0)
        finally:
            timer.join()
        assert bodies(got) == ["late"]
        assert 0.15 <= time.monotonic() - started < 3.0

    def test_broadcast_get_times_out_with_nothing_and_without_spinning(self, subscribe: Subscribe,
                                                             exchange: str) -> None:
        subscription = subscribe(exchange)
        assert subscription.get(0) == []
        started, cpu = time.monotonic(), time.thread_time()
        assert subscription.get(0.5) == []
        elapsed, used = time.monotonic() - started, time.thread_time() - cpu
        assert 0.45 <= elapsed < 1.5
        assert used < 0.25, f"get() used {used:.3f} s of CPU waiting 0.5 s"

    def test_broadcast_concurrent_publishers_lose_nothing(self, make_transport: MakeBroadcast,
                                                subscribe: Subscribe, exchange: str) -> None:
        subscription = subscribe(exchange)
        publisher = make_transport()

        def send(thread: int) -> None:
            for i in range(25):
                publisher.broadcast(exchange, note(f"{thread}:{i}"), f"t.{thread}")

        threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        got = bodies(collect(subscription, 100))
        assert sorted(got) == sorted(f"{t}:{i}" for t in range(4) for i in range(25))
        for t in range(4):  # each publisher's messages in its own order
            assert [g for g in got if g.startswith(f"{t}:")] == [f"{t}:{i}" for i in range(25)]
        assert subscription.get(self.quiet) == []
