"""Broker URLs for RabbitMQ: ``amqp://``, ``pyamqp://`` and ``amqps://`` read as kombu reads them.

Layer: utils (no I/O, no py-amqp import: ``close_quietly`` takes the connection), shared by
the amqp:// transport and the rpc:// result backend. ``amqp://user:password@host:port/vhost?options``:
the port defaults to 5672 (5671 for ``amqps``, which also turns TLS on), user and password to
``guest``, and the virtual host is the path after the first ``/``, percent-decoded, ``/`` when
empty (``amqp://guest@localhost//`` and ``amqp://h/`` both name ``/``; ``amqp://h/foo`` names
``foo``; ``amqp://h/%2Ffoo`` names ``/foo``). Query options: ``heartbeat``, ``connect_timeout``,
``login_method`` (and ``ssl=1`` on an ``amqp://`` URL).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

#: the URL schemes this transport serves
SCHEMES = ("amqp", "pyamqp", "amqps")
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
_TRUE = ("1", "true", "yes", "on")
_logger = logging.getLogger("celeriac.transport.amqp")


@dataclass(slots=True)
class BrokerAddress:
    """Where and how to connect, as the URL says it."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    userid: str = "guest"
    password: str = "guest"
    virtual_host: str = "/"
    tls: bool = False
    #: query options (``heartbeat`` and ``connect_timeout`` as floats, ``login_method``)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str) -> BrokerAddress:
    """Read an ``amqp://``, ``pyamqp://`` or ``amqps://`` URL (see the module docstring)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"not an AMQP broker URL (amqp://, pyamqp://, amqps://): {url!r}")
    parts = urlsplit(url)
    tls = scheme == "amqps"
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in the broker URL: {exc}") from None
    address = BrokerAddress(
        host=unquote(parts.hostname or "") or "localhost",
        port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        userid=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        virtual_host=_vhost(parts.path),
        tls=tls)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("heartbeat", "connect_timeout"):
            try:
                address.options[key] = float(value)
            except ValueError:
                raise ValueError(f"broker URL option {key}={value!r} is not a number") from None
        elif key == "login_method":
            address.options[key] = value
        elif key == "ssl":
            address.tls = address.tls or value.lower() in _TRUE
    return address


def _vhost(path: str) -> str:
    """The virtual host from the URL's path: what follows the first ``/``, ``/`` if nothing."""
    rest = path[1:] if path.startswith("/") else path
    return unquote(rest) or "/"


def connection_params(address: BrokerAddress, *, ssl: Any = None,
                      connect_timeout: float | None = None, login_method: str | None = None,
                      heartbeat: float = 0) -> dict[str, Any]:
    """py-amqp ``Connection`` keyword arguments for ``address``, as the amqp:// transport and the
    rpc:// backend both read them: ``ssl`` is Celery's ``broker_use_ssl`` (a dict of ssl options,
    or true; ``amqps://`` or ``?ssl=1`` mean TLS too); ``connect_timeout`` and ``login_method``
    default to the URL's query options (4 s, py-amqp's own method)."""
    tls: Any = dict(ssl) if isinstance(ssl, Mapping) else bool(ssl or address.tls)
    params: dict[str, Any] = {
        "host": address.hostport, "userid": address.userid, "password": address.password,
        "virtual_host": address.virtual_host, "ssl": tls,
        "connect_timeout": float(connect_timeout if connect_timeout is not None
                                 else address.options.get("connect_timeout", 4.0)),
        "heartbeat": int(heartbeat),
    }
    method = login_method or address.options.get("login_method")
    if method:
        params["login_method"] = method
    return params


def close_quietly(conn: Any) -> None:
    """Close a py-amqp connection that may be broken already: without the close handshake if it
    fails (``collect`` frees what it holds), never raising."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already broken: nothing more to do with it
        try:
            conn.collect()
        except Exception as exc:  # noqa: BLE001
            _logger.debug("closing a broken AMQP connection: %r", exc)
