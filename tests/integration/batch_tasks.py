"""Batch tasks the batches integration tests run, in-process (solo/threads) and in worker
subprocesses (prefork); broker and results from the environment, like app_tasks.

Batches are observed outside the system under test: the tasks append one line per batch (or per
request) to a ledger file named in each request's kwargs, with ``os.write`` on an ``O_APPEND``
file so lines from several processes never interleave. ``BATCH_VT`` (lease seconds) is read at
import, so a subprocess worker can be given a short visibility timeout.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from celeriac import Celery
from celeriac.batches import Batches
from tests.integration.ledger import append


def _settings() -> dict:
    settings: dict = {}
    if os.environ.get("BATCH_VT"):
        settings["broker_transport_options"] = {"visibility_timeout": float(os.environ["BATCH_VT"])}
    return settings


app = Celery("tests.integration.batch_tasks", **_settings())


def ledger_of(requests: list) -> str:
    return requests[0].kwargs["ledger"]


# ---- the README's examples, as written ----------------------------------------------------------
@app.task(base=Batches, flush_every=100, flush_interval=10)
def count_click(requests):
    count = Counter(request.kwargs['url'] for request in requests)
    for url, n in count.items():
        print('>>> Clicks: {0} -> {1}'.format(url, n))


def wot_api_real(ids):
    """Stands in for the README's bulk API: one response per id, in order."""
    return [f"response for {i}" for i in ids]


@app.task(base=Batches, flush_every=100, flush_interval=10)
def wot_api(requests):
    responses = wot_api_real((request.args[0] for request in requests))
    for response, request in zip(responses, requests):
        app.backend.mark_as_done(request.id, response, request=request)


# ---- batch sizes --------------------------------------------------------------------------------
@app.task(base=Batches, flush_every=100, flush_interval=1)
def sizes(requests):
    """Ledger ``size pid`` per batch; each request's result is the size of its batch."""
    append(ledger_of(requests), f"{len(requests)} {os.getpid()}")
    for request in requests:
        sizes.mark_as_done(request, len(requests))


# ---- a result per request -----------------------------------------------------------------------
@app.task(base=Batches, flush_every=6, flush_interval=0.5)
def outcomes(requests):
    """Each request says what to do with it (``action``, and ``then`` for a retried one's next
    run); the ledger gets ``run <tag> <retries>`` for every request passed to the task."""
    for request in requests:
        kw = request.kwargs
        retries = request.context.retries or 0
        append(kw["ledger"], f"run {kw['tag']} {retries}")
        action = kw["action"] if retries == 0 else kw.get("then", "done")
        if action == "done":
            outcomes.mark_as_done(request, f"done {kw['tag']}")
        elif action == "fail":
            outcomes.mark_as_failure(request, KeyError(kw["tag"]))
        elif action == "retry":
            outcomes.mark_as_retry(request, exc=RuntimeError("again"), countdown=0.3)
        elif action == "backend":
            app.backend.mark_as_done(request.id, f"stored {kw['tag']}", request=request)
        # "none": left unmarked


@app.task(base=Batches, flush_every=4, flush_interval=0.5)
def explode(requests):
    """Marks what the requests ask for, then raises: the unmarked ones fail with it."""
    for request in requests:
        action = request.kwargs["action"]
        if action == "done":
            explode.mark_as_done(request, "kept")
        elif action == "fail":
            explode.mark_as_failure(request, KeyError("own failure"))
    raise ValueError("the whole batch blew up")


# ---- canvas -------------------------------------------------------------------------------------
@app.task(base=Batches, flush_every=5, flush_interval=0.3)
def double(requests):
    for request in requests:
        double.mark_as_done(request, request.args[0] * 2)


@app.task
def add_one(x):
    return x + 1


@app.task
def total(values):
    return sorted(values)


# ---- revoked and expired ------------------------------------------------------------------------
@app.task(base=Batches, flush_every=10, flush_interval=0.5)
def seen(requests):
    """Ledger: the tag of every request passed to the task."""
    for request in requests:
        append(request.kwargs["ledger"], request.kwargs["tag"])


@app.task(base=Batches, flush_every=3, flush_interval=30)
def seen_late(requests):
    """``seen`` flushed by size only (in a test's time): a request revoked while it waits in the
    buffer is still there when its batch is made."""
    for request in requests:
        append(request.kwargs["ledger"], request.kwargs["tag"])


# ---- a deep queue -------------------------------------------------------------------------------
@app.task(base=Batches, flush_every=50, flush_interval=0.5)
def bounded(requests):
    """Ledger: the size of each batch."""
    append(ledger_of(requests), str(len(requests)))


# ---- worker faults ------------------------------------------------------------------------------
@app.task(base=Batches, flush_every=4, flush_interval=0.5)
def slow_batch(requests):
    """Ledger ``start``/``end <n> <pid> <attempt>`` per request; the first attempt of a batch
    sleeps ``seconds`` (in small steps) between them, so it can be killed mid-batch."""
    path = ledger_of(requests)
    attempts = {}
    for request in requests:
        n = request.kwargs["n"]
        with open(path, "a+") as fh:
            fh.seek(0)
            attempts[n] = 1 + sum(1 for line in fh if line.split()[:2] == ["start", str(n)])
        append(path, f"start {n} {os.getpid()} {attempts[n]}")
    seconds = max(request.kwargs.get("seconds", 0.0) for request in requests)
    if seconds and min(attempts.values()) == 1:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
    for request in requests:
        n = request.kwargs["n"]
        append(path, f"end {n} {os.getpid()} {attempts[n]}")
        slow_batch.mark_as_done(request, n)


@app.task(base=Batches, flush_every=3, flush_interval=0.5, time_limit=1)
def limited(requests):
    """Ledger ``start <pid>``, then sleeps past its one-second time limit."""
    append(ledger_of(requests), f"start {os.getpid()} {len(requests)}")
    time.sleep(requests[0].kwargs["seconds"])
    append(ledger_of(requests), "end")
