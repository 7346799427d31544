"""Offset order within one WAL partition, whatever order faust delivers in.

The fold needs a role's events in WAL order. faust delivers a partition in
order except around a rebalance: when a worker keeps a partition, records it
fetched before the rebalance can reach the stream after the rebalance (with
the new generation id) and before the records faust re-reads from the
committed offset. Folding those early records on the state would skip the
records in between (wrong seqs, a role created twice...).

``Sequencer`` tracks ``next_offset``, the first offset the partition's state
does not reflect yet, and sorts each delivery into: records to fold now (the
contiguous run from ``next_offset``), records already folded (redeliveries,
kept only to be acknowledged after the next checkpoint) and records beyond a
gap, held back until the gap is filled. A gap that is real (offsets a
transactional producer's markers or compaction removed) is accepted after
``gap_timeout_s`` without a rebalance.

Invariants: ``next_offset`` only advances through ``commit`` of a plan whose
records were folded; a fresh sequencer (a new actor, whose first delivery
starts at the committed offset) takes its first record as the start; every
record handed in ends up in exactly one of fold, seen or held.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def offset_of(event: Any) -> int:
    return int(event.message.offset)


@dataclass(frozen=True)
class Plan:
    fold: list[Any]
    """Records to fold now, in offset order, contiguous from the old next offset."""
    seen: list[Any]
    """Records whose offset the state already reflects (acknowledge after a checkpoint)."""
    held: dict[int, Any]
    """Records beyond a gap, by offset."""
    next_offset: int | None


@dataclass
class Sequencer:
    """Offset bookkeeping of one partition actor (see the module docstring)."""

    gap_timeout_s: float = 10.0
    next_offset: int | None = None
    held: dict[int, Any] = field(default_factory=dict)
    held_since: float | None = None

    def plan(self, events: Iterable[Any], *, accept_gap: bool = False) -> Plan:
        candidates = dict(self.held)
        seen: list[Any] = []
        for event in events:
            if candidates.setdefault(offset_of(event), event) is not event:
                seen.append(event)  # the same offset twice: one copy is enough
        nxt = self.next_offset
        if accept_gap and candidates and (nxt is None or nxt < min(candidates)):
            nxt = min(candidates)
        fold: list[Any] = []
        held: dict[int, Any] = {}
        for offset in sorted(candidates):
            event = candidates[offset]
            if nxt is None:
                nxt = offset
            if offset < nxt:
                seen.append(event)
            elif offset == nxt and not held:
                fold.append(event)
                nxt += 1
            else:
                held[offset] = event
        return Plan(fold, seen, held, nxt)

    def commit(self, plan: Plan, now: float) -> None:
        self.next_offset = plan.next_offset
        if not plan.held:
            self.held_since = None
        elif not self.held or plan.fold:
            self.held_since = now  # a new gap, or the old one moved
        self.held = plan.held

    def gap_expired(self, now: float) -> bool:
        return self.held_since is not None and now - self.held_since >= self.gap_timeout_s
