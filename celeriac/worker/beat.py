"""``worker -B``: a beat inside the worker, as a built-in extension.

Layer: worker. The embedded beat is the same scheduler as ``celeriac beat`` (beat/service.py),
run in a thread from the worker's start to its stop. Since beats elect one leader through the
result store, any number of workers may run with ``-B``: each run still fires once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..beat import Beat
from .extensions import WorkerExtension

if TYPE_CHECKING:
    from ..app import Celery
    from .consumer import Consumer


class EmbeddedBeat(WorkerExtension):
    """Built when the worker starts, so a bad ``beat_schedule`` or a store that cannot hold the
    schedule stops it with one line before it consumes."""

    def __init__(self, app: Celery, hostname: str) -> None:
        self.beat = Beat(app, hostname=hostname, embedded=True)

    def on_worker_start(self, consumer: Consumer) -> None:
        self.beat.setup()  # here, not in the beat's thread: a store it cannot use stops the worker
        self.beat.start()

    def on_worker_stop(self, consumer: Consumer) -> None:
        self.beat.stop()
