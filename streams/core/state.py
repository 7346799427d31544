"""A role's folded state: the logical ``Snapshot`` plus the fold's bookkeeping.

``RoleState`` is a frozen value: ``apply_event`` never mutates one, it builds
the next. Its fields fall in two groups:

* the LOGICAL state (``rolebus.wal.snapshot.Snapshot``: role_id, tenant_id,
  lifecycle, name, persona, traits, model, skills, seq, counters, messages,
  lineage), which the digest and therefore every commit id covers; its
  recipe is in ``rolebus.wal.snapshot``;
* BOOKKEEPING, which the digest ignores so that replaying the same log in
  another cluster (other offsets, other dedupe history) regenerates the same
  ids: head_commit_id, events_since_commit, last_position, recent_event_ids.
  ``head_commit_id`` is left out because a commit's id is computed from the
  digest of the state it records (its parent_id already links history).

Invariants: ``seq`` is the number of accepted events of the role (the accepted
event gets previous seq + 1, rollbacks included); ``messages`` keeps at most
``FoldConfig.message_window`` entries, oldest first; ``recent_event_ids`` keeps
at least the last ``FoldConfig.dedupe_window`` ids (``window``); maps are built
with sorted keys so that not even their iteration order depends on input order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from rolebus.config import Settings
from rolebus.errors import ConfigError
from rolebus.streams.core.window import EventWindow
from rolebus.wal.events import CommitId, WalPosition
from rolebus.wal.snapshot import (
    LOGICAL_FIELDS,
    Counters,
    Lifecycle,
    Lineage,
    RecentMessage,
    SeqRange,
    Snapshot,
    live_ranges,
    normalize_ranges,
    snapshot_json,
    sorted_map,
    state_digest,
    subtract_ranges,
)

__all__ = [
    "LOGICAL_FIELDS", "Counters", "FoldConfig", "Lifecycle", "Lineage", "RecentMessage",
    "RoleState", "SeqRange", "Snapshot", "evolve", "live_ranges", "logical_json",
    "logical_view", "normalize_ranges", "sorted_map", "state_digest", "subtract_ranges",
]  # fmt: skip

DEFAULT_DEDUPE_WINDOW = 1000


@dataclass(frozen=True)
class FoldConfig:
    """The knobs of the fold. Part of the replay contract: the same log folded
    with the same config gives the same commit ids."""

    commit_every: int = 50
    """An auto commit is cut after this many accepted events without a commit."""
    message_window: int = 20
    """Messages kept in the state for context building."""
    dedupe_window: int = DEFAULT_DEDUPE_WINDOW
    """Recently applied event ids remembered per role (older redeliveries are
    caught by the WAL position check)."""

    def __post_init__(self) -> None:
        for name in ("commit_every", "message_window", "dedupe_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FoldConfig.{name}: must be >= 1 (got {getattr(self, name)})")

    @classmethod
    def from_settings(cls, settings: Settings) -> FoldConfig:
        return cls(commit_every=settings.commit_every, message_window=settings.message_window)


@dataclass(frozen=True)
class RoleState(Snapshot):
    """The folded state of one role: its ``Snapshot`` plus bookkeeping."""

    head_commit_id: CommitId | None = None
    """Id of the latest commit of the role (bookkeeping)."""
    events_since_commit: int = 0
    """Accepted events since the last commit (bookkeeping)."""
    last_position: WalPosition | None = None
    """WAL position of the last applied event (bookkeeping)."""
    recent_event_ids: EventWindow = field(default_factory=EventWindow)
    """Bounded dedupe window of applied event ids (bookkeeping)."""


def logical_view(state: Snapshot) -> dict[str, Any]:
    """The part of ``state`` that ``state_digest`` hashes."""
    return {name: getattr(state, name) for name in LOGICAL_FIELDS}


def logical_json(state: Snapshot) -> dict[str, Any]:
    """The logical state as plain JSON data (``rolebus.wal.snapshot.snapshot_json``)."""
    return snapshot_json(state)


_Frozen = TypeVar("_Frozen", "RoleState", "Counters")
_FIELD_NAMES: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls)) for cls in (RoleState, Counters)
}
_CACHED = "canonical_text"
"""``Snapshot``'s cached encoding: never copied into an evolved state."""


def evolve(value: _Frozen, **changes: Any) -> _Frozen:
    """``dataclasses.replace`` for the fold's hot path (several calls per event).

    These classes have no ``__post_init__`` and no ``init=False`` fields, so a
    copy of the instance's fields with ``changes`` applied is exactly what
    ``replace`` builds, without re-running ``__init__`` (about 10x cheaper).
    The cached canonical text of the old value is dropped, not copied.
    """
    cls = type(value)
    unknown = changes.keys() - _FIELD_NAMES[cls]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(cls)
    attrs = new.__dict__
    attrs.update(value.__dict__)
    attrs.pop(_CACHED, None)
    attrs.update(changes)
    return new


def snapshot_of(state: Snapshot) -> Snapshot:
    """The logical part of ``state`` as a plain ``Snapshot`` (what a commit records)."""
    return Snapshot(**{name: getattr(state, name) for name in LOGICAL_FIELDS})
