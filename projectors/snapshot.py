"""What the projector reads from a commit record's snapshot: ONE function.

The committed state travels as plain JSON today (``CommitRecord.snapshot``,
``streams.serde.logical_json``); ``read_snapshot`` is the only place that
knows its shape, so a typed snapshot changes this file alone.

Invariants: ``live`` is the lineage's closed ranges plus ``[branch_start,
seq]``, normalized (the role's live seqs at the commit); a malformed snapshot
raises ``RecordError`` naming the commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from rolebus.projectors import seqranges
from rolebus.wal.records import CommitRecord, RecordError


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
    try:
        lineage = snap["lineage"]
        closed = [(int(a), int(b)) for a, b in lineage["closed"]]
        seq = int(snap["seq"])
        return SnapshotView(
            lifecycle=str(snap["lifecycle"]), name=str(snap["name"]),
            persona=str(snap["persona"]),
            traits={str(k): str(v) for k, v in dict(snap["traits"]).items()},
            model=None if snap["model"] is None else str(snap["model"]),
            skills=tuple(str(s) for s in snap["skills"]), seq=seq,
            live=seqranges.normalize((*closed, (int(lineage["branch_start"]), seq))),
            json_text=json.dumps(snap, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(
            f"commit {rec.commit_id} of role '{rec.role_id}': malformed snapshot ({exc!r})"
        ) from exc
