"""Runs the result-store conformance suite on real Redis, plus Celery byte/interop checks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.redis import RedisBackend
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError
from celeriac.testing.backend_suite import MakeBackend, SharedBackendContract
from tests.vectors import CELERY_VECTORS
from tests.waiting import wait_for

pytestmark = [pytest.mark.redis]

DB = 9
VECTORS = CELERY_VECTORS / "redis" / "worker"


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return f"{redis_server}/{DB}"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def task_ids(raw: redis.Redis) -> Iterator[list[str]]:
    """Fresh task ids for tests that write unprefixed Celery keys; those keys are removed after."""
    ids: list[str] = []
    yield ids
    if ids:
        raw.delete(*[f"celery-task-meta-{t}" for t in ids])


def _new(ids: list[str]) -> str:
    ids.append(str(uuid.uuid4()))
    return ids[-1]


class TestRedisBackend(SharedBackendContract):
    @pytest.fixture
    def process_url(self, redis_url: str, redis_prefix: str) -> str:
        return f"{redis_url}?global_keyprefix={redis_prefix}"

    @pytest.fixture
    def make_backend(self, process_url: str, raw: redis.Redis, redis_prefix: str
                     ) -> Iterator[MakeBackend]:
        made: list[RedisBackend] = []

        def make(**options: Any) -> RedisBackend:
            made.append(RedisBackend(url=process_url, **options))
            return made[-1]

        yield make
        for backend in made:
            backend.close()
        keys = list(raw.scan_iter(match=redis_prefix + "*", count=1000))
        if keys:
            raw.delete(*keys)


# ---- the bytes Celery reads ----------------------------------------------------------------------
def test_success_meta_bytes_and_ttl(redis_url: str, raw: redis.Redis,
                                    task_ids: list[str]) -> None:
    backend = RedisBackend(url=redis_url, expires=3600)
    try:
        task_id = _new(task_ids)
        backend.mark_as_done(task_id, 4)
        stored = raw.get(f"celery-task-meta-{task_id}")
        ttl = raw.ttl(f"celery-task-meta-{task_id}")
    finally:
        backend.close()
    date_done = json.loads(stored)["date_done"]
    assert stored == (
        '{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], '
        f'"date_done": "{date_done}", "task_id": "{task_id}"}}').encode()
    assert 3590 < ttl <= 3600


def test_no_expiry_stores_without_ttl(redis_url: str, raw: redis.Redis,
                                      task_ids: list[str]) -> None:
    backend = RedisBackend(url=redis_url, expires=0)
    try:
        task_id = _new(task_ids)
        backend.mark_as_done(task_id, 1)
    finally:
        backend.close()
    assert raw.ttl(f"celery-task-meta-{task_id}") == -1


def test_store_publishes_the_stored_bytes(redis_url: str, raw: redis.Redis,
                                          task_ids: list[str]) -> None:
    task_id = _new(task_ids)
    channel = f"celery-task-meta-{task_id}"
    pubsub = raw.pubsub()
    backend = RedisBackend(url=redis_url)
    try:
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        backend.mark_as_done(task_id, [1, "two"])
        message = pubsub.get_message(timeout=2)
    finally:
        backend.close()
        pubsub.close()
    assert message is not None and message["channel"] == channel.encode()
    assert message["data"] == raw.get(channel)
    assert json.loads(message["data"])["result"] == [1, "two"]


@pytest.mark.parametrize("role", ["add", "fail"])
def test_reads_celerys_own_meta(redis_url: str, raw: redis.Redis, task_ids: list[str],
                                role: str) -> None:
    captured = json.loads((VECTORS / "result_backend_final.json").read_text())
    entry = captured["task_meta_by_role"][role]
    old_id = entry["key"].removeprefix("celery-task-meta-")
    task_id = _new(task_ids)
    value = base64.b64decode(entry["raw"]["b64"]).replace(old_id.encode(), task_id.encode())
    raw.set(f"celery-task-meta-{task_id}", value)
    backend = backend_from_url(redis_url)
    try:
        meta = backend.wait_for(task_id, timeout=2)
    finally:
        backend.close()
    assert meta["task_id"] == task_id
    if role == "add":
        assert (meta["status"], meta["result"]) == (states.SUCCESS, 4)
    else:
        assert meta["status"] == states.FAILURE
        exc = backend.exception_from_meta(meta)
        assert type(exc) is ValueError and exc.args == ("boom",)


def test_global_keyprefix_applies_to_keys_and_channels(redis_url: str, raw: redis.Redis,
                                                       redis_prefix: str) -> None:
    backend = RedisBackend(url=redis_url, global_keyprefix=redis_prefix)
    task_id = str(uuid.uuid4())
    pubsub = raw.pubsub()
    try:
        pubsub.subscribe(f"{redis_prefix}celery-task-meta-{task_id}")
        pubsub.get_message(timeout=2)
        backend.mark_as_done(task_id, 1)
        message = pubsub.get_message(timeout=2)
        assert raw.exists(f"celery-task-meta-{task_id}") == 0
        assert raw.get(f"{redis_prefix}celery-task-meta-{task_id}") == message["data"]
    finally:
        backend.close()
        pubsub.close()
        raw.delete(f"{redis_prefix}celery-task-meta-{task_id}")


# ---- waiting -------------------------------------------------------------------------------------
def test_wait_for_wakes_on_a_store_from_another_thread(redis_url: str,
                                                       task_ids: list[str]) -> None:
    reader, writer = RedisBackend(url=redis_url), RedisBackend(url=redis_url)
    task_id = _new(task_ids)
    stored_at: list[float] = []

    def store() -> None:
        time.sleep(0.2)
        stored_at.append(time.monotonic())
        writer.mark_as_done(task_id, "ok")

    thread = threading.Thread(target=store)
    try:
        thread.start()
        meta = reader.wait_for(task_id, timeout=10)
        woke = time.monotonic()
        thread.join()
    finally:
        reader.close()
        writer.close()
    assert meta["result"] == "ok"
    assert woke - stored_at[0] < 0.1


def test_wait_for_times_out_naming_the_task(redis_url: str, task_ids: list[str]) -> None:
    backend = RedisBackend(url=redis_url)
    task_id = _new(task_ids)
    started = time.monotonic()
    try:
        with pytest.raises(CeleriacTimeoutError, match=task_id):
            backend.wait_for(task_id, timeout=0.3)
    finally:
        backend.close()
    assert 0.3 <= time.monotonic() - started < 1.0


def test_a_timeout_says_how_long_it_waited_and_in_what_state(redis_url: str,
                                                             task_ids: list[str]) -> None:
    backend = RedisBackend(url=redis_url)
    first, second = _new(task_ids), _new(task_ids)
    backend.mark_as_started(second)
    try:
        with pytest.raises(CeleriacTimeoutError) as one:
            backend.wait_for(second, timeout=0.2)
        with pytest.raises(CeleriacTimeoutError) as many:
            backend.wait_for_many([first, second], timeout=0.2)
    finally:
        backend.close()
    assert str(one.value) == (f"the operation timed out after 0.2s waiting for task {second} "
                              f"(still STARTED)")
    assert str(many.value) == (f"the operation timed out after 0.2s waiting for 2 task(s) "
                               f"(still not ready: {first}, {second})")


def test_many_concurrent_waiters_share_one_listener(redis_url: str,
                                                    task_ids: list[str]) -> None:
    reader, writer = RedisBackend(url=redis_url), RedisBackend(url=redis_url)
    ids = [_new(task_ids) for _ in range(20)]
    results: dict[str, Any] = {}

    def wait(task_id: str) -> None:
        results[task_id] = reader.wait_for(task_id, timeout=10)["result"]

    threads = [threading.Thread(target=wait, args=(t,)) for t in ids]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        for n, task_id in enumerate(ids):
            writer.mark_as_done(task_id, n)
        for thread in threads:
            thread.join(10)
        listeners = [t for t in threading.enumerate() if t.name == "celeriac-redis-results"]
    finally:
        reader.close()
        writer.close()
    assert results == {t: n for n, t in enumerate(ids)}
    assert len(listeners) == 1  # the reader's only: the writer never waited


def test_waiter_survives_a_pubsub_connection_kill(redis_url: str, raw: redis.Redis,
                                                  task_ids: list[str]) -> None:
    # only this reader's subscriber is killed: other tests' run beside this one on the server
    name = f"celeriac-kill-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in redis_url else "?"
    reader = RedisBackend(url=f"{redis_url}{separator}client_name={name}")
    writer = RedisBackend(url=redis_url)
    task_id = _new(task_ids)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(reader.wait_for(task_id, timeout=10)))
    try:
        thread.start()
        subscribers = wait_for(lambda: [c["id"] for c in raw.client_list()
                                        if c.get("name") == name and "P" in c.get("flags", "")],
                               5, message="the reader never subscribed")
        killed = sum(raw.client_kill_filter(_id=i) for i in subscribers)
        time.sleep(0.3)  # the listener reconnects and re-subscribes
        writer.mark_as_done(task_id, "after kill")
        thread.join(10)
    finally:
        reader.close()
        writer.close()
    assert killed >= 1
    assert got and got[0]["result"] == "after kill"


def test_a_subscriber_killed_at_once_backs_off(redis_url: str, raw: redis.Redis,
                                               task_ids: list[str]) -> None:
    # A connection that dies as soon as it opens must not reset the back-off: the listener
    # used to reconnect every 0.1 s for as long as the kills went on (about 20 in 2 s).
    name = f"celeriac-rekill-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in redis_url else "?"
    reader = RedisBackend(url=f"{redis_url}{separator}client_name={name}")
    task_id = _new(task_ids)
    waiter = threading.Thread(target=lambda: _ignore_errors(reader.wait_for, task_id, 30))
    kills = 0
    try:
        waiter.start()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for client in raw.client_list():  # subscribers only: the pool's are not counted
                if client.get("name") == name and "P" in client.get("flags", ""):
                    kills += raw.client_kill_filter(_id=client["id"])
            time.sleep(0.005)
    finally:
        reader.close()
        waiter.join(10)
    assert 2 <= kills <= 8, f"{kills} subscriber connections in 2 s"


def _ignore_errors(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - the store is closed under the waiter on purpose
        pass


def test_store_retries_then_raises_when_redis_is_unreachable(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac.backends import redis as redis_backend

    monkeypatch.setattr(redis_backend, "_STORE_RETRY_DELAYS", (0.01, 0.01))
    backend = RedisBackend(url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        with pytest.raises(redis.ConnectionError):
            backend.mark_as_done(str(uuid.uuid4()), 1)
    finally:
        backend.close()
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


# ---- interop with the real Celery package (in a subprocess) -------------------------------------
_CELERY_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path[:0] = [sys.argv[1], sys.argv[5]]
    from celery import Celery
    from celery.result import AsyncResult
    app = Celery(backend=sys.argv[2], broker="memory://")
    reads = AsyncResult(sys.argv[3], app=app).get(timeout=5)
    app.backend.store_result(sys.argv[4], {"from": "celery"}, "SUCCESS")
    print(json.dumps(reads))
""")


