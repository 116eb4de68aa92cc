"""Periodic tasks: ``celeriac beat``, ``worker -B`` and the schedule kept in the result store.

Layer: beat (a feature on top of the client side, like dispatch and batches). ``entries`` is the
shape of an entry, ``book`` the stored schedule (``app.periodic_tasks``), ``service`` the beat
that fires it. See docs/periodic-tasks.md.
"""

from .book import NoSuchEntry, ScheduleBook
from .entries import Entry
from .service import Beat

__all__ = ["Beat", "Entry", "NoSuchEntry", "ScheduleBook"]
