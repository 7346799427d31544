"""A role's folded state and its digest.

``RoleState`` is a frozen value: the fold never mutates one, it builds the next.
Its fields fall in two groups:

* the LOGICAL state, which the digest (and therefore every commit id) covers:
  role_id, tenant_id, lifecycle, name, persona, traits, model, skills, seq,
  counters, messages, lineage;
* BOOKKEEPING, which the digest ignores so that replaying the same log in
  another cluster (other offsets, other dedupe history) regenerates the same
  ids: head_commit_id, events_since_commit, last_position, recent_event_ids.
  ``head_commit_id`` is left out because a commit's id is computed from the
  digest of the state it records (its parent_id already links history).

``state_digest`` = lowercase hex SHA-256 of ``canonical_bytes`` (see
``rolebus.wal.canonical``) of the map ``logical_view(state)``: the LOGICAL
field names above as keys; nested dataclasses as maps of their fields, enums as
their value, datetimes as epoch microseconds, frozensets as sorted arrays,
``SeqRange`` pairs as ``[first, last]`` arrays, maps with sorted keys.

Invariants: ``seq`` is the number of accepted events of the role (the accepted
event gets previous seq + 1, rollbacks included); ``messages`` keeps at most
``FoldConfig.message_window`` entries, oldest first; ``recent_event_ids`` keeps
at least the last ``FoldConfig.dedupe_window`` ids (``rolebus.streams.window``);
maps are built with sorted keys so that not even their iteration order depends
on input order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, NamedTuple, TypeVar

from rolebus.config import Settings
from rolebus.errors import ConfigError
from rolebus.streams.window import EventWindow
from rolebus.wal.canonical import canonical_bytes
from rolebus.wal.events import (
    Author,
    CommitId,
    Flag,
    RoleId,
    TenantId,
    ToolCall,
    WalPosition,
)

DEFAULT_DEDUPE_WINDOW = 1000


class Lifecycle(StrEnum):
    """Where a role is in its life; the allowed moves live in ``rules``."""

    CREATED = "created"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"
    DELETED = "deleted"


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


class SeqRange(NamedTuple):
    """An inclusive range of seqs of one role."""

    first: int
    last: int


@dataclass(frozen=True)
class Lineage:
    """Which seqs of the role are live, i.e. not superseded by a rollback.

    Live seqs = ``closed`` ranges + ``[branch_start, seq]``. A rollback to a
    commit at seq T replaces ``closed`` by the live ranges of that commit's
    snapshot and starts a new branch at the rollback's own seq.
    """

    closed: tuple[SeqRange, ...] = ()
    """Disjoint, sorted, non-adjacent ranges kept from earlier branches."""
    branch_start: int = 1
    """First seq of the current branch."""


@dataclass(frozen=True)
class RecentMessage:
    """One message of the context window."""

    message_id: str
    seq: int
    """The seq of the MessageAppended event in ``role_id``."""
    role_id: RoleId
    """The role it was appended to; differs from the state's role for messages
    a fork inherited (their seq is then the source role's seq)."""
    author: Author
    content: str
    occurred_at: datetime
    flags: frozenset[Flag] = frozenset()
    tool_call: ToolCall | None = None

    @cached_property
    def canonical_json(self) -> str:
        """This message's canonical encoding, made once: every digest of the
        role's state reuses it while the message stays in the window."""
        return canonical_bytes(self).decode("utf-8")


@dataclass(frozen=True)
class Counters:
    """Lifetime activity of the role. Never restored by a rollback (like a
    reflog they count what happened in the log); a fork starts from zero."""

    messages: Mapping[str, int] = field(default_factory=dict)
    """Accepted messages by author value."""
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    flags: Mapping[str, int] = field(default_factory=dict)
    """Flagged messages by flag value."""
    persona_updates: int = 0
    rollbacks: int = 0


@dataclass(frozen=True)
class RoleState:
    """The folded state of one role (see the module docstring for the digest)."""

    role_id: RoleId
    tenant_id: TenantId
    lifecycle: Lifecycle
    name: str
    persona: str
    traits: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    skills: tuple[str, ...] = ()
    seq: int = 0
    counters: Counters = field(default_factory=Counters)
    messages: tuple[RecentMessage, ...] = ()
    lineage: Lineage = field(default_factory=Lineage)
    head_commit_id: CommitId | None = None
    """Id of the latest commit of the role (bookkeeping)."""
    events_since_commit: int = 0
    """Accepted events since the last commit (bookkeeping)."""
    last_position: WalPosition | None = None
    """WAL position of the last applied event (bookkeeping)."""
    recent_event_ids: EventWindow = field(default_factory=EventWindow)
    """Bounded dedupe window of applied event ids (bookkeeping)."""


LOGICAL_FIELDS: tuple[str, ...] = (
    "role_id",
    "tenant_id",
    "lifecycle",
    "name",
    "persona",
    "traits",
    "model",
    "skills",
    "seq",
    "counters",
    "messages",
    "lineage",
)
"""The fields the digest covers (order irrelevant: the encoding sorts keys)."""


def logical_view(state: RoleState) -> dict[str, Any]:
    """The part of ``state`` that ``state_digest`` hashes."""
    return {name: getattr(state, name) for name in LOGICAL_FIELDS}


_SORTED_LOGICAL = tuple(sorted(LOGICAL_FIELDS))


def state_digest(state: RoleState) -> str:
    """SHA-256 (hex) of the canonical encoding of the logical state.

    Equal to ``sha256_hex(logical_view(state))``, built piece by piece: the
    top-level keys in sorted order, each message from its cached encoding
    (the window dominates the cost and changes by one message per event).
    """
    digest = hashlib.sha256(b"{")
    for i, name in enumerate(_SORTED_LOGICAL):
        if name == "messages":
            value = "[" + ",".join(m.canonical_json for m in state.messages) + "]"
        else:
            value = canonical_bytes(getattr(state, name)).decode("utf-8")
        digest.update(f"{',' if i else ''}{json.dumps(name)}:{value}".encode())
    digest.update(b"}")
    return digest.hexdigest()


def without_bookkeeping(state: RoleState) -> RoleState:
    """The state as a snapshot stores it: no WAL position, no dedupe history."""
    return evolve(state, last_position=None, recent_event_ids=EventWindow())


_Frozen = TypeVar("_Frozen", "RoleState", "Counters")
_FIELD_NAMES: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls)) for cls in (RoleState, Counters)
}


