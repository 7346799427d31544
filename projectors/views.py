"""What the read side returns: small typed views of the context store's rows,
the committed state of a commit, and the diff of two commits.

Pure: nothing here touches PostgreSQL (``rolebus.projectors.queries`` is the
SQL shell that builds these views). ``snapshot_view`` is the ONE place that
reads a commit's snapshot JSON (``commits.snapshot``, the commit record's
``snapshot``) for the read side, through ``rolebus.wal.snapshot``'s typed
parser, so a change of the snapshot's format is a change there only.
``diff_snapshots`` compares two committed states field by field; messages are
compared by their identity (the role they were appended to, their seq and
message id) inside each snapshot's message window.

Invariants: views are frozen; ``diff_snapshots(a, a)`` is empty; the
not-found errors name the object, the tenant and the way to list what exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rolebus.errors import RolebusError
from rolebus.projectors import seqranges
from rolebus.wal.snapshot import live_ranges, parse_snapshot


class NotFoundError(RolebusError):
    """A role or commit asked for by id is not in the context store (for that tenant)."""


class UnknownRoleError(NotFoundError):
    def __init__(self, tenant_id: str, role_id: str) -> None:
        super().__init__(
            f"role {role_id!r}: not found in tenant {tenant_id!r} (check the id and --tenant; "
            "`rolebus role list` shows the tenant's roles; a role appears once the projector "
            "has seen its first event)"
        )


class UnknownCommitError(NotFoundError):
    def __init__(self, tenant_id: str, commit_id: str) -> None:
        super().__init__(
            f"commit {commit_id!r}: not found in tenant {tenant_id!r} (check the id and "
            "--tenant; `rolebus log ROLE` lists a role's commits)"
        )


class AmbiguousCommitError(NotFoundError):
    def __init__(self, tenant_id: str, prefix: str) -> None:
        super().__init__(
            f"commit {prefix!r}: several commits of tenant {tenant_id!r} start with it "
            "(give more characters of the id)"
        )


SeqRanges = seqranges.Ranges
"""Inclusive ``(first, last)`` seq ranges, sorted and disjoint."""


@dataclass(frozen=True)
class RoleView:
    """One row of ``roles``: a role's latest state as the projector saw it."""

    tenant_id: str
    role_id: str
    lifecycle: str
    name: str
    persona: str
    traits: Mapping[str, str]
    model: str | None
    skills: tuple[str, ...]
    seq: int
    head_commit_id: str | None
    counters: Mapping[str, Any]
    live: SeqRanges
    """The role's own live seqs (a rollback removes the superseded ones)."""
    forked_from_role: str | None
    forked_from_commit: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LogEntry:
    """One commit in a role's history, as ``rolebus log`` shows it."""

    commit_id: str
    role_id: str
    parent_id: str | None
    seq: int
    kind: str
    """created | auto | lifecycle | manual | rollback | fork."""
    label: str | None
    reason: str | None
    """Why a rollback was made (rollbacks only)."""
    rollback_to: str | None
    """The commit a rollback restored (rollbacks only)."""
    occurred_at: datetime
    """Event time of the event that cut the commit."""
    state_digest: str


@dataclass(frozen=True)
class SnapshotMessage:
    """A message of a committed state's window."""

    role_id: str
    """The role it was appended to (a fork's inherited messages name the source)."""
    seq: int
    message_id: str
    author: str
    content: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.role_id, self.seq, self.message_id)


@dataclass(frozen=True)
class Snapshot:
    """The parts of a committed state the read side shows and compares."""

    role_id: str
    name: str
    lifecycle: str
    persona: str
    traits: Mapping[str, str]
    model: str | None
    skills: tuple[str, ...]
    seq: int
    counters: Mapping[str, Any]
    messages: tuple[SnapshotMessage, ...]
    live: SeqRanges
    """The role's live seqs at the commit (its lineage)."""


@dataclass(frozen=True)
class CommitView:
    """A commit and the state it records (``rolebus show``)."""

    entry: LogEntry
    tenant_id: str
    snapshot: Mapping[str, Any]
    """The committed state exactly as stored (JSON)."""


def snapshot_view(doc: Mapping[str, Any]) -> Snapshot:
    """The stored snapshot JSON as a ``Snapshot`` view (parsed, so checked, by
    ``rolebus.wal.snapshot``: the one reader of its format)."""
    s = parse_snapshot(doc)
    return Snapshot(
        role_id=s.role_id, name=s.name, lifecycle=s.lifecycle.value, persona=s.persona,
        traits=dict(s.traits), model=s.model, skills=s.skills, seq=s.seq,
        counters=dataclasses.asdict(s.counters),
        messages=tuple(
            SnapshotMessage(m.role_id, m.seq, m.message_id, m.author.value, m.content)
            for m in s.messages
        ),
        live=seqranges.normalize(live_ranges(s)),
    )  # fmt: skip


@dataclass(frozen=True)
class FieldChange:
    """A field whose value differs: ``traits.tone``, ``counters.tokens_in``..."""

    field: str
    before: Any
    after: Any


@dataclass(frozen=True)
class CommitDiff:
    """What changed from commit A to commit B."""

    commit_a: str
    commit_b: str
    changes: tuple[FieldChange, ...]
    only_in_a: tuple[SnapshotMessage, ...]
    """Messages of A's window that B's window does not hold."""
    only_in_b: tuple[SnapshotMessage, ...]
    live_only_in_a: SeqRanges
    """Seqs live at A but not at B (superseded by a rollback, or not yet appended at A...)."""
    live_only_in_b: SeqRanges

    @property
    def empty(self) -> bool:
        return not (self.changes or self.only_in_a or self.only_in_b) and not (
            self.live_only_in_a or self.live_only_in_b
        )


_SCALARS = ("name", "lifecycle", "persona", "model", "skills", "seq")


def diff_snapshots(commit_a: str, a: Snapshot, commit_b: str, b: Snapshot) -> CommitDiff:
    """Persona, traits, lifecycle, counters and messages from ``a`` to ``b``."""
    changes = [
        FieldChange(name, getattr(a, name), getattr(b, name))
        for name in _SCALARS
        if getattr(a, name) != getattr(b, name)
    ]
    changes += _map_changes("traits", a.traits, b.traits)
    changes += _map_changes("counters", _flatten(a.counters), _flatten(b.counters))
    keys_a = {m.key for m in a.messages}
    keys_b = {m.key for m in b.messages}
    return CommitDiff(
        commit_a=commit_a,
        commit_b=commit_b,
        changes=tuple(changes),
        only_in_a=tuple(m for m in a.messages if m.key not in keys_b),
        only_in_b=tuple(m for m in b.messages if m.key not in keys_a),
        live_only_in_a=seqranges.subtract(a.live, b.live),
        live_only_in_b=seqranges.subtract(b.live, a.live),
    )


def _map_changes(prefix: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[FieldChange]:
    return [
        FieldChange(f"{prefix}.{key}", a.get(key), b.get(key))
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    ]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested counters (``messages.user``) as one level of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
