"""The app the beat integration tests run in beat and worker subprocesses; broker and results
from the environment, like app_tasks.

``BEAT_LEDGER`` (a file), when set, puts one entry in ``beat_schedule``: ``tick`` every
``BEAT_EVERY`` seconds (default 1). ``BEAT_LEASE`` is ``beat_leader_lease`` (default 2 s, short
so a takeover fits in a test). Each run of ``tick`` appends "<unix time> <task id> <pid>" to the
ledger, outside the system under test.
"""

from __future__ import annotations

import os
import time

from celeriac import Celery
from tests.integration.ledger import append

LEDGER = os.environ.get("BEAT_LEDGER")
EVERY = float(os.environ.get("BEAT_EVERY") or 1)

app = Celery("tests.integration.beat_tasks",
             beat_leader_lease=float(os.environ.get("BEAT_LEASE") or 2))
if LEDGER:
    app.conf.beat_schedule = {
        "tick": {"task": "tests.integration.beat_tasks.tick", "schedule": EVERY,
                 "args": [LEDGER]}}


@app.task(bind=True)
def tick(self, ledger: str) -> None:
    append(ledger, f"{time.time():.3f} {self.request.id} {os.getpid()}")
