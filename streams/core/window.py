"""The dedupe window of a role: ids of its recently applied events.

Every event is checked against it, so a lookup and an insert must not cost
the window's size: ids are kept as integers (``UUID.__eq__`` is Python code,
int comparison is not) in chunks. Full chunks are frozensets, shared by every
later state; only the open tail, shorter than a chunk, is copied per event.

Contract: after ``add``, the window holds at least the last ``size`` ids
added and fewer than ``size + 2 * chunk``; what it holds depends only on the
sequence of ids added, so a replay of the same log keeps the same window.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

MAX_CHUNK = 64


def chunk_for(size: int) -> int:
    """Ids per chunk of a window of ``size``: small windows stay small."""
    return max(1, min(MAX_CHUNK, size))


@dataclass(frozen=True)
class EventWindow:
    """See the module docstring. ``full`` is oldest first; ``tail`` in arrival order."""

    full: tuple[frozenset[int], ...] = ()
    tail: tuple[int, ...] = ()

    def __contains__(self, event_id: object) -> bool:
        if not isinstance(event_id, uuid.UUID):
            return False
        key = event_id.int
        return key in self.tail or any(key in chunk for chunk in self.full)

    def __len__(self) -> int:
        return sum(map(len, self.full)) + len(self.tail)

    def __iter__(self) -> Iterator[uuid.UUID]:
        """The ids, chunk by chunk (sorted within a full chunk), tail last."""
        for chunk in self.full:
            yield from (uuid.UUID(int=key) for key in sorted(chunk))
        yield from (uuid.UUID(int=key) for key in self.tail)

    def add(self, event_id: uuid.UUID, size: int) -> EventWindow:
        """This window with ``event_id`` added, keeping at least the last ``size``."""
        tail = (*self.tail, event_id.int)
        chunk = chunk_for(size)
        if len(tail) < chunk:
            return EventWindow(self.full, tail)
        keep = -(-size // chunk)  # full chunks that cover ``size`` ids
        return EventWindow((*self.full, frozenset(tail))[-keep:], ())

    @classmethod
    def of(cls, *event_ids: uuid.UUID, size: int) -> EventWindow:
        window = cls()
        for event_id in event_ids:
            window = window.add(event_id, size)
        return window
