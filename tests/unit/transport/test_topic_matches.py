"""AMQP topic matching of broadcast bindings (``transport.base.topic_matches``)."""

from __future__ import annotations

import pytest

from celeriac.transport.base import topic_matches


@pytest.mark.parametrize(("binding", "key", "matches"), [
    # "#": everything, the empty key included
    ("#", "", True), ("#", "worker", True), ("#", "worker.heartbeat", True), ("#", "a.b.c", True),
    # exact words
    ("worker.heartbeat", "worker.heartbeat", True), ("worker.heartbeat", "worker.online", False),
    ("worker.heartbeat", "worker", False), ("worker", "worker.heartbeat", False),
    ("worker", "worker", True), ("worker", "", False), ("worker", "workers", False),
    # "*": exactly one word
    ("worker.*", "worker.heartbeat", True), ("worker.*", "worker", False),
    ("worker.*", "worker.a.b", False), ("worker.*", "task.sent", False),
    ("*", "worker", True), ("*", "", False), ("*", "a.b", False),
    ("*.online", "worker.online", True), ("*.online", "online", False),
    ("*.*", "a.b", True), ("*.*", "a", False),
    # "#": zero or more words anywhere
    ("worker.#", "worker", True), ("worker.#", "worker.a", True), ("worker.#", "worker.a.b", True),
    ("worker.#", "workers.a", False), ("#.online", "online", True),
    ("#.online", "a.b.online", True), ("#.online", "online.x", False),
    ("a.#.b", "a.b", True), ("a.#.b", "a.x.y.b", True), ("a.#.b", "a.x.c", False),
    ("#.#", "", True), ("#.#", "a.b", True), ("a.#.#", "a", True),
    ("#.*", "a", True), ("#.*", "", False), ("*.#", "a.b.c", True),
    # the empty binding: only the empty key (Celery's pidbox binds "")
    ("", "", True), ("", "worker", False),
    # words are split on dots only; other characters are literal
    ("w1@host.pidbox", "w1@host.pidbox", True), ("a-b.c_d", "a-b.c_d", True),
    ("worker.*", "worker.", True), ("worker.", "worker.", True), ("worker.", "worker", False),
])
def test_topic_matches(binding: str, key: str, matches: bool) -> None:
    assert topic_matches(binding, key) is matches
