"""The projector's pure core: consumed output records -> the rows to write.

``decode_batch`` turns a batch of Kafka records of the three output topics
into typed inputs (a change keeps its decoded WAL event); ``plan_batch``
builds one ``Plan``: rows for ``events``, ``messages``, ``commits``,
``rejections`` and ``rollbacks``, each deduplicated on its idempotency key
(event id, commit id, WAL position). The I/O shell (``store``) inserts them
with ON CONFLICT DO NOTHING and asks ``Plan.only_new`` for what the database
did not have yet, so aggregates and role updates count every input once.

Invariants: no clock, no I/O; the rows of a record depend only on the record
(so a re-projection from scratch writes identical rows); an undecodable output
record raises ``RecordError`` naming its topic, partition and offset (a
corrupt output topic is an operator problem, never skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, TypeVar

from rolebus.errors import DecodeError
from rolebus.projectors import seqranges
from rolebus.projectors.snapshot import SnapshotView, read_snapshot
from rolebus.wal import codec, records
from rolebus.wal.canonical import from_micros
from rolebus.wal.events import Envelope, MessageAppended, RolledBack, ToolCall
from rolebus.wal.records import ChangeRecord, CommitRecord, RecordError, RejectionRecord

T = TypeVar("T")


@dataclass(frozen=True)
class Fetched:
    """One consumed Kafka record of an output topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes


@dataclass(frozen=True)
class Change:
    record: ChangeRecord
    envelope: Envelope
    """``record.event`` decoded."""


@dataclass(frozen=True)
class Commit:
    record: CommitRecord
    snapshot: SnapshotView


@dataclass(frozen=True)
class Rejection:
    record: RejectionRecord
    seen_at: datetime
    """Event time, or the rejection record's Kafka time for undecodable ones."""


@dataclass(frozen=True)
class Decoded:
    changes: list[Change] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _where(f: Fetched) -> str:
    return f"output record {f.topic}[{f.partition}]@{f.offset}"


def decode_batch(fetched: Iterable[Fetched]) -> Decoded:
    """Typed inputs, in the given order; RecordError names the bad record."""
    out = Decoded()
    for f in fetched:
        try:
            rec = records.decode(f.value)
            if isinstance(rec, ChangeRecord):
                out.changes.append(Change(rec, codec.decode(rec.event)))
            elif isinstance(rec, CommitRecord):
                out.commits.append(Commit(rec, read_snapshot(rec)))
            else:
                seen = rec.occurred_at_us
                at = from_micros(seen) if seen is not None else from_micros(f.timestamp_ms * 1000)
                out.rejections.append(Rejection(rec, at))
        except (RecordError, DecodeError) as exc:
            raise RecordError(
                f"{_where(f)}: {exc} (the output topic holds a record the projector cannot "
                "read; inspect it, fix or skip it by hand, then restart `rolebus project`)"
            ) from exc
    return out


# --- rows ------------------------------------------------------------------------------


class EventRow(NamedTuple):
    event_id: str
    tenant_id: str
    role_id: str
    seq: int
    event_type: str
    occurred_at: datetime
    wal_partition: int
    wal_offset: int
    head_commit_id: str | None


class MessageRow(NamedTuple):
    tenant_id: str
    role_id: str
    seq: int
    message_id: str
    event_id: str
    author: str
    content: str
    tokens_in: int
    tokens_out: int
    latency_ms: int | None
    model: str | None
    flags: list[str]
    tool_call: str | None
    """JSON text."""
    occurred_at: datetime


class CommitRow(NamedTuple):
    commit_id: str
    tenant_id: str
    role_id: str
    parent_id: str | None
    seq: int
    kind: str
    label: str | None
    state_digest: str
    occurred_at: datetime
    event_id: str
    snapshot: str
    """JSON text."""
    live: str
    """int8multirange text."""


class RejectionRow(NamedTuple):
    wal_topic: str
    wal_partition: int
    wal_offset: int
    reason: str
    message: str
    original: bytes
    event_id: str | None
    tenant_id: str | None
    role_id: str | None
    event_type: str | None
    occurred_at: datetime | None


