"""``celery.canvas`` names mapped onto celeriac; stamping is a stand-in that says it is missing."""

from typing import Any

from celeriac.canvas import *  # noqa: F403
from celeriac.canvas import Signature, chain, chord, group, maybe_signature, signature  # noqa: F401

_chain = chain


class StampingVisitor:
    """Celery 5.3's stamping visitor. celeriac has no stamping: subclassing works (so task
    modules import), using one raises."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("stamping (StampingVisitor) is not supported by celeriac")
