"""The ``roles`` rows and the messages' ``superseded`` flags, planned purely.

Where each column comes from (the records do not carry a role's state, except
the commit snapshots):

* ``seq``, ``head_commit_id``, ``updated_at``, ``live`` and ``counters`` follow
  the role's CHANGES in seq order (one partition, one projector at a time):
  live = the rollback's ``live`` ranges after a rollback, else live + [seq];
  counters are counted from the events exactly as the fold counts them
  (lifetime totals: a rollback never restores them, a fork starts at zero),
  so they are current after every event, not only at commits.
* content groups (lifecycle; name; persona + traits + model + skills) come
  from changes that set them AND from commit snapshots, which arrive on
  another topic in any order. Each group keeps the seq it was set at
  (``*_seq`` columns) and a source overwrites it only from a seq at least as
  high. A rollback (or a fork's persona) has no content in its change: the
  rollback/fork commit at the same seq fills it. Whatever the arrival order,
  each group ends at the value of its highest-seq source.
* ``forked_*``: from the RoleForked change; ``forked_live`` = the live ranges
  of the source commit's snapshot, looked up when the fork is projected, or
  filled when that commit arrives later (``store``).

Invariants: no I/O; applying the same inputs in any interleaving of changes
and snapshots (changes in seq order) gives the same row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from rolebus.projectors import seqranges
from rolebus.projectors.plan import Change, Commit
from rolebus.projectors.seqranges import Ranges
from rolebus.wal.canonical import from_micros
from rolebus.wal.events import (
    PersonaUpdated,
    RoleActivated,
    RoleArchived,
    RoleCreated,
    RoleDeleted,
    RoleForked,
    RoleResumed,
    RoleSuspended,
)
from rolebus.wal.snapshot import Counters, count

_LIFECYCLE_OF: Mapping[type, str] = {
    RoleCreated: "created", RoleForked: "created", RoleActivated: "active",
    RoleSuspended: "suspended", RoleResumed: "active", RoleArchived: "archived",
    RoleDeleted: "deleted",
}  # fmt: skip


@dataclass(frozen=True)
class RoleRow:
    tenant_id: str
    role_id: str
    lifecycle: str = "created"
    name: str = ""
    persona: str = ""
    traits: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    skills: tuple[str, ...] = ()
    seq: int = 0
    head_commit_id: str | None = None
    counters: Counters = field(default_factory=Counters)
    live: Ranges = ()
    forked_from_role: str | None = None
    forked_from_commit: str | None = None
    forked_live: Ranges | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    lifecycle_seq: int = 0
    name_seq: int = 0
    persona_seq: int = 0


def apply_change(row: RoleRow | None, c: Change) -> RoleRow:
    """The row after one NEW change of its role (changes come in seq order)."""
    r, p = c.record, c.envelope.payload
    at = from_micros(r.occurred_at_us)
    if row is None:
        row = RoleRow(r.tenant_id, r.role_id, created_at=at, updated_at=at)
    if r.seq <= row.seq:
        return row  # cannot happen with the events ledger deduping; never go back
    live = (
        r.superseded.live if r.superseded is not None else seqranges.add(row.live, [(r.seq,) * 2])
    )
    row = replace(
        row, seq=r.seq, head_commit_id=r.head_commit_id, updated_at=at, live=live,
        counters=count(row.counters, p),
    )  # fmt: skip
    return _content_of(row, p, r.seq, at)


def _content_of(row: RoleRow, p: object, seq: int, at: datetime) -> RoleRow:
    if type(p) in _LIFECYCLE_OF and seq >= row.lifecycle_seq:
        row = replace(row, lifecycle=_LIFECYCLE_OF[type(p)], lifecycle_seq=seq)
    if isinstance(p, RoleCreated | RoleForked):
        row = replace(row, created_at=at)
        if seq >= row.name_seq:
            row = replace(row, name=p.name, name_seq=seq)
    if isinstance(p, RoleForked):
        row = replace(row, forked_from_role=p.source_role_id, forked_from_commit=p.source_commit_id)
    if isinstance(p, RoleCreated | PersonaUpdated) and seq >= row.persona_seq:
        row = _persona(row, p, seq)
    return row


def _persona(row: RoleRow, p: RoleCreated | PersonaUpdated, seq: int) -> RoleRow:
    if isinstance(p, RoleCreated):
        traits, model, skills = p.traits, p.model, p.skills
    else:  # PersonaUpdated replaces traits / model / skills only when given
        traits = row.traits if p.traits is None else p.traits
        model = row.model if p.model is None else p.model
        skills = row.skills if p.skills is None else p.skills
    return replace(
        row, persona=p.persona, traits={k: traits[k] for k in sorted(traits)}, model=model,
        skills=tuple(skills), persona_seq=seq,
    )  # fmt: skip


def apply_snapshot(row: RoleRow | None, c: Commit) -> RoleRow:
    """The row after one NEW commit of its role (any order w.r.t. changes)."""
    r, s = c.record, c.snapshot
    at = from_micros(r.occurred_at_us)
    if row is None:  # its changes are not projected yet: content only
        row = RoleRow(r.tenant_id, r.role_id, created_at=at, updated_at=at)
    if s.seq >= row.lifecycle_seq:
        row = replace(row, lifecycle=s.lifecycle, lifecycle_seq=s.seq)
    if s.seq >= row.name_seq:
        row = replace(row, name=s.name, name_seq=s.seq)
    if s.seq >= row.persona_seq:
        row = replace(
            row, persona=s.persona, traits=dict(s.traits), model=s.model, skills=s.skills,
            persona_seq=s.seq,
        )  # fmt: skip
    return row


Key = tuple[str, str]


def plan_roles(
    current: Mapping[Key, RoleRow],
    changes: Sequence[Change],
    commits: Sequence[Commit],
    fork_lives: Mapping[str, Ranges],
) -> dict[Key, RoleRow]:
    """The rows of every role the NEW inputs touch. ``fork_lives``: live ranges of
    commits known to the store (a fork's source commit)."""
    rows: dict[Key, RoleRow] = dict(current)
    for c in sorted(changes, key=lambda c: (c.record.tenant_id, c.record.role_id, c.record.seq)):
        key = (c.record.tenant_id, c.record.role_id)
        rows[key] = apply_change(rows.get(key), c)
    for m in commits:
        key = (m.record.tenant_id, m.record.role_id)
        rows[key] = apply_snapshot(rows.get(key), m)
    for key, row in rows.items():
        if row.forked_from_commit is not None and row.forked_live is None:
            found = fork_lives.get(row.forked_from_commit)
            if found is not None:
                rows[key] = replace(row, forked_live=found)
    touched = {(c.record.tenant_id, c.record.role_id) for c in changes}
    touched |= {(m.record.tenant_id, m.record.role_id) for m in commits}
    return {k: rows[k] for k in sorted(touched)}


# --- superseded flags ------------------------------------------------------------------


@dataclass(frozen=True)
class Flip:
    """Seq ranges of one role whose messages' ``superseded`` becomes ``value``."""

    tenant_id: str
    role_id: str
    value: bool
    ranges: Ranges


def plan_supersede(changes: Iterable[Change]) -> list[Flip]:
    """The net effect of the NEW rollbacks on ``messages.superseded``: per role,
    the last rollback (by seq) that names a seq decides its flag."""
    by_role: dict[Key, tuple[Ranges, Ranges]] = {}
    ordered = sorted(changes, key=lambda c: (c.record.tenant_id, c.record.role_id, c.record.seq))
    for c in ordered:
        s = c.record.superseded
        if s is None:
            continue
        key = (c.record.tenant_id, c.record.role_id)
        on, off = by_role.get(key, ((), ()))
        on = seqranges.add(seqranges.subtract(on, s.restored), s.superseded)
        off = seqranges.add(seqranges.subtract(off, s.superseded), s.restored)
        by_role[key] = (on, off)
    flips = []
    for (tenant, role), (on, off) in sorted(by_role.items()):
        flips += [Flip(tenant, role, True, on)] if on else []
        flips += [Flip(tenant, role, False, off)] if off else []
    return flips


def superseded_now(flips: Sequence[Flip]) -> Callable[[str, str, int], bool]:
    """Whether a message of this batch is superseded once its flips apply."""
    by_role: dict[Key, list[Flip]] = {}
    for flip in flips:
        by_role.setdefault((flip.tenant_id, flip.role_id), []).append(flip)

    def flag(tenant_id: str, role_id: str, seq: int) -> bool:
        for flip in by_role.get((tenant_id, role_id), ()):
            if any(first <= seq <= last for first, last in flip.ranges):
                return flip.value
        return False

    return flag