class RollbackRow(NamedTuple):
    event_id: str
    tenant_id: str
    role_id: str
    seq: int
    to_commit_id: str
    reason: str | None
    after_seq: int
    superseded: str
    restored: str
    live: str
    occurred_at: datetime


def event_row(c: Change) -> EventRow:
    r = c.record
    return EventRow(
        r.event_id, r.tenant_id, r.role_id, r.seq, r.event_type,
        from_micros(r.occurred_at_us), r.position.partition, r.position.offset, r.head_commit_id,
    )  # fmt: skip


def _tool_call(call: ToolCall | None) -> str | None:
    if call is None:
        return None
    data = {"name": call.name, "arguments_json": call.arguments_json, "result": call.result}
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def message_row(c: Change) -> MessageRow | None:
    p = c.envelope.payload
    if not isinstance(p, MessageAppended):
        return None
    r = c.record
    return MessageRow(
        r.tenant_id, r.role_id, r.seq, p.message_id, r.event_id, p.author.value, p.content,
        p.tokens_in, p.tokens_out, p.latency_ms, p.model, sorted(f.value for f in p.flags),
        _tool_call(p.tool_call), from_micros(r.occurred_at_us),
    )  # fmt: skip


def rollback_row(c: Change) -> RollbackRow | None:
    p, r = c.envelope.payload, c.record
    if not isinstance(p, RolledBack) or r.superseded is None:
        return None
    s = r.superseded
    return RollbackRow(
        r.event_id, r.tenant_id, r.role_id, r.seq, p.to_commit_id, p.reason, s.after_seq,
        seqranges.literal(s.superseded), seqranges.literal(s.restored),
        seqranges.literal(s.live), from_micros(r.occurred_at_us),
    )  # fmt: skip


def commit_row(c: Commit) -> CommitRow:
    r = c.record
    return CommitRow(
        r.commit_id, r.tenant_id, r.role_id, r.parent_id, r.seq, r.kind, r.label,
        r.state_digest, from_micros(r.occurred_at_us), r.event_id, c.snapshot.json_text,
        seqranges.literal(c.snapshot.live),
    )  # fmt: skip


def rejection_row(j: Rejection) -> RejectionRow:
    r = j.record
    at = None if r.occurred_at_us is None else from_micros(r.occurred_at_us)
    return RejectionRow(
        r.position.topic, r.position.partition, r.position.offset, r.reason, r.message,
        r.original, r.event_id, r.tenant_id, r.role_id, r.event_type, at,
    )  # fmt: skip


# --- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One batch's inputs, each once (first occurrence wins; duplicates are equal)."""

    changes: tuple[Change, ...]
    commits: tuple[Commit, ...]
    rejections: tuple[Rejection, ...]

    def event_rows(self) -> list[EventRow]:
        return [event_row(c) for c in self.changes]

    def message_rows(self) -> list[MessageRow]:
        return [m for m in map(message_row, self.changes) if m is not None]

    def rollback_rows(self) -> list[RollbackRow]:
        return [r for r in map(rollback_row, self.changes) if r is not None]

    def commit_rows(self) -> list[CommitRow]:
        return [commit_row(c) for c in self.commits]

    def rejection_rows(self) -> list[RejectionRow]:
        return [rejection_row(j) for j in self.rejections]

    def only_new(
        self, events: Collection[str], commits: Collection[str], rejections: Collection[str]
    ) -> Plan:
        """The inputs whose keys the database did not have before this batch."""
        return Plan(
            tuple(c for c in self.changes if c.record.event_id in events),
            tuple(c for c in self.commits if c.record.commit_id in commits),
            tuple(j for j in self.rejections if j.record.idempotency_key in rejections),
        )


def _once(items: Iterable[T], key: Callable[[T], str]) -> tuple[T, ...]:
    seen: dict[str, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return tuple(seen.values())


def plan_batch(decoded: Decoded) -> Plan:
    """Deduplicate the batch on idempotency keys, keeping input order."""
    return Plan(
        _once(decoded.changes, lambda c: c.record.event_id),
        _once(decoded.commits, lambda c: c.record.commit_id),
        _once(decoded.rejections, lambda j: j.record.idempotency_key),
    )
