"""Tasks the rate-limit integration tests run in worker subprocesses; broker and results from
the environment, like app_tasks.

Each task appends ``<start time> <task id> <pid>`` to a ledger file named in its arguments as it
starts (``os.write`` on an ``O_APPEND`` file: whole lines, whichever process writes them), so the
tests read when calls started from outside the system under test.
"""

from __future__ import annotations

import os
import time

from celeriac import Celery
from tests.integration.ledger import append

app = Celery("tests.integration.rate_tasks")


@app.task(bind=True, rate_limit="20/s")
def paced(self, ledger: str) -> None:
    """At most 20 starts a second, across every worker."""
    append(ledger, f"{time.time()!r} {self.request.id} {os.getpid()}")


@app.task(bind=True, rate_limit="100/s")
def brisk(self, ledger: str) -> None:
    """At most 100 starts a second, across every worker: a rate whose slots workers take in
    blocks of five (worker/rate_limits.py)."""
    append(ledger, f"{time.time()!r} {self.request.id} {os.getpid()}")


@app.task(bind=True)
def free(self, ledger: str) -> None:
    """No rate of its own: only what ``app.control.rate_limit`` sets."""
    append(ledger, f"{time.time()!r} {self.request.id} {os.getpid()}")
