"""The dashboard's HTTP side: a JSON API and one static page, on the standard library's server.

Layer: dashboard. ``ThreadingHTTPServer`` answers each request on a thread of its own, so a slow
broker call in one panel never holds up the page or another request. There is no
authentication: the server binds to 127.0.0.1 unless told otherwise, and two checks keep other
web pages the browser has open from using it: while bound to a loopback address, a request
whose ``Host`` is not a loopback name is refused (DNS rebinding), and a POST must carry a JSON
body (a cross-site form cannot send ``application/json`` without a CORS preflight, which this
server never grants).

The API (every answer is JSON; errors are ``{"error": "<one line>"}`` with a 4xx/5xx status):

- ``GET /api/overview``: everything the page shows, each section computed on its own (a
  section that failed carries its own ``error``);
- ``GET /api/workers``, ``/api/queues``, ``/api/throughput``, ``/api/dispatches``,
  ``/api/batches``: one section each;
- ``GET /api/tasks?state=FAILURE&name=proj.add&limit=100``: tasks remembered from events;
- ``GET /api/task/<id>``: one task, from events and from the result store;
- ``GET /api/dead-letters?limit=100``; ``POST /api/dead-letters/replay`` with
  ``{"ids": [...]}`` or ``{"all": true}``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ..utils.text import one_line
from .monitor import EVENT_STATES

if TYPE_CHECKING:
    from . import Dashboard

logger = logging.getLogger("celeriac.dashboard")

#: the page's files (nothing else under /static/ is served)
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: what the page may load: its own files only (no CDN, no inline script)
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
#: the states ``/api/tasks?state=`` filters on
TASK_STATES = frozenset(EVENT_STATES.values())
#: the largest POST body read (a replay of a few thousand ids)
MAX_BODY = 1 << 20
#: the most rows one list answer holds
MAX_LIMIT = 1000

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_TASK_PATH = re.compile(r"^/api/task/(?P<id>[^/]+)$")


class ApiError(Exception):
    """A request the API refuses: its status and the one line that says why."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host name of a ``Host`` header (``127.0.0.1:5555`` -> ``127.0.0.1``, IPv6 kept)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def int_param(query: dict[str, list[str]], name: str, default: int) -> int:
    """A whole-number query parameter from 1 to ``MAX_LIMIT``."""
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number from 1 to "
                                               f"{MAX_LIMIT} (got {values[-1]!r})")
    return value


def _text_param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values and values[-1] else None


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server of one ``Dashboard`` (request threads are daemons: stopping the dashboard
    never waits for a browser that keeps a connection open)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.loopback_only = _is_loopback(address[0])
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "celeriac-dashboard"
    protocol_version = "HTTP/1.1"

    # ---- dispatch ----------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._answer(self._post)

    def _answer(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        try:
            self._check_host()
            parts = urlsplit(self.path)
            route(unquote(parts.path), parse_qs(parts.query))
        except ApiError as exc:
            self._json({"error": str(exc)}, exc.status)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception as exc:  # noqa: BLE001 - one request failed, the server goes on
            logger.exception("dashboard: %s %s failed", self.command, self.path)
            self._json({"error": one_line(exc)}, HTTPStatus.BAD_GATEWAY)

    def _check_host(self) -> None:
        if not self.server.loopback_only:
            return
        host = host_of(self.headers.get("Host", ""))
        if host and not _is_loopback(host):
            raise ApiError(HTTPStatus.FORBIDDEN,
                           f"this dashboard answers only to loopback names (got Host {host!r}): "
                           "open http://127.0.0.1:<port>/, or start it with --address to serve "
                           "other names")

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        board = self.server.dashboard
        if path in ("/", "/index.html"):
            self._static("index.html")
            return
        if path.startswith("/static/"):
            self._static(path[len("/static/"):])
            return
        sections: dict[str, Callable[[], Any]] = {
            "/api/overview": board.overview,
            "/api/workers": board.workers,
            "/api/queues": board.queues,
            "/api/throughput": board.throughput,
            "/api/dispatches": board.dispatches,
            "/api/batches": board.batches,
        }
        if path in sections:
            self._json(sections[path]())
        elif path == "/api/tasks":
            state = _text_param(query, "state")
            if state is not None and state not in TASK_STATES:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"state must be one of "
                               f"{', '.join(sorted(TASK_STATES))} (got {state!r})")
            self._json(board.tasks(state=state,
                                   name=_text_param(query, "name"),
                                   limit=int_param(query, "limit", 100)))
        elif path == "/api/dead-letters":
            self._json(board.dead_letters(limit=int_param(query, "limit", 100)))
        elif (match := _TASK_PATH.match(path)) is not None:
            self._json(board.task(match["id"]))
        else:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {path} (the API: "
                           "/api/overview, /api/workers, /api/queues, /api/tasks, "
                           "/api/task/<id>, /api/throughput, /api/dead-letters, "
                           "/api/dispatches, /api/batches)")

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        if path != "/api/dead-letters/replay":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such action: POST {path} (the one action: "
                           "POST /api/dead-letters/replay)")
        body = self._json_body()
        ids = body.get("ids")
        replay_all = body.get("all") is True
        if replay_all == (ids is not None) or (
                ids is not None and (not isinstance(ids, list) or not ids
                                     or not all(isinstance(i, str) for i in ids))):
            raise ApiError(HTTPStatus.BAD_REQUEST, 'send {"ids": ["<dead-letter id>", ...]} '
                           'or {"all": true}')
        try:
            self._json(self.server.dashboard.replay(None if replay_all else ids))
        except KeyError as exc:
            raise ApiError(HTTPStatus.NOT_FOUND, str(exc.args[0])) from exc

    def _json_body(self) -> dict[str, Any]:
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"send the body as Content-Type: application/json (got {kind!r})")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            raise ApiError(HTTPStatus.BAD_REQUEST,
                           f"the body must be a JSON object of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {one_line(exc)}"
                           ) from exc
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    # ---- answers -----------------------------------------------------------------------------
    def _static(self, name: str) -> None:
        kind = STATIC_FILES.get(name)
        if kind is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such file: /static/{name}")
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, data, kind,
                   {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
                   if name.endswith(".html") else {})

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        data = json.dumps(value, default=repr).encode()
        self._send(status, data, "application/json")

    def _send(self, status: HTTPStatus, data: bytes, kind: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        logger.debug("dashboard %s: " + format, self.address_string(), *args)
