"""Inclusive seq ranges ``(first, last)`` and their PostgreSQL ``int8multirange`` text.

The projector keeps the live / superseded seqs of roles as sorted, disjoint,
non-adjacent ranges (the normal form of ``rolebus.wal.snapshot``, whose range
arithmetic this module uses on plain pairs).

Invariants: every function returns normalized ranges; ``literal`` is the
canonical ``int8multirange`` text (half-open ``[first,last+1)``), so a range
set written and read back compares equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rolebus.wal.snapshot import SeqRange, normalize_ranges, subtract_ranges

Ranges = tuple[tuple[int, int], ...]


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sort, drop empty ranges, merge overlapping or adjacent ones."""
    return normalize_ranges(SeqRange(*r) for r in ranges)


def subtract(ranges: Iterable[tuple[int, int]], removed: Iterable[tuple[int, int]]) -> Ranges:
    """The seqs of ``ranges`` that are not in ``removed``."""
    return subtract_ranges((SeqRange(*r) for r in ranges), (SeqRange(*r) for r in removed))


def add(ranges: Iterable[tuple[int, int]], more: Iterable[tuple[int, int]]) -> Ranges:
    return normalize((*ranges, *more))


def literal(ranges: Sequence[tuple[int, int]]) -> str:
    """``int8multirange`` text, e.g. ``{[1,4),[7,8)}``."""
    return "{" + ",".join(f"[{first},{last + 1})" for first, last in normalize(ranges)) + "}"


def from_multirange(value: Any) -> Ranges:
    """Ranges from psycopg's ``Multirange`` of int8 ``Range`` values (bounds ``[)``)."""
    if value is None:
        return ()
    out = []
    for rng in value:
        lower = rng.lower if rng.lower_inc else rng.lower + 1
        upper = rng.upper - 1 if not rng.upper_inc else rng.upper
        out.append((int(lower), int(upper)))
    return normalize(out)
