"""The pure arithmetic of broker-side delays (Celery 5.5+'s native delayed delivery topology)."""

from __future__ import annotations

import pytest

from celeriac.protocol.entities import Queue
from celeriac.transport.amqp.delayed import (
    DELIVERY_EXCHANGE,
    FIRST_EXCHANGE,
    MAX_DELAY,
    delay_of,
    delay_routing_key,
    delivery_binding_key,
    is_quorum,
    level_name,
    queue_route,
    queue_route_usable,
    route_through,
    strip_delay,
    topology,
)


def test_routing_key_is_28_binary_digits_then_the_key() -> None:
    assert delay_routing_key(3, "celery") == "0." * 26 + "1.1.celery"
    assert delay_routing_key(1, "a.b") == "0." * 27 + "1.a.b"
    assert delay_routing_key(MAX_DELAY, "k") == "1." * 28 + "k"
    assert delay_routing_key(2 ** 27, "k") == "1." + "0." * 27 + "k"


def test_a_key_that_already_has_delay_bits_gets_new_ones_not_more() -> None:
    once = delay_routing_key(5, "task.default")
    again = delay_routing_key(9, once)
    assert again == delay_routing_key(9, "task.default")
    assert strip_delay(again) == "task.default"
    assert strip_delay("1.0.task") == "1.0.task"  # too few digits: not a delay prefix
    assert (delay_of(once), delay_of(again), delay_of("task.default")) == (5, 9, None)


@pytest.mark.parametrize("seconds", [0, -1, MAX_DELAY + 1])
def test_delays_outside_28_bits_are_refused(seconds: int) -> None:
    with pytest.raises(ValueError):
        delay_routing_key(seconds, "k")


def test_an_empty_routing_key_is_refused() -> None:
    with pytest.raises(ValueError):
        delay_routing_key(1, "")


def test_levels_and_bindings_are_celerys() -> None:
    topo = topology()
    assert (level_name(27), level_name(0), FIRST_EXCHANGE) == (
        "celery_delayed_27", "celery_delayed_0", "celery_delayed_27")
    assert topo.exchanges == [level_name(n) for n in range(27, -1, -1)] + [DELIVERY_EXCHANGE]
    queues = dict(topo.queues)
    assert queues["celery_delayed_27"] == {
        "x-queue-type": "quorum", "x-overflow": "reject-publish",
        "x-message-ttl": 2 ** 27 * 1000, "x-dead-letter-exchange": "celery_delayed_26",
        "x-dead-letter-strategy": "at-least-once"}
    assert queues["celery_delayed_0"]["x-dead-letter-exchange"] == DELIVERY_EXCHANGE
    assert queues["celery_delayed_0"]["x-message-ttl"] == 1000
    assert "x-dead-letter-strategy" not in dict(topology("classic").queues)["celery_delayed_3"]
    assert ("celery_delayed_27", "celery_delayed_27", "1.#") in topo.queue_bindings
    assert ("celery_delayed_0", "celery_delayed_0", "*." * 27 + "1.#") in topo.queue_bindings
    assert ("celery_delayed_26", "celery_delayed_27", "0.#") in topo.exchange_bindings
    assert (DELIVERY_EXCHANGE, "celery_delayed_0", "*." * 27 + "0.#") in topo.exchange_bindings
    assert len(topo.queue_bindings) == 28 and len(topo.exchange_bindings) == 28
    with pytest.raises(ValueError):
        topology("stream")


@pytest.mark.parametrize("seconds", [1, 2, 3, 4, 7, 60, 3600, 86_400 + 17, MAX_DELAY])
def test_a_message_waits_its_delay_exactly_and_leaves_by_the_delivery_exchange(
        seconds: int) -> None:
    topo = topology()
    ttl = {name: args["x-message-ttl"] for name, args in topo.queues}
    waits, out = route_through(delay_routing_key(seconds, "celery"), topo)
    assert out == DELIVERY_EXCHANGE
    assert sum(ttl[q] for q in waits) == seconds * 1000
    assert len(waits) == bin(seconds).count("1")


def test_delivery_bindings_and_celeriacs_own_route() -> None:
    assert delivery_binding_key("celery") == "#.celery"
    assert delivery_binding_key("task.#") == "#.task.#"
    assert delivery_binding_key("#.x") == "#.x"
    assert queue_route("celery") == "celeriac-queue:celery"
    assert queue_route("a.b%c") == "celeriac-queue:a%2Eb%25c"  # one word: no binding splits it
    assert "." not in queue_route("feed.tasks.high")
    assert queue_route_usable("celery") and not queue_route_usable("")
    assert not queue_route_usable("x" * 200)  # the key would pass AMQP's 255 bytes


def test_quorum_is_the_queue_type_argument() -> None:
    assert is_quorum(Queue("q", queue_arguments={"x-queue-type": "quorum"}))
    assert not is_quorum(Queue("q"))
    assert not is_quorum(Queue("q", queue_arguments={"x-queue-type": "classic"}))
