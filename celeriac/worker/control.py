"""Where ``app.control`` used to live; it is ``celeriac.control`` now (kept so old imports work).

Layer: worker.
"""

from __future__ import annotations

from ..control import Control, Inspect

__all__ = ["Control", "Inspect"]