@pytest.mark.interop
def test_interop_celery_reads_celeriac_and_celeriac_reads_celery(redis_url: str,
                                                                 task_ids: list[str],
                                                                 tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("celery") is None:
        pytest.fail("Celery 5 is a test dependency: pip install -e '.[test]'")
    if importlib.util.find_spec("tzlocal") is None:
        # The reference install lacks this dependency; Celery only uses it for local-time display.
        (tmp_path / "tzlocal.py").write_text(
            "from datetime import timezone\n\ndef get_localzone():\n    return timezone.utc\n")
    backend = RedisBackend(url=redis_url)
    ours, theirs = _new(task_ids), _new(task_ids)
    try:
        backend.mark_as_done(ours, {"from": "celeriac", "n": [1, 2]})
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [sys.executable, "-c", _CELERY_SCRIPT, str(tmp_path), redis_url, ours, theirs,
             str(tmp_path)],
            capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"from": "celeriac",
                                                                     "n": [1, 2]}
        assert backend.wait_for(theirs, timeout=5)["result"] == {"from": "celery"}
    finally:
        backend.close()


def test_close_releases_a_blocked_waiter(redis_url: str, task_ids: list[str]) -> None:
    from celeriac.exceptions import BackendError

    backend = RedisBackend(url=redis_url)
    task_id = _new(task_ids)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            backend.wait_for(task_id, timeout=None)
        except BackendError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    backend.close()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1


