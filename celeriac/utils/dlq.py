"""Dead-letter replay: put set-aside messages back on their queue, byte for byte.

Layer: utils (over the transport interface). Publish first, then delete: a crash in between
leaves a duplicate in the store, never a lost message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ..transport.base import Transport


def replay(transport: "Transport", ids: Sequence[str] | None, queue: str | None = None,
           batch: int = 500) -> int:
    """Replay the dead letters ``ids`` (every one when None); returns how many were replayed."""
    from ..transport.base import DeadLetterStore, Outgoing

    if not isinstance(transport, DeadLetterStore):
        raise TypeError(f"{transport!r} keeps no dead letters")
    done = 0
    if ids is None:
        while True:
            letters = transport.dead_letters(batch)
            if not letters:
                return done
            transport.publish([Outgoing(queue or d.queue, d.message) for d in letters])
            done += transport.dead_letter_delete([d.id for d in letters])
    for dead_letter_id in ids:
        letter = transport.dead_letter_get(dead_letter_id)
        if letter is None:
            raise KeyError(f"no dead letter with id {dead_letter_id!r}")
        transport.publish([Outgoing(queue or letter.queue, letter.message)])
        done += transport.dead_letter_delete([letter.id])
    return done
