"""RabbitMQ over TLS (``amqps://``), live: a real TLS handshake on loopback, a real worker.

The shared RabbitMQ has no TLS listener, so the test puts one in front of it: ``TlsProxy``
accepts TLS on a free loopback port with a server certificate made for the test (openssl: a CA,
and a certificate for 127.0.0.1/localhost it signed), and forwards the decrypted bytes to
127.0.0.1:5672. Everything celeriac does is real: py-amqp's TLS transport, the certificate
check against ``broker_use_ssl``'s ``ca_certs``, publisher confirms, the worker's consumer
connection (which reads a TLS socket in slices under its write lock while other threads ack).

This module is also the worker's app (``-A tests.integration.test_amqp_tls``): the CA it
trusts comes from ``CELERIAC_TEST_AMQP_TLS_CA``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from celeriac import Celery
from celeriac.exceptions import OperationalError
from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT, private_vhost, require_rabbitmq
from tests.tls import certificates
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CA_ENV = "CELERIAC_TEST_AMQP_TLS_CA"
WORKER_APP = "tests.integration.test_amqp_tls"


def tls_options(ca: Path | str, **extra: Any) -> dict[str, Any]:
    """``broker_use_ssl`` as a Celery user writes it: verify the server against ``ca``."""
    return {"ca_certs": str(ca), "cert_reqs": ssl.CERT_REQUIRED, **extra}


# ---- the worker's app -----------------------------------------------------------------------
app = Celery(WORKER_APP, set_as_current=False)
if os.environ.get(CA_ENV):
    app.conf.update(broker_use_ssl=tls_options(os.environ[CA_ENV]))


@app.task(name="tls.add")
def add(x: int, y: int) -> int:
    return x + y


# ---- certificates and the TLS listener ------------------------------------------------------
class TlsProxy:
    """A TLS listener on a free loopback port, terminated here, forwarding to RabbitMQ.

    One asyncio loop in a thread of its own (asyncio's TLS goes through memory BIOs on that one
    thread, so an SSL object is never read and written from two threads at once). Every TLS
    session that completed is in ``sessions`` (its protocol version), every handshake that
    failed in ``refused`` (what the server side saw): what the assertions read to know the
    traffic really went through TLS.
    """

    def __init__(self, certs: dict[str, Path]) -> None:
        self.certs = certs
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs["server"], certs["server-key"])
        self.sessions: list[str] = []
        self.refused: list[str] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy",
                                        daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                await client_w.start_tls(self.context, ssl_handshake_timeout=10)
            except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                self.refused.append(f"{type(exc).__name__}: {exc}")
                return
            self.sessions.append(client_w.get_extra_info("ssl_object").version())
            try:
                upstream_r, upstream_w = await asyncio.open_connection(RABBITMQ_HOST,
                                                                       RABBITMQ_PORT)
            except OSError:
                return
            try:
                await asyncio.gather(self._pipe(client_r, upstream_w),
                                     self._pipe(upstream_r, client_w))
            finally:
                upstream_w.close()
        finally:
            self._handlers.discard(task)
            client_w.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy until either side ends, then close ``sink`` (so the other pipe ends too)."""
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            sink.close()

    def stop(self) -> None:
        async def shut() -> None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await asyncio.sleep(0)  # let the transports finish closing

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsProxy]:
    require_rabbitmq()
    proxy = TlsProxy(certificates(tmp_path_factory.mktemp("amqp-tls")))
    yield proxy
    proxy.stop()


@pytest.fixture
def tls_url(tls_proxy: TlsProxy) -> Iterator[str]:
    """``amqps://`` to the proxy, on a virtual host of this test's own."""
    with private_vhost() as plain:
        vhost = urlsplit(plain).path[1:]
        yield f"amqps://guest:guest@localhost:{tls_proxy.port}/{vhost}"


