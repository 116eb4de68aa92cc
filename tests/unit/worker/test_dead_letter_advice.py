"""Which stored failures advise a replay of the dead letter (pure logic; the stored texts are
checked end to end in tests/integration/test_stored_failures.py)."""

from __future__ import annotations

import pickle

from celeriac.exceptions import (
    ContentDisallowed,
    DecodeError,
    InvalidTaskError,
    MissingDependency,
    NotRegistered,
    WorkerLostError,
)
from celeriac.protocol.message import Message
from celeriac.worker.consumer import replay_can_fix
from celeriac.worker.request import undecodable_failure


def _message() -> Message:
    return Message(body=b"x", headers={"task": "t.add", "id": "i-1"},
                   content_type="application/x-yaml", content_encoding="utf-8")


def test_only_what_a_replay_can_fix_advises_one():
    assert replay_can_fix(ContentDisallowed("not accepted"))
    assert replay_can_fix(NotRegistered("t.add"))
    assert replay_can_fix(WorkerLostError("delivered 3 times"))
    assert not replay_can_fix(DecodeError("malformed"))
    assert not replay_can_fix(InvalidTaskError("wrong shape"))


def test_a_missing_package_on_the_worker_is_not_blamed_on_the_sender():
    missing = MissingDependency("the yaml serializer needs the 'yaml' package: "
                                "pip install 'celeriac[yaml]'")
    try:
        raise DecodeError(str(missing)) from missing  # as serialization.loads raises it
    except DecodeError as exc:
        failure = undecodable_failure(_message(), exc)
    assert isinstance(failure, DecodeError)
    assert "this worker cannot decode the message body" in str(failure)
    assert "pip install 'celeriac[yaml]'" in str(failure)
    assert "Install the package on the worker" in str(failure)
    assert "sender" not in str(failure)
    # it crosses the process pool: still replayable on the other side
    assert replay_can_fix(pickle.loads(pickle.dumps(failure)))


def test_a_malformed_body_still_blames_the_sender():
    failure = undecodable_failure(_message(), DecodeError("cannot decode"))
    assert "its sender must send a protocol 2 task body" in str(failure)
    assert not replay_can_fix(failure)
