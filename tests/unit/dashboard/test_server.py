"""The dashboard's HTTP API on a real loopback socket, over an empty SQLite broker: the page and
its files, answers to bad requests (one line each), and the checks that keep other web pages
out (Host, JSON-only POST)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from celeriac import Celery
from celeriac.dashboard import Dashboard
from celeriac.dashboard.server import host_of


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Dashboard]:
    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    app = Celery("dashboard-unit", broker=url, backend=url)

    @app.task(name="dashboard_unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    dashboard = Dashboard(app, port=0, events=False)
    dashboard.start()
    yield dashboard
    dashboard.stop()
    app.close()


def request(board: Dashboard, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", board.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def api(board: Dashboard, method: str, path: str, body: Any = None,
        content_type: str = "application/json", **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    sent = dict(headers)
    if data is not None:
        sent["Content-Type"] = content_type
    status, _, raw = request(board, method, path, data, sent)
    return status, json.loads(raw)


def test_the_page_and_its_files_are_served_with_a_strict_policy(board: Dashboard) -> None:
    status, headers, page = request(board, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    text = page.decode()
    assert '<script src="/static/dashboard.js"' in text
    assert "http://" not in text and "https://" not in text  # nothing from a CDN
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, headers, body = request(board, "GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    assert request(board, "GET", "/static/../server.py")[0] == 404


def test_the_overview_answers_every_section_on_an_idle_broker(board: Dashboard) -> None:
    status, overview = api(board, "GET", "/api/overview")
    assert status == 200
    assert overview["workers"] == {"workers": [], "heartbeats_listed": True}
    assert overview["queues"] == {"queues": [{"name": "celery", "depth": 0}]}
    assert overview["tasks"] == {"in_flight": [], "recent": [], "failures": []}
    assert len(overview["throughput"]["per_minute"]) == 60
    assert overview["dead_letters"] == {"kept": True, "dead_letters": []}
    assert overview["app"]["events"]["error"] == "turned off (--no-events)"


def test_a_queued_task_shows_in_its_queue_and_a_stored_failure_by_id(board: Dashboard) -> None:
    app = board.app
    app.send_task("dashboard_unit.add", (1, 2))
    app.backend.mark_as_failure("t-failed", ValueError("boom"), traceback="Traceback: boom")
    status, queues = api(board, "GET", "/api/queues")
    assert queues["queues"] == [{"name": "celery", "depth": 1}]
    status, task = api(board, "GET", "/api/task/t-failed")
    assert status == 200
    assert task["stored"]["state"] == "FAILURE"
    assert task["stored"]["traceback"] == "Traceback: boom"
    assert "ValueError('boom')" in task["stored"]["exception"]
    assert task["events"] is None


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), [
    ("GET", "/api/nope", None, 404, "no such page: /api/nope"),
    ("GET", "/api/tasks?limit=0", None, 400, "limit must be a whole number from 1 to 1000"),
    ("GET", "/api/tasks?limit=x", None, 400, "(got 'x')"),
    ("GET", "/api/tasks?state=DONE", None, 400, "state must be one of"),
    ("GET", "/api/dead-letters?limit=5000", None, 400, "from 1 to 1000"),
    ("POST", "/api/workers", {}, 404, "no such action: POST /api/workers"),
    ("POST", "/api/dead-letters/replay", {}, 400, '{"all": true}'),
    ("POST", "/api/dead-letters/replay", {"ids": []}, 400, '{"ids": ['),
    ("POST", "/api/dead-letters/replay", {"ids": [1]}, 400, '{"ids": ['),
    ("POST", "/api/dead-letters/replay", {"ids": ["x"], "all": True}, 400, '{"all": true}'),
    ("POST", "/api/dead-letters/replay", {"ids": ["nope"]}, 404,
     "no dead letter with id 'nope'; nothing was replayed"),
])
def test_bad_requests_get_one_line_saying_what_to_do(board: Dashboard, method: str, path: str,
                                                     body: Any, status: int, says: str) -> None:
    got, answer = api(board, method, path, body)
    assert got == status
    assert says in answer["error"] and "\n" not in answer["error"]


def test_a_post_must_be_json_so_a_cross_site_form_cannot_replay(board: Dashboard) -> None:
    status, answer = api(board, "POST", "/api/dead-letters/replay", {"all": True},
                         content_type="application/x-www-form-urlencoded")
    assert status == 415 and "application/json" in answer["error"]


def test_other_host_names_are_refused_while_bound_to_loopback(board: Dashboard) -> None:
    status, answer = api(board, "GET", "/api/workers", Host="evil.example:5555")
    assert status == 403 and "loopback" in answer["error"]
    for host in (f"localhost:{board.port}", f"127.0.0.1:{board.port}", "[::1]:80"):
        assert api(board, "GET", "/api/workers", Host=host)[0] == 200


def test_replay_all_on_an_empty_store_replays_nothing(board: Dashboard) -> None:
    assert api(board, "POST", "/api/dead-letters/replay", {"all": True}) == (200, {"replayed": 0})


def test_host_of_reads_names_ports_and_ipv6() -> None:
    assert host_of("127.0.0.1:5555") == "127.0.0.1"
    assert host_of("localhost") == "localhost"
    assert host_of("[::1]:5555") == "::1"
    assert host_of("::1") == "::1"


def test_a_port_in_use_is_an_os_error_naming_it(board: Dashboard) -> None:
    second = Dashboard(board.app, port=board.port, events=False)
    with pytest.raises(OSError):
        second.start()
