"""A role's logical state: the typed contract of commit snapshots.

The stream workers fold the WAL into per-role state; a commit records the
LOGICAL part of it (``Snapshot``), which every consumer of the
``<prefix>.commits`` topic reads back with ``parse_snapshot`` (projectors and
replay never import ``rolebus.streams``). ``rolebus.streams`` extends
``Snapshot`` with its bookkeeping (``RoleState``).

Digest recipe (reproducible in any language): ``state_digest`` = lowercase
hex SHA-256 of the canonical JSON (``rolebus.wal.canonical``: UTF-8, keys
sorted, no whitespace, non-ASCII as is) of ``snapshot_json(s)``: the field
names below as keys; enums as their value; datetimes as epoch microseconds;
frozensets as sorted arrays; ``SeqRange`` pairs as ``[first, last]`` arrays.
A commit record's ``snapshot`` field IS that JSON, so any consumer can check
``sha256(canonical_bytes(snapshot)) == state_digest``.

Invariants: ``parse_snapshot(snapshot_json(s)) == s``; ``canonical_text(s)``
equals ``canonical.canonical_text(snapshot_json(s))`` (it splices each
message's cached encoding instead of re-encoding the window); the parser
raises ``RecordError`` (a ``SchemaError``) for malformed data, never another
exception; maps are built with sorted keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Final, NamedTuple

from rolebus.errors import SchemaError
from rolebus.wal.canonical import canonical_text as _canonical
from rolebus.wal.canonical import from_micros, to_micros
from rolebus.wal.events import (
    Author,
    Flag,
    MessageAppended,
    PersonaUpdated,
    RoleId,
    RolledBack,
    TenantId,
    ToolCall,
)


class RecordError(SchemaError):
    """An output record (or a snapshot inside one) could not be decoded."""


class Lifecycle(StrEnum):
    """Where a role is in its life (the allowed moves live in ``streams.core.rules``)."""

    CREATED = "created"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"
    DELETED = "deleted"


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
        return _canonical(message_json(self))


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
class Snapshot:
    """The logical state of one role (what a commit records)."""

    role_id: RoleId
    tenant_id: TenantId
    lifecycle: Lifecycle
    name: str
    persona: str
    traits: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    skills: tuple[str, ...] = ()
    seq: int = 0
    """Accepted events of the role so far (rollbacks included)."""
    counters: Counters = field(default_factory=Counters)
    messages: tuple[RecentMessage, ...] = ()
    """The most recent messages, oldest first (at most the fold's window)."""
    lineage: Lineage = field(default_factory=Lineage)

    @cached_property
    def canonical_text(self) -> str:
        """The canonical JSON of ``snapshot_json(self)``, made once."""
        return canonical_text(self)


LOGICAL_FIELDS: Final[tuple[str, ...]] = (
    "role_id", "tenant_id", "lifecycle", "name", "persona", "traits", "model", "skills", "seq",
    "counters", "messages", "lineage",
)  # fmt: skip
"""The fields of ``Snapshot``: what the digest covers."""


# --- encoding ------------------------------------------------------------------


def _tool_call_json(call: ToolCall | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {"name": call.name, "arguments_json": call.arguments_json, "result": call.result}


def message_json(m: RecentMessage) -> dict[str, Any]:
    """One message as plain JSON data."""
    return {
        "message_id": m.message_id, "seq": m.seq, "role_id": m.role_id,
        "author": m.author.value, "content": m.content, "occurred_at": to_micros(m.occurred_at),
        "flags": sorted(f.value for f in m.flags), "tool_call": _tool_call_json(m.tool_call),
    }  # fmt: skip


def counters_json(c: Counters) -> dict[str, Any]:
    return {
        "messages": dict(c.messages), "tokens_in": c.tokens_in, "tokens_out": c.tokens_out,
        "tool_calls": c.tool_calls, "flags": dict(c.flags),
        "persona_updates": c.persona_updates, "rollbacks": c.rollbacks,
    }  # fmt: skip


def _json_without_messages(s: Snapshot) -> dict[str, Any]:
    return {
        "role_id": s.role_id, "tenant_id": s.tenant_id, "lifecycle": s.lifecycle.value,
        "name": s.name, "persona": s.persona, "traits": dict(s.traits), "model": s.model,
        "skills": list(s.skills), "seq": s.seq, "counters": counters_json(s.counters),
        "lineage": {
            "closed": [[r.first, r.last] for r in s.lineage.closed],
            "branch_start": s.lineage.branch_start,
        },
    }  # fmt: skip


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    """The logical state as plain JSON data (written out field by field: hot path)."""
    return {**_json_without_messages(s), "messages": [message_json(m) for m in s.messages]}


def canonical_text(s: Snapshot) -> str:
    """Canonical JSON text of ``snapshot_json(s)``.

    "messages" sorts between "lineage" and "model", so the keys before it and
    after it are each one non-empty canonical map; the messages come from
    their cached encodings (the window dominates the cost and changes by one
    message per event).
    """
    view = _json_without_messages(s)
    before = _canonical({k: v for k, v in view.items() if k < "messages"})
    after = _canonical({k: v for k, v in view.items() if k > "messages"})
    messages = ",".join(m.canonical_json for m in s.messages)
    return f'{before[:-1]},"messages":[{messages}],{after[1:]}'


def text_digest(text: str) -> str:
    """The digest of a canonical text (see the module docstring)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def state_digest(s: Snapshot) -> str:
    """SHA-256 (hex) of the canonical encoding of the logical state."""
    if isinstance(s, Snapshot):
        return text_digest(s.canonical_text)
    return text_digest(canonical_text(s))


# --- parsing -------------------------------------------------------------------

_AUTHORS: Final = {a.value: a for a in Author}
_FLAGS: Final = {f.value: f for f in Flag}
_LIFECYCLES: Final = {lc.value: lc for lc in Lifecycle}


def sorted_map(items: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with keys inserted in sorted order, so nothing downstream can
    depend on the producer's insertion order."""
    return {key: items[key] for key in sorted(items)}


def _tool_call(data: Mapping[str, Any] | None) -> ToolCall | None:
    if data is None:
        return None
    return ToolCall(data["name"], data["arguments_json"], data["result"])


def _message(d: Mapping[str, Any]) -> RecentMessage:
    return RecentMessage(
        message_id=d["message_id"], seq=d["seq"], role_id=RoleId(d["role_id"]),
        author=_AUTHORS[d["author"]], content=d["content"],
        occurred_at=from_micros(d["occurred_at"]),
        flags=frozenset(_FLAGS[f] for f in d["flags"]), tool_call=_tool_call(d["tool_call"]),
    )  # fmt: skip


def parse_counters(d: Mapping[str, Any]) -> Counters:
    return Counters(
        messages=sorted_map(d["messages"]), tokens_in=d["tokens_in"], tokens_out=d["tokens_out"],
        tool_calls=d["tool_calls"], flags=sorted_map(d["flags"]),
        persona_updates=d["persona_updates"], rollbacks=d["rollbacks"],
    )  # fmt: skip


def logical_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """The typed logical fields of ``snapshot_json`` data (``RecordError`` if malformed)."""
    try:
        lineage = d["lineage"]
        return {
            "role_id": RoleId(d["role_id"]), "tenant_id": TenantId(d["tenant_id"]),
            "lifecycle": _LIFECYCLES[d["lifecycle"]], "name": d["name"],
            "persona": d["persona"], "traits": sorted_map(d["traits"]), "model": d["model"],
            "skills": tuple(d["skills"]), "seq": d["seq"],
            "counters": parse_counters(d["counters"]),
            "messages": tuple(_message(m) for m in d["messages"]),
            "lineage": Lineage(
                closed=tuple(SeqRange(a, b) for a, b in lineage["closed"]),
                branch_start=lineage["branch_start"],
            ),
        }  # fmt: skip
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise RecordError(f"snapshot: malformed logical state ({exc!r})") from exc


def parse_snapshot(d: Mapping[str, Any]) -> Snapshot:
    """A typed ``Snapshot`` from a commit record's ``snapshot`` JSON."""
    return Snapshot(**logical_fields(d))


# --- counting -----------------------------------------------------------------


def count(counters: Counters, payload: object) -> Counters:
    """The lifetime counters after one more ACCEPTED event with ``payload``: the
    fold's rule, which the projectors apply to the change records too."""
    if isinstance(payload, MessageAppended):
        return Counters(
            messages=_bump(counters.messages, (payload.author.value,)),
            tokens_in=counters.tokens_in + payload.tokens_in,
            tokens_out=counters.tokens_out + payload.tokens_out,
            tool_calls=counters.tool_calls + (payload.tool_call is not None),
            flags=_bump(counters.flags, [f.value for f in payload.flags]),
            persona_updates=counters.persona_updates,
            rollbacks=counters.rollbacks,
        )
    if isinstance(payload, PersonaUpdated):
        return replace(counters, persona_updates=counters.persona_updates + 1)
    if isinstance(payload, RolledBack):
        return replace(counters, rollbacks=counters.rollbacks + 1)
    return counters


def _bump(counts: Mapping[str, int], keys: Iterable[str]) -> Mapping[str, int]:
    """``counts`` with each key counted once more; keys stay sorted (a new key
    re-sorts the map, which happens a few times in a role's life)."""
    keys = list(keys)
    if not keys:
        return counts
    bumped = dict(counts)
    for key in keys:
        bumped[key] = bumped.get(key, 0) + 1
    return bumped if len(bumped) == len(counts) else sorted_map(bumped)


# --- seq ranges ----------------------------------------------------------------


def live_ranges(s: Snapshot) -> tuple[SeqRange, ...]:
    """Every live seq of the role, as disjoint sorted ranges."""
    current = SeqRange(s.lineage.branch_start, s.seq)
    return normalize_ranges((*s.lineage.closed, current))


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