def evolve(value: _Frozen, **changes: Any) -> _Frozen:
    """``dataclasses.replace`` for the fold's hot path (several calls per event).

    These classes have no ``__post_init__`` and no ``init=False`` fields, so a
    copy of the instance's fields with ``changes`` applied is exactly what
    ``replace`` builds, without re-running ``__init__`` (about 10x cheaper).
    """
    cls = type(value)
    unknown = changes.keys() - _FIELD_NAMES[cls]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(cls)
    attrs = new.__dict__
    attrs.update(value.__dict__)
    attrs.update(changes)
    return new


def sorted_map(items: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with keys inserted in sorted order, so nothing downstream can
    depend on the producer's insertion order."""
    return {key: items[key] for key in sorted(items)}


def live_ranges(state: RoleState) -> tuple[SeqRange, ...]:
    """Every live seq of the role, as disjoint sorted ranges."""
    current = SeqRange(state.lineage.branch_start, state.seq)
    return normalize_ranges((*state.lineage.closed, current))


def normalize_ranges(ranges: Iterable[SeqRange]) -> tuple[SeqRange, ...]:
    """Sort, drop empty ranges and merge overlapping or adjacent ones."""
    merged: list[SeqRange] = []
    for first, last in sorted(r for r in ranges if r.first <= r.last):
        if merged and first <= merged[-1].last + 1:
            merged[-1] = SeqRange(merged[-1].first, max(last, merged[-1].last))
        else:
            merged.append(SeqRange(first, last))
    return tuple(merged)


def subtract_ranges(
    ranges: Iterable[SeqRange], removed: Iterable[SeqRange]
) -> tuple[SeqRange, ...]:
    """The seqs of ``ranges`` that are not in ``removed``."""
    pieces = list(normalize_ranges(ranges))
    for cut in normalize_ranges(removed):
        kept: list[SeqRange] = []
        for piece in pieces:
            kept.append(SeqRange(piece.first, min(piece.last, cut.first - 1)))
            kept.append(SeqRange(max(piece.first, cut.last + 1), piece.last))
        pieces = [p for p in kept if p.first <= p.last]
    return normalize_ranges(pieces)
