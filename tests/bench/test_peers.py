"""bench/peers.py's pure logic: side groups, the RabbitMQ sides' settings, issue 12's checks.

The benchmark itself never runs under pytest (it needs servers and minutes); these cover what
decides its output: which sides a ``--sides`` value names, what environment a side's processes
get, and how issue 12 item 8's targets are scaled by the peers measured alongside.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from bench import peers


def results_with(figures: dict[str, dict[str, float]]) -> peers.Results:
    results = peers.Results()
    results.rounds.append(figures)
    return results


class FakeRedisDatabase:
    url = "redis://127.0.0.1:6379/3"

    def flush(self) -> None:
        pass


class FakeVhost:
    url = "amqp://guest:guest@127.0.0.1:5672/run-vhost"

    def __init__(self) -> None:
        self.emptied: list[str] = []

    def empty(self, queue: str) -> None:
        self.emptied.append(queue)


def test_side_groups_expand_in_order_without_repeats() -> None:
    chosen = peers.parse_list("issue12,dramatiq-rabbitmq,celeriac-redis", list(peers.SIDES),
                              "side", peers.SIDE_GROUPS)
    assert chosen == ["celeriac-amqp", "celeriac-amqp-noconfirm", "celery-amqp",
                      "dramatiq-rabbitmq", "celeriac-redis"]


def test_unknown_side_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="celeriac-kafka"):
        peers.parse_list("celeriac-kafka", list(peers.SIDES), "side", peers.SIDE_GROUPS)


def test_every_side_is_in_a_group_and_issue_17s_has_no_celeriac_on_rabbitmq() -> None:
    assert set(peers.SIDE_GROUPS["issue17"]) | set(peers.SIDE_GROUPS["issue12"]) == set(
        peers.SIDES)
    assert not any(peers.SIDES[s].broker == "amqp" and peers.SIDES[s].kind != "dramatiq"
                   for s in peers.SIDE_GROUPS["issue17"])


def test_rabbitmq_sides_publish_to_the_run_vhost_with_their_confirm_setting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(peers.CONFIRM_PUBLISH_ENV, "1")  # left from elsewhere: must not leak
    vhost = FakeVhost()
    bench = peers.Bench(tmp_path, FakeRedisDatabase(), vhost, {})  # type: ignore[arg-type]
    bench.prepare(peers.SIDES["celeriac-amqp"])
    assert os.environ["CELERIAC_BROKER_URL"] == vhost.url
    assert os.environ["CELERIAC_RESULT_BACKEND"] == FakeRedisDatabase.url
    assert peers.CONFIRM_PUBLISH_ENV not in os.environ  # celeriac's default: confirmed
    assert "celery" in vhost.emptied  # celeriac's and Celery's default queue purged
    bench.prepare(peers.SIDES["celeriac-amqp-noconfirm"])
    assert os.environ[peers.CONFIRM_PUBLISH_ENV] == "0"
    bench.prepare(peers.SIDES["celery-amqp"])
    assert peers.CONFIRM_PUBLISH_ENV not in os.environ  # Celery's default: no confirms
    assert os.environ["CELERIAC_BROKER_URL"] == vhost.url


def test_confirm_env_name_matches_the_bench_app() -> None:
    source = (peers.ROOT / "bench" / "bench_tasks.py").read_text()
    assert f'CONFIRM_PUBLISH_ENV = "{peers.CONFIRM_PUBLISH_ENV}"' in source


def check_lines(figures: dict[str, dict[str, float]], sides: list[str]) -> list[str]:
    return peers.issue12_targets(results_with(figures), sides)


def test_issue12_block_needs_dramatiq_on_rabbitmq() -> None:
    figures = {"enqueue": {"celeriac-amqp": 1000.0}}
    assert check_lines(figures, ["celeriac-amqp", "celery-amqp"]) == []
    assert check_lines(figures, ["dramatiq-rabbitmq", "celery-amqp"]) == []


def test_issue12_targets_scale_by_the_peer_measured_alongside() -> None:
    figures: dict[str, Any] = {
        # 20/19 of 1,900 is 2,000: 2,100 meets it, far below the absolute 20,000
        "enqueue": {"celeriac-amqp": 2100.0, "dramatiq-rabbitmq": 1900.0, "celery-amqp": 500.0},
        # 6.0/4.8 of 1,000 is 1,250: 1,200 misses it
        "drain-solo": {"celeriac-amqp": 1200.0, "dramatiq-rabbitmq": 1000.0},
        # 0.6/0.61 of 2.0 ms is 1.97 ms: 1.9 meets it (lower is better)
        "latency:p50": {"celeriac-amqp": 1.9, "dramatiq-rabbitmq": 2.0},
    }
    lines = check_lines(figures, ["celeriac-amqp", "celery-amqp", "dramatiq-rabbitmq"])
    assert lines[0].strip() == "celeriac RabbitMQ:"
    enqueue, drain, p50, celery = lines[1:]
    assert enqueue.split()[0] == "met" and "1.11x" in enqueue and "scaled target 2,000" in enqueue
    assert "absolute target 20,000" in enqueue
    assert drain.split()[:2] == ["NOT", "met"] and "scaled target 1,250" in drain
    assert p50.split()[0] == "met" and "scaled target 1.97" in p50
    # 20/4 = 5x Celery's 500 is 2,500: 2,100 misses it
    assert celery.split()[:2] == ["NOT", "met"] and "4.20x" in celery


def test_issue12_block_says_what_was_not_measured() -> None:
    figures = {"enqueue": {"celeriac-amqp-noconfirm": 5000.0, "dramatiq-rabbitmq": 4000.0}}
    lines = check_lines(figures, ["celeriac-amqp-noconfirm", "dramatiq-rabbitmq"])
    assert lines[0].strip() == "celeriac RabbitMQ, no confirms:"
    assert lines[1].split()[0] == "met"
    assert all("(not measured)" in line for line in lines[2:])
    assert "Celery RabbitMQ" in lines[-1]


def test_a_failed_wait_reports_the_workers_last_lines(tmp_path: Path) -> None:
    class Worker:
        def log_tail(self, lines: int) -> str:
            return "starting\nstuck"

    bench = peers.Bench(tmp_path, FakeRedisDatabase(), None, {})  # type: ignore[arg-type]
    report = bench.stall_report(peers.SIDES["celeriac-redis"], Worker())
    assert report.splitlines() == ["    worker log:", "    starting", "    stuck"]


def test_a_timed_out_wait_counts_every_finished_task() -> None:
    class LostLastTask:
        """Every task finished but the last, which never will (a lost message)."""

        def done_times(self, ids: list[str]) -> list[float | None]:
            return [None if i == "last" else 1.0 for i in ids]

    with pytest.raises(SystemExit, match="only 2/3 results"):
        peers.wait_done(LostLastTask(), ["a", "b", "last"], timeout=0.05)
