"""Throwaway TLS certificates for the live TLS tests (Redis, RabbitMQ), made with openssl."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate for 127.0.0.1/localhost signed by it: paths by name
    (``ca``, ``ca-key``, ``server``, ``server-key``). No openssl: skip, or fail under CI=true."""
    if shutil.which("openssl") is None:
        message = "openssl is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing tool is a failure, not a skip)")
        pytest.skip(message)
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    csr, ext = directory / "server.csr", directory / "san.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=celeriac-test-ca", "-keyout", files["ca-key"], "-out", files["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", files["server-key"], "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", files["ca-key"],
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", files["server"]],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return files
