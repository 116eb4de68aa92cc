"""Remote control: ``app.control`` (the client) and the pidbox messages it shares with workers.

Layer: control (a feature on top of the client side, beside ``dispatch``, ``batches`` and
``beat``). ``client.py`` holds ``Control`` and ``Inspect``; ``mailbox.py`` the wire format and the
queues commands and replies travel on. The worker's side is ``worker/pidbox.py``.
"""

from __future__ import annotations

from .client import Control, DuplicateNodenameWarning, Inspect, flatten_reply

__all__ = ["Control", "DuplicateNodenameWarning", "Inspect", "flatten_reply"]
