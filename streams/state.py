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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, NamedTuple, TypeVar

from rolebus.config import Settings
from rolebus.errors import ConfigError
from rolebus.streams.window import EventWindow
from rolebus.wal.canonical import canonical_text, to_micros
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
        return canonical_text(message_json(self))


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


def state_digest(state: RoleState) -> str:
    """SHA-256 (hex) of the canonical encoding of the logical state.

    Equal to ``sha256_hex(logical_view(state))``: the canonical text of
    ``logical_json`` with the messages spliced in from their cached encodings
    (the window dominates the cost and changes by one message per event).
    "messages" sorts between "lineage" and "model", so the keys before it and
    after it are each one non-empty canonical map.
    """
    view = _logical_json_without_messages(state)
    before = canonical_text({k: v for k, v in view.items() if k < "messages"})
    after = canonical_text({k: v for k, v in view.items() if k > "messages"})
    messages = ",".join(m.canonical_json for m in state.messages)
    text = f'{before[:-1]},"messages":[{messages}],{after[1:]}'
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tool_call_json(call: ToolCall | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {"name": call.name, "arguments_json": call.arguments_json, "result": call.result}


def message_json(m: RecentMessage) -> dict[str, Any]:
    """One message as plain JSON data (``canonical.plain`` of it, written out)."""
    return {
        "message_id": m.message_id, "seq": m.seq, "role_id": m.role_id,
        "author": m.author.value, "content": m.content, "occurred_at": to_micros(m.occurred_at),
        "flags": sorted(f.value for f in m.flags), "tool_call": _tool_call_json(m.tool_call),
    }  # fmt: skip


def _counters_json(c: Counters) -> dict[str, Any]:
    return {
        "messages": dict(c.messages), "tokens_in": c.tokens_in, "tokens_out": c.tokens_out,
        "tool_calls": c.tool_calls, "flags": dict(c.flags),
        "persona_updates": c.persona_updates, "rollbacks": c.rollbacks,
    }  # fmt: skip


def _logical_json_without_messages(s: RoleState) -> dict[str, Any]:
    return {
        "role_id": s.role_id, "tenant_id": s.tenant_id, "lifecycle": s.lifecycle.value,
        "name": s.name, "persona": s.persona, "traits": dict(s.traits), "model": s.model,
        "skills": list(s.skills), "seq": s.seq, "counters": _counters_json(s.counters),
        "lineage": {
            "closed": [[r.first, r.last] for r in s.lineage.closed],
            "branch_start": s.lineage.branch_start,
        },
    }  # fmt: skip


def logical_json(s: RoleState) -> dict[str, Any]:
    """The logical state as plain JSON data: ``canonical.plain(logical_view(s))``,
    written out field by field because it sits on the worker's hot path."""
    messages = [message_json(m) for m in s.messages]
    return {**_logical_json_without_messages(s), "messages": messages}


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
