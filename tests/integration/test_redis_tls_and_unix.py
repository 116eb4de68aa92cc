"""Redis over TLS (``rediss://``) and over a unix socket, live: a private redis-server with a
certificate made for the test, a real worker, results read back through the same URLs.

The server is the machine's redis-server binary started on a free port (and a socket in the
test's directory), so the shared server the other tests use is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from celeriac import Celery
from tests.conftest import WorkerProcess
from tests.tls import certificates
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        message = f"{binary} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing broker is a failure, not a skip)")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TlsRedis:
    """redis-server with TLS only on a free port, and a unix socket, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.certs = certificates(directory)
        self.tls_port = _free_port()
        self.socket = directory / "redis.sock"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.tls_port),
             "--bind", "127.0.0.1", "--tls-cert-file", str(self.certs["server"]),
             "--tls-key-file", str(self.certs["server-key"]),
             "--tls-ca-cert-file", str(self.certs["ca"]), "--tls-auth-clients", "no",
             "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(directory), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def up() -> bool:
            if self.socket.exists():
                return True
            if self.proc.poll() is not None:
                raise AssertionError("the private TLS redis-server did not start (it exited)")
            return False

        wait_for(up, 10, interval=0.05, message="the private TLS redis-server did not start")

    def tls_url(self, ca: Path | None = None) -> str:
        return (f"rediss://127.0.0.1:{self.tls_port}/0?ssl_cert_reqs=required"
                f"&ssl_ca_certs={ca or self.certs['ca']}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    _need("redis-server")
    _need("openssl")
    server = TlsRedis(tmp_path_factory.mktemp("tls-redis"))
    yield server
    server.stop()


def _round_trip(url: str, tmp_path: Path, *worker_args: str) -> None:
    """A worker and a client on ``url`` (broker and results): a value and a chord come back."""
    from celeriac import chord
    from tests.integration import canvas_tasks

    app = canvas_tasks.app
    app.conf.update(broker_url=url, result_backend=url)
    app.close()
    worker = WorkerProcess("tests.integration.canvas_tasks", url, tmp_path / "worker.log",
                           *worker_args)
    try:
        worker.wait_ready()
        t = canvas_tasks
        assert t.add.delay(2, 3).get(timeout=20) == 5, worker.log()
        assert chord([t.identity.s(i) for i in range(5)], t.xsum.s())().get(timeout=20) == 10
        assert app.transport.qsize("celery") == 0
    finally:
        worker.stop()
        app.close()
        app.conf.update(broker_url=None, result_backend=None)


def test_a_worker_and_a_client_over_tls(tls_redis, tmp_path):
    _round_trip(tls_redis.tls_url(), tmp_path, "-P", "solo")


def test_tls_settings_from_celerys_broker_use_ssl(tls_redis, tmp_path):
    import ssl

    url = f"rediss://127.0.0.1:{tls_redis.tls_port}/0"
    app = Celery("tls-settings", broker=url, backend=url, set_as_current=False,
                 broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                 "ssl_ca_certs": str(tls_redis.certs["ca"])},
                 redis_backend_use_ssl={"ssl_cert_reqs": "required",
                                        "ssl_ca_certs": str(tls_redis.certs["ca"])})
    try:
        app.backend.set_value("probe", 1)
        assert app.backend.get_value("probe") == 1
        assert app.transport.qsize("celery") == 0
    finally:
        app.close()


def test_a_certificate_from_another_ca_is_refused(tls_redis, tmp_path):
    from redis.exceptions import ConnectionError as RedisConnectionError

    stranger = certificates(tmp_path)["ca"]
    app = Celery("tls-refused", broker=tls_redis.tls_url(stranger),
                 backend=tls_redis.tls_url(stranger), set_as_current=False)
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            app.backend.set_value("probe", 1)
    finally:
        app.close()


@pytest.mark.parametrize("scheme", ["unix", "redis+socket"])
def test_a_worker_and_a_client_over_a_unix_socket(tls_redis, tmp_path, scheme):
    url = (f"unix://{tls_redis.socket}?db=1" if scheme == "unix"
           else f"redis+socket://{tls_redis.socket}")
    _round_trip(url, tmp_path, "-P", "threads", "-c", "2")