# ---- the tests ------------------------------------------------------------------------------
def test_publish_with_confirms_and_a_worker_over_tls(tls_proxy, tls_url, start_worker,
                                                     sqlite_url):
    ca = tls_proxy.certs["ca"]
    client = Celery("tls-client", broker=tls_url, backend=sqlite_url, set_as_current=False,
                    broker_use_ssl=tls_options(ca))
    sessions = len(tls_proxy.sessions)
    try:
        total = 60
        # delay() returns once RabbitMQ confirmed the message: all are in the queue before any
        # worker runs (the count itself read back over TLS)
        results = [client.send_task("tls.add", args=(n, n)) for n in range(total)]
        assert client.transport.qsize("celery") == total
        assert len(tls_proxy.sessions) > sessions, "the client did not connect through TLS"
        client_sessions = len(tls_proxy.sessions)

        worker = start_worker("-P", "threads", "-c", "4", app=WORKER_APP, url=tls_url,
                              env={CA_ENV: str(ca), "CELERIAC_RESULT_BACKEND": sqlite_url})
        assert [r.get(timeout=30) for r in results] == [2 * n for n in range(total)], \
            worker.log()
        # the worker's own connections went through the TLS listener too
        assert len(tls_proxy.sessions) > client_sessions
        # every early ack reached RabbitMQ: nothing left, nothing unacked
        wait_for(lambda: client.transport.qsize("celery") == 0, 20,
                 message=lambda: f"messages left in the queue:\n{worker.log()}")
        # one more after the worker sat idle on its TLS consumer connection (slice reads)
        assert client.send_task("tls.add", args=(20, 22)).get(timeout=30) == 42
        assert worker.stop() == 0, worker.log()
        assert set(tls_proxy.sessions) <= {"TLSv1.2", "TLSv1.3"}
        assert tls_proxy.refused == []
    finally:
        client.close()


def test_rpc_results_over_tls(tls_proxy, tls_url, start_worker):
    ca = tls_proxy.certs["ca"]
    client = Celery("tls-rpc-client", broker=tls_url, backend="rpc://", set_as_current=False,
                    broker_use_ssl=tls_options(ca))
    try:
        worker = start_worker("-P", "threads", "-c", "2", app=WORKER_APP, url=tls_url,
                              env={CA_ENV: str(ca), "CELERIAC_RESULT_BACKEND": "rpc://"})
        results = [client.send_task("tls.add", args=(n, 1)) for n in range(10)]
        assert [r.get(timeout=30) for r in results] == [n + 1 for n in range(10)], worker.log()
        assert worker.stop() == 0, worker.log()
    finally:
        client.close()


@pytest.mark.parametrize("case", ["another CA", "another host name"])
def test_a_server_the_client_does_not_trust_is_refused(tls_proxy, tls_url, tmp_path, sqlite_url,
                                                       case):
    if case == "another CA":
        options = tls_options(certificates(tmp_path)["ca"])
        reason = "certificate verify failed: unable to get local issuer certificate"
    else:
        options = tls_options(tls_proxy.certs["ca"], server_hostname="broker.example")
        reason = "certificate verify failed: Hostname mismatch"
    refused = len(tls_proxy.refused)
    client = Celery("tls-refused", broker=tls_url, backend=sqlite_url, set_as_current=False,
                    broker_use_ssl=options)
    rpc_client = Celery("tls-refused-rpc", broker=tls_url, backend="rpc://",
                        set_as_current=False, broker_use_ssl=options)
    try:
        # one error, after the few quick retries of task_publish_retry_policy
        with pytest.raises(OperationalError, match=reason) as caught:
            client.send_task("tls.add", args=(1, 1))
        assert str(caught.value).startswith(
            "Cannot publish to the broker at amqps://guest:**@localhost:"), caught.value
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        # the server side saw the client abort the handshake: nothing reached RabbitMQ
        assert len(tls_proxy.refused) > refused
        # the rpc:// backend's connection checks the certificate as well
        with pytest.raises(OperationalError, match=reason) as caught:
            rpc_client.send_task("tls.add", args=(1, 1))
        assert str(caught.value).startswith("could not declare the rpc:// reply queue"), \
            caught.value
    finally:
        client.close()
        rpc_client.close()


def test_the_right_host_name_is_accepted(tls_proxy, tls_url):
    client = Celery("tls-hostname", broker=tls_url, backend="rpc://", set_as_current=False,
                    broker_use_ssl=tls_options(tls_proxy.certs["ca"],
                                               server_hostname="localhost"))
    try:
        client.send_task("tls.add", args=(1, 1))
        assert client.transport.qsize("celery") == 1
    finally:
        client.close()


def test_a_worker_that_does_not_trust_the_server_stops_at_once(tls_proxy, tls_url, tmp_path,
                                                               start_worker, sqlite_url):
    stranger = certificates(tmp_path / "stranger")["ca"]
    worker = start_worker("-P", "solo", app=WORKER_APP, url=tls_url, ready=False,
                          env={CA_ENV: str(stranger), "CELERIAC_RESULT_BACKEND": sqlite_url})
    worker.wait_for_log("certificate verify failed")
    wait_for(lambda: worker.proc.poll() is not None, 30,
             message=lambda: f"the worker is still retrying:\n{worker.log()}")
    assert worker.proc.returncode == 1, worker.log()
    log = worker.log()
    assert "certificate verify failed: unable to get local issuer certificate" in log, log
    assert "Not retrying: waiting will not fix this (check the host name in the URL and " \
           "broker_use_ssl's ca_certs)" in log, log
    assert "Trying again" not in log, log
    assert " ready." not in log
