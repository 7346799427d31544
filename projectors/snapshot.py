"""What the projector reads from a commit record's snapshot: ONE function.

The committed state is typed (``rolebus.wal.snapshot.Snapshot``);
``read_snapshot`` takes the columns the projector writes from it: the role's
content fields, its live seq ranges and the snapshot's canonical JSON (the
``commits.snapshot`` JSONB, the very text the state digest hashes).

Invariants: ``live`` is the lineage's closed ranges plus ``[branch_start,
seq]``, normalized (``wal.snapshot.live_ranges``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rolebus.projectors.seqranges import Ranges
from rolebus.wal.records import CommitRecord
from rolebus.wal.snapshot import live_ranges


@dataclass(frozen=True)
class SnapshotView:
    lifecycle: str
    name: str
    persona: str
    traits: Mapping[str, str]
    model: str | None
    skills: tuple[str, ...]
    seq: int
    live: Ranges
    json_text: str
    """The whole snapshot as canonical JSON text (the commits.snapshot JSONB)."""


def read_snapshot(rec: CommitRecord) -> SnapshotView:
    s = rec.snapshot
    return SnapshotView(
        lifecycle=s.lifecycle.value, name=s.name, persona=s.persona, traits=dict(s.traits),
        model=s.model, skills=tuple(s.skills), seq=s.seq, live=live_ranges(s),
        json_text=s.canonical_text,
    )  # fmt: skip
