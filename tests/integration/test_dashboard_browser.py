"""The dashboard page in a real browser: Debian's headless chromium driven by Playwright, over a
real worker (``-E``) on SQLite and Redis.

The page must show the worker alive, a queue's depth, the succeeded and the failed task with its
traceback, the throughput chart, a dispatch's progress, the batch task, and a dead letter whose
Replay button sends it back through the broker. A full-page screenshot is written to the test's
tmp dir (``dashboard-<broker>.png``), the artifact to look at when this test fails.

chromium comes from Debian's package (.ci/run installs it), never from Playwright's download:
a missing one skips locally and FAILS under CI=true.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac.dashboard import Dashboard
from tests.integration.conftest import Broker, open_broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.dashboard_tasks"
PARKED = "dashboard-parked"
NODE = "browser@test"
#: how long the page may take to show something (it refreshes every 2 s)
SHOWN_WITHIN_MS = 20_000
CHROMIUM = "/usr/bin/chromium"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: a missing browser is a failure, not a skip)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[test]'")
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium refuses its sandbox
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    with open_broker(request.param, tmp_path) as broker:
        yield broker


def test_the_page_shows_the_worker_tasks_chart_and_replays_a_dead_letter(
        broker: Broker, browser: Any, start_worker, task_module, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    tasks = task_module("dashboard_tasks", broker.url, broker.results)
    app = tasks.app
    start_worker("-P", "threads", "-c", "4", "-E", "-n", NODE, app=APP, url=broker.url,
                 env=broker.worker_env())
    board = Dashboard(app, port=0, queues=[PARKED])
    board.start()
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        for _ in range(3):
            tasks.add.apply_async((1, 1), queue=PARKED)
        done = tasks.add.delay(2, 3)
        failed = tasks.fail.delay("boom")
        assert done.get(timeout=20) == 5
        failed.get(timeout=20, propagate=False)
        assert [r.get(timeout=20) for r in [tasks.tally.delay(i, 1) for i in range(3)]] == [
            1, 2, 3]
        missing = app.send_task("tests.integration.dashboard_tasks.missing", (7,))
        gate = tmp_path / "gate"
        dispatch = tasks.squares.delay(4, str(gate))
        wait_for(lambda: app.transport.dead_letters(10), 20, message="no dead letter was made")
        wait_for(lambda: app.AsyncResult(dispatch.id).state == "PROGRESS", 20,
                 message="the dispatch never stored its progress")

        page.goto(board.url)
        expect(page.locator("body")).to_have_attribute("data-loaded", "true",
                                                       timeout=SHOWN_WITHIN_MS)
        worker = page.locator(f'#workers tr[data-node="{NODE}"]')
        expect(worker).to_contain_text("alive", timeout=SHOWN_WITHIN_MS)
        expect(page.locator(f'#queues tr[data-queue="{PARKED}"] .depth')).to_have_text("3")

        expect(page.locator(f'#recent tr[data-task="{done.id}"]')).to_contain_text(
            "SUCCESS", timeout=SHOWN_WITHIN_MS)
        expect(page.locator(f'#recent tr[data-task="{failed.id}"]')).to_contain_text(
            "FAILURE", timeout=SHOWN_WITHIN_MS)
        failure = page.locator(f'#failures tr[data-task="{failed.id}"]')
        expect(failure).to_contain_text("ValueError('boom')")
        failure.locator("summary").click()
        traceback = failure.locator("pre.traceback")
        expect(traceback).to_be_visible()
        expect(traceback).to_contain_text("in _explode")
        expect(traceback).to_contain_text("ValueError: boom")

        chart = page.locator("#throughput svg")
        expect(chart.locator("rect.succeeded").first).to_be_visible()
        expect(chart.locator("rect.failed").first).to_be_visible()
        expect(page.locator('#throughput [data-total="failed"]')).not_to_have_text("0")

        expect(page.locator(f'#dispatches tr[data-task="{dispatch.id}"]')).to_contain_text(
            "/4", timeout=SHOWN_WITHIN_MS)
        batch = page.locator('#batches tr[data-batch="tests.integration.dashboard_tasks.tally"]')
        expect(batch.locator("td").nth(4)).to_have_text("3", timeout=SHOWN_WITHIN_MS)

        letters = page.locator("#dead-letters tbody tr")
        expect(letters).to_have_count(1, timeout=SHOWN_WITHIN_MS)
        expect(letters.first).to_contain_text("dashboard_tasks.missing")
        first_id = letters.first.get_attribute("data-dead-letter")
        page.screenshot(path=str(tmp_path / f"dashboard-{broker.name}.png"), full_page=True)

        letters.first.locator("button.replay").click()
        expect(page.locator("#dead-letters .notice")).to_have_text("Replayed 1 message(s).")
        # back through the broker: the worker sets the same message aside again, as a new letter
        again = page.locator("#dead-letters tbody tr")
        expect(again).to_have_count(1, timeout=SHOWN_WITHIN_MS)
        expect(again.first).not_to_have_attribute("data-dead-letter", first_id or "",
                                                  timeout=SHOWN_WITHIN_MS)
        expect(again.first).to_contain_text(missing.id[:8])

        gate.touch()
        assert dispatch.get(timeout=20) == 4
        expect(page.locator(f'#dispatches tr[data-task="{dispatch.id}"]')).to_contain_text(
            "SUCCESS", timeout=SHOWN_WITHIN_MS)
        assert problems == []
    finally:
        page.close()
        board.stop()
