"""Runs the transport conformance suite on the memory and SQLite brokers, plus memory:// naming."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac.protocol.message import Message
from celeriac.testing.transport_suite import MakeTransport, TransportContract
from celeriac.transport import memory, transport_from_url
from celeriac.transport.base import Outgoing
from celeriac.transport.memory import MemoryTransport
from celeriac.transport.sqlite import SQLiteTransport


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def transport_factory(self) -> Iterator[MakeTransport]:
        name = f"contract-{uuid.uuid4().hex}"

        def make(**options: Any) -> MemoryTransport:
            return MemoryTransport.from_url(f"memory://{name}", **options)

        yield make
        memory.reset(name)


class TestSQLiteTransport(TransportContract):
    @pytest.fixture
    def transport_factory(self, tmp_path: Path) -> MakeTransport:
        def make(**options: Any) -> SQLiteTransport:
            return SQLiteTransport.from_url(f"sqlite:///{tmp_path}/broker.db", **options)

        return make


def _put(transport: MemoryTransport, queue: str, body: bytes) -> None:
    transport.publish([Outgoing(queue, Message(body))])


def test_memory_urls_name_shared_brokers() -> None:
    name = f"naming-{uuid.uuid4().hex}"
    try:
        first = transport_from_url(f"memory://{name}", visibility_timeout=5)
        second = MemoryTransport.from_url(f"memory://{name}/")
        other = MemoryTransport.from_url(f"memory://{name}-other")
        assert isinstance(first, MemoryTransport) and first.visibility_timeout == 5
        _put(first, "q", b"x")  # type: ignore[arg-type]
        assert second.qsize("q") == 1
        assert other.qsize("q") == 0
    finally:
        memory.reset(name)
        memory.reset(f"{name}-other")


def test_bare_memory_url_is_one_shared_default() -> None:
    queue = f"q-{uuid.uuid4().hex}"
    first, second = MemoryTransport.from_url("memory://"), MemoryTransport.from_url("memory://")
    _put(first, queue, b"x")
    assert second.qsize(queue) == 1
    assert second.purge(queue) == 1


def test_unnamed_instances_are_private() -> None:
    first, second = MemoryTransport(), MemoryTransport()
    _put(first, "q", b"x")
    assert (first.qsize("q"), second.qsize("q")) == (1, 0)


def test_reset_forgets_a_shared_broker() -> None:
    name = f"reset-{uuid.uuid4().hex}"
    old = MemoryTransport.from_url(f"memory://{name}")
    _put(old, "q", b"x")
    memory.reset(name)
    assert MemoryTransport.from_url(f"memory://{name}").qsize("q") == 0
    assert old.qsize("q") == 1  # an open transport keeps its (now private) state
    memory.reset(name)


def test_memory_compacts_stale_heap_items() -> None:
    transport = MemoryTransport(visibility_timeout=3600)
    for round_ in range(20):
        transport.publish([Outgoing("q", Message(b"%d" % i)) for i in range(50)])
        got = transport.fetch(["q"], 50, 0)
        transport.extend_lease(got)
        assert transport.ack(got) == [True] * 50
    queue = transport._broker.queues["q"]
    assert len(queue.ready) + len(queue.waiting) <= 64 + 2 * len(queue.entries)
