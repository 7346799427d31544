"""What the projector reads from a commit record's snapshot: ONE function.

The committed state is typed (``rolebus.wal.snapshot.Snapshot``);
``read_snapshot`` takes what the store's rows need from it, in one place.

Invariants: ``live`` is the lineage's closed ranges plus ``[branch_start,
seq]``, normalized (the role's live seqs at the commit); ``json_text`` is the
snapshot's canonical JSON (the text its digest was computed from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rolebus.projectors import seqranges
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
    live: seqranges.Ranges
    json_text: str
    """The whole snapshot as JSON text (the commits.snapshot JSONB)."""


def read_snapshot(rec: CommitRecord) -> SnapshotView:
    snap = rec.snapshot
    return SnapshotView(
        lifecycle=snap.lifecycle.value, name=snap.name, persona=snap.persona,
        traits=dict(snap.traits), model=snap.model, skills=snap.skills, seq=snap.seq,
        live=seqranges.normalize((r.first, r.last) for r in live_ranges(snap)),
        json_text=snap.canonical_text,
    )  # fmt: skip
