"""Writes a finished task leaves for the consumer to send: its result and its chord count.

Layer: worker. With inline settling (a broker that shares each thread's connection with the
result store, see ``transport.base.SharedConnectionSettling``) the executor does not write an
early-acked task's result itself: it records the write here and returns the batch in the
``Outcome``. The consumer then sends it, either at once or staged on the shared connection so
it travels with the thread's next round trip (the next task's ack). Nothing else in the layers
below knows about deferral: the batch is the only carrier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..canvas import chords

if TYPE_CHECKING:
    from ..app import Celery
    from ..backends.base import ResultWrite, StagedWrites


@dataclass(slots=True)
class PendingWrites:
    """Result writes and chord counts, in the order they were made."""

    results: list[ResultWrite] = field(default_factory=list)
    chord_counts: list[chords.ChordCount] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.results or self.chord_counts)

    def send(self, app: Celery) -> None:
        """Write everything now (results first, then the counts that may fire a chord body)."""
        if self.results:
            app.backend.write_results(self.results)
        for part in self.chord_counts:
            chords.count(app, part)

    def stage(self, app: Celery, backend: StagedWrites) -> None:
        """Put everything on this thread's shared connection, in order, to ride along with its
        next round trip (or the consumer's next flush)."""
        if self.results:
            backend.stage_results(self.results)
        for part in self.chord_counts:
            chords.stage(app, backend, part)