def test_wait_change_as_the_first_call_wakes_on_a_store(redis_url: str,
                                                        task_ids: list[str]) -> None:
    backend, writer = RedisBackend(url=redis_url), RedisBackend(url=redis_url)
    task_id = _new(task_ids)
    thread = threading.Timer(0.2, writer.mark_as_done, args=(task_id, 1))
    try:
        thread.start()
        started = time.monotonic()
        backend._wait_change([backend.task_key(task_id)], 5.0)  # noqa: SLF001 - the primitive
        elapsed = time.monotonic() - started
        thread.join()
    finally:
        backend.close()
        writer.close()
    assert 0.15 < elapsed < 1.0


@pytest.mark.parametrize("expires, ttl_range", [(3600, (3590, 3600)), (2.5, (1, 3)), (0, (-1, -1))])
def test_write_and_part_return_stores_publishes_and_counts_as_the_two_steps_do(
        redis_url: str, raw: redis.Redis, task_ids: list[str], expires: float,
        ttl_range: tuple[int, int]) -> None:
    """A header task's result and its chord count in one script: the stored bytes, expiry and
    PUBLISH are those of ``write_results``; the count and claim those of
    ``chord_part_return``."""
    backend = RedisBackend(url=redis_url, expires=expires)
    group_id = str(uuid.uuid4())
    first, second = _new(task_ids), _new(task_ids)
    pubsub = raw.pubsub()
    try:
        pubsub.subscribe(f"celery-task-meta-{first}")
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        backend.set_chord_size(group_id, 2)
        write = backend.result_write(first, 7, states.SUCCESS)
        part = backend.write_and_part_return(write, group_id, first, 0, b'[1, "a", "SUCCESS", 7]',
                                             claim_token="t1", claim_ttl=30)
        message = pubsub.get_message(timeout=2)
        stored, ttl = raw.get(f"celery-task-meta-{first}"), raw.ttl(f"celery-task-meta-{first}")
        last = backend.write_and_part_return(backend.result_write(second, 8, states.SUCCESS),
                                             group_id, second, 1, b'[1, "b", "SUCCESS", 8]',
                                             claim_token="t2", claim_ttl=30)
        results = backend.chord_results(group_id)
        assert backend.chord_cleanup(group_id, "t2", 60)
        # a late copy after the chord fired: its result is stored all the same, nothing counted
        again = backend.write_and_part_return(backend.result_write(first, 9, states.SUCCESS),
                                              group_id, first, 0, b'[1, "a", "SUCCESS", 9]',
                                              claim_token="t3", claim_ttl=30)
        rewritten = json.loads(raw.get(f"celery-task-meta-{first}"))["result"]
    finally:
        backend.close()
        pubsub.close()
        raw.delete(*[backend.chord_key(group_id, s) for s in (".j", ".t", ".s", ".d", ".c")])
    assert stored == write.value and json.loads(stored)["result"] == 7
    assert message is not None and message["data"] == stored
    assert ttl_range[0] <= ttl <= ttl_range[1]
    assert (part.ready, part.expected, part.claimed) == (1, 2, False)
    assert (last.ready, last.expected, last.claimed) == (2, 2, True)
    assert results == [b'[1, "a", "SUCCESS", 7]', b'[1, "b", "SUCCESS", 8]']
    assert (again.ready, again.claimed) == (-1, False) and rewritten == 9


