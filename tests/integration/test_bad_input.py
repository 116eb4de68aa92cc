"""Bad input reaches a real worker: a clear log line, nothing dropped, the dead-letter store and
CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid

import pytest

from celeriac.protocol.message import Message
from celeriac.transport.base import Outgoing

pytestmark = pytest.mark.integration


class _Tripwire:
    """Unpickling this creates a file: proof that a disallowed pickle payload was deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def app(sqlite_url, task_module):
    return task_module("app_tasks", sqlite_url).app


def _headers(name: str, task_id: str) -> dict:
    return {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "retries": 0,
            "timelimit": [None, None], "eta": None, "expires": None}


def _cli(sqlite_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CELERIAC_BROKER_URL": sqlite_url, "CELERIAC_RESULT_BACKEND": sqlite_url}
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", "-A",
                           "tests.integration.app_tasks", "dlq", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_bad_messages_are_dead_lettered_and_good_ones_still_run(start_worker, app, tmp_path,
                                                                 sqlite_url):
    from tests.integration.app_tasks import add

    tripwire = tmp_path / "unpickled"
    pickle_body = pickle.dumps(_Tripwire(str(tripwire)))
    bad = {
        "malformed": Message(body=b'[[1, 2], {"x": ',
                             headers=_headers(add.name, str(uuid.uuid4()))),
        "pickle": Message(body=pickle_body, content_type="application/x-python-serialize",
                          content_encoding="binary", headers=_headers(add.name, str(uuid.uuid4()))),
        "no_task_header": Message(body=b"[[], {}, {}]", headers={"id": str(uuid.uuid4())}),
        "wrong_shape": Message(body=b'{"args": 1}', headers=_headers(add.name, str(uuid.uuid4()))),
    }
    app.transport.publish([Outgoing("celery", m) for m in bad.values()])
    good = [add.delay(i, i) for i in range(100)]
    worker = start_worker("-c", "2")
    assert [r.get(timeout=30) for r in good] == [2 * i for i in range(100)]

    letters = {d.message.headers.get("id"): d for d in app.transport.dead_letters()}
    assert len(letters) == len(bad)
    for kind, message in bad.items():
        letter = letters[message.headers.get("id")]
        assert letter.message.body == message.body, f"{kind}: body must be kept byte for byte"
        assert letter.message.content_type == message.content_type
    assert "not accepted" in letters[bad["pickle"].headers["id"]].reason
    assert "'task'" in letters[bad["no_task_header"].headers["id"]].reason
    assert not tripwire.exists(), "a pickle payload must never be deserialized when not accepted"
    log = worker.log()
    assert "content type 'application/x-python-serialize' is not in accept_content" in log
    assert f"Cannot decode task message {bad['malformed'].headers['id']}" in log


def test_dlq_cli_list_show_replay_purge(app, sqlite_url, start_worker):
    from tests.integration.app_tasks import add

    task_id = str(uuid.uuid4())
    body = json.dumps([[3, 4], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                    "chord": None}]).encode()
    message = Message(body=body, headers=_headers("tests.integration.app_tasks.not_yet", task_id))
    letter_id = app.transport.dead_letter("celery", message, "unknown task name 'not_yet'")

    listed = _cli(sqlite_url, "list")
    assert listed.returncode == 0, listed.stderr
    assert letter_id in listed.stdout and "unknown task name" in listed.stdout

    shown = _cli(sqlite_url, "show", letter_id)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["body"] == body.decode() and detail["headers"]["id"] == task_id

    # A dead letter for a task that exists now: replaying it runs it, byte for byte as sent.
    replay_task_id = str(uuid.uuid4())
    replay_id = app.transport.dead_letter(
        "celery", Message(body=body, headers=_headers(add.name, replay_task_id)), "test")
    replayed = _cli(sqlite_url, "replay", replay_id)
    assert replayed.returncode == 0 and "Replayed 1" in replayed.stdout, replayed.stderr
    assert replay_id not in [d.id for d in app.transport.dead_letters()]
    start_worker("-c", "1")
    assert app.AsyncResult(replay_task_id).get(timeout=20) == 7

    purged = _cli(sqlite_url, "purge", "--force")
    assert purged.returncode == 0 and "Purged" in purged.stdout
    assert app.transport.dead_letters() == []
    missing = _cli(sqlite_url, "show", letter_id)
    assert missing.returncode != 0 and "no dead letter" in missing.stderr