def test_write_and_part_return_loads_its_script_after_a_script_flush(
        redis_url: str, raw: redis.Redis, task_ids: list[str]) -> None:
    backend = RedisBackend(url=redis_url)
    group_id, task_id = str(uuid.uuid4()), _new(task_ids)
    try:
        backend.set_chord_size(group_id, 1)
        raw.script_flush()
        part = backend.write_and_part_return(backend.result_write(task_id, 1, states.SUCCESS),
                                             group_id, task_id, 0, b'[1, "a", "SUCCESS", 1]',
                                             claim_token="t", claim_ttl=30)
    finally:
        backend.close()
        raw.delete(*[backend.chord_key(group_id, s) for s in (".j", ".t", ".s", ".d", ".c")])
    assert part.claimed and json.loads(raw.get(f"celery-task-meta-{task_id}"))["result"] == 1


# ---- one waiter on its own connection (redis_pubsub.SoloWaiter) ----------------------------------
def test_a_lone_waiter_reads_its_own_connection_and_reuses_it(redis_url: str, raw: redis.Redis,
                                                              task_ids: list[str]) -> None:
    """One thread waiting: SUBSCRIBE and GET in one packet on the store's solo connection, no
    listener thread; a second wait on the same connection is not confused by the first's
    channel being written again meanwhile."""
    reader, writer = RedisBackend(url=redis_url), RedisBackend(url=redis_url)
    first, second = _new(task_ids), _new(task_ids)
    got: list[Any] = []

    def store_both() -> None:
        time.sleep(0.2)
        writer.mark_as_done(first, "again")  # the first wait's channel, during the second
        writer.mark_as_done(second, "second")

    try:
        writer.mark_as_done(first, "first")
        got.append(reader.wait_for(first, timeout=10)["result"])  # stored already
        thread = threading.Thread(target=store_both)
        thread.start()
        got.append(reader.wait_for(second, timeout=10)["result"])
        thread.join()
        listener = reader._subscriber  # noqa: SLF001 - which path served the waits
    finally:
        reader.close()
        writer.close()
    assert got == ["first", "second"]
    assert listener is None


def test_a_lone_waiter_pings_a_silent_connection_and_keeps_using_it(
        redis_url: str, task_ids: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac.backends import redis_pubsub

    monkeypatch.setattr(redis_pubsub, "_HEALTH_INTERVAL", 0.05)
    reader, writer = RedisBackend(url=redis_url), RedisBackend(url=redis_url)
    first, second = _new(task_ids), _new(task_ids)
    try:
        # silent for several health intervals: PINGs go out, their PONGs come back
        with pytest.raises(CeleriacTimeoutError):
            reader.wait_for(first, timeout=0.3)
        timer = threading.Timer(0.2, writer.mark_as_done, args=(second, "after pings"))
        timer.start()
        meta = reader.wait_for(second, timeout=10)
        timer.join()
        listener = reader._subscriber  # noqa: SLF001 - which path served the waits
    finally:
        reader.close()
        writer.close()
    assert meta["result"] == "after pings" and listener is None


def test_kept_results_and_a_read_go_in_one_round_trip(redis_url: str, task_ids: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A solo worker's kept results ride with its revoke check: one round trip, writes first."""
    from celeriac.utils import redis_wire

    backend = RedisBackend(url=redis_url)
    assert backend.writes_ride_with_reads
    first, second = _new(task_ids), _new(task_ids)
    trips: list[int] = []
    real = redis_wire.Wire._exchange

    def counting(self: redis_wire.Wire, packed: list[bytes], count: int) -> list[Any]:
        trips.append(count)
        return real(self, packed, count)

    try:
        writes = [backend.result_write(first, 1, states.SUCCESS),
                  backend.result_write(second, 2, states.SUCCESS)]
        monkeypatch.setattr(redis_wire.Wire, "_exchange", counting)
        raws = backend.write_results_then_mget(writes, [writes[1].key, "never-set"])
        monkeypatch.undo()
        assert backend.get_task_meta(first)["result"] == 1
    finally:
        backend.close()
    assert trips == [5]  # SETEX and PUBLISH of each result, then the MGET
    assert json.loads(raws[0])["result"] == 2 and raws[1] is None
