"""The wire format of the stream processors' OUTPUT topics.

``<prefix>.changes`` (accepted events), ``<prefix>.commits`` (commits with
their snapshot) and ``<prefix>.rejections`` (refused or undecodable WAL
records). It lives in ``rolebus.wal`` so that projectors read it without
importing ``rolebus.streams``.

Encoding: one UTF-8 JSON object per Kafka record, keys sorted, no
whitespace, with ``"v": 1``. Kafka key = the role id (UTF-8), or no key for
a WAL record whose role is unknown (undecodable). Times are integer
microseconds since the Unix epoch (UTC), like the canonical encoding; WAL
positions are ``{"topic", "partition", "offset"}``; raw bytes are base64.

Invariants: ``decode_*(encode(record)) == record``; decoders raise
``RecordError`` (never another exception) for anything that is not a
well-formed record of their kind. Outputs are at-least-once: a record can
arrive twice, always with identical content, and ``idempotency_key`` names
what to dedupe on (the event id; the commit id; a rejection's WAL position).
A commit record's ``snapshot`` is the committed logical state, typed
(``rolebus.wal.snapshot.Snapshot``); on the wire it is its canonical JSON, so
``sha256(canonical_bytes(snapshot)) == state_digest`` can be checked by any
consumer. The writer splices the snapshot's cached canonical text (the one
the digest was computed from) instead of encoding the state again.
Headers: ``rolebus-app`` (the app id of the writer), ``traceparent`` (the
worker's batch span), ``rolebus-commit-id`` on commits.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from rolebus.wal.events import WalPosition
from rolebus.wal.snapshot import RecordError, Snapshot, parse_snapshot

VERSION: Final = 1
UNDECODABLE: Final = "undecodable"
"""Reason code of a WAL record that is not a decodable rolebus event."""
KEY_MISMATCH: Final = "key_mismatch"
"""Reason code of an event whose Kafka key is not its role id."""
COMMIT_ID_HEADER: Final = "rolebus-commit-id"
"""Header carrying the commit id on ``commits`` records (indexing without parsing)."""
APP_HEADER: Final = "rolebus-app"
"""Header naming the processor group (app id) that wrote an output record."""


__all__ = [
    "APP_HEADER", "COMMIT_ID_HEADER", "KEY_MISMATCH", "UNDECODABLE", "VERSION", "ChangeRecord",
    "CommitRecord", "OutputRecord", "RecordError", "RejectionRecord", "SeqRanges", "decode",
    "decode_change", "decode_commit", "decode_rejection", "encode", "record_key",
]  # fmt: skip


@dataclass(frozen=True)
class SeqRanges:
    """A rollback's effect on the role's seqs (see ``streams.outcome.Superseded``)."""

    after_seq: int
    """The target commit's seq."""
    superseded: tuple[tuple[int, int], ...]
    """Inclusive ``(first, last)`` seq ranges no longer live."""
    restored: tuple[tuple[int, int], ...]
    """Ranges superseded earlier and live again."""
    live: tuple[tuple[int, int], ...]
    """Every live seq of the role after the rollback."""


@dataclass(frozen=True)
class ChangeRecord:
    """An accepted event, with the role's seq and head commit after it."""

    event_id: str
    role_id: str
    tenant_id: str
    seq: int
    """The role's seq after this event (1 for its first event)."""
    head_commit_id: str | None
    """The role's head commit after this event."""
    event_type: str
    """Payload type name, e.g. ``MessageAppended``."""
    position: WalPosition
    occurred_at_us: int
    commit_ids: tuple[str, ...]
    """Commits this event cut (at most one today)."""
    event: bytes
    """The WAL record's value: the Avro single-object encoding of the envelope."""
    superseded: SeqRanges | None = None
    """Set on rollbacks only."""

    @property
    def idempotency_key(self) -> str:
        return self.event_id


@dataclass(frozen=True)
class CommitRecord:
    """A commit and the state it records."""

    commit_id: str
    role_id: str
    tenant_id: str
    parent_id: str | None
    seq: int
    state_digest: str
    occurred_at_us: int
    kind: str
    """created | auto | lifecycle | manual | rollback | fork."""
    label: str | None
    event_id: str
    """The event that cut the commit."""
    position: WalPosition | None
    """WAL position of that event, when known (not part of the commit id)."""
    snapshot: Snapshot
    """The committed logical state."""

    @property
    def idempotency_key(self) -> str:
        return self.commit_id


@dataclass(frozen=True)
class RejectionRecord:
    """A refused or undecodable WAL record; the original bytes are kept."""

    position: WalPosition
    reason: str
    """Machine-readable code: a ``streams.rules.Reason`` value, ``undecodable``
    or ``key_mismatch``."""
    message: str
    """For humans: names the object, the rule and the way out."""
    original: bytes
    """The WAL record's value, byte for byte."""
    event_id: str | None = None
    role_id: str | None = None
    tenant_id: str | None = None
    event_type: str | None = None
    occurred_at_us: int | None = None

    @property
    def idempotency_key(self) -> str:
        """The WAL position: a client retry (same event id, new offset) refused
        twice is two refusals, a redelivery of one WAL record is one."""
        pos = self.position
        return f"{pos.topic}/{pos.partition}/{pos.offset}"


OutputRecord = ChangeRecord | CommitRecord | RejectionRecord

# --- encoding ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _position(pos: WalPosition | None) -> dict[str, Any] | None:
    if pos is None:
        return None
    return {"topic": pos.topic, "partition": pos.partition, "offset": pos.offset}


def _ranges(ranges: SeqRanges | None) -> dict[str, Any] | None:
    if ranges is None:
        return None
    return {
        "after_seq": ranges.after_seq,
        "superseded": [list(r) for r in ranges.superseded],
        "restored": [list(r) for r in ranges.restored],
        "live": [list(r) for r in ranges.live],
    }


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def change_json(rec: ChangeRecord) -> dict[str, Any]:
    return {
        "v": VERSION, "type": "change", "event_id": rec.event_id, "role_id": rec.role_id,
        "tenant_id": rec.tenant_id, "seq": rec.seq, "head_commit_id": rec.head_commit_id,
        "event_type": rec.event_type, "position": _position(rec.position),
        "occurred_at": rec.occurred_at_us, "commit_ids": list(rec.commit_ids),
        "event": _b64(rec.event), "superseded": _ranges(rec.superseded),
    }  # fmt: skip


def _commit_fields(rec: CommitRecord) -> dict[str, Any]:
    """Every field of the commit record but its snapshot."""
    return {
        "v": VERSION, "type": "commit", "commit_id": rec.commit_id, "role_id": rec.role_id,
        "tenant_id": rec.tenant_id, "parent_id": rec.parent_id, "seq": rec.seq,
        "state_digest": rec.state_digest, "occurred_at": rec.occurred_at_us, "kind": rec.kind,
        "label": rec.label, "event_id": rec.event_id, "position": _position(rec.position),
    }  # fmt: skip


def _encode_commit(rec: CommitRecord) -> bytes:
    """``{...fields, "snapshot": <canonical text>}`` with keys sorted: "snapshot"
    sorts between "seq" and "state_digest", so the fields before and after it
    are each one non-empty sorted map and the snapshot's text goes in between."""
    doc = _commit_fields(rec)
    before = _dumps({k: v for k, v in doc.items() if k < "snapshot"})
    after = _dumps({k: v for k, v in doc.items() if k > "snapshot"})
    snapshot = rec.snapshot.canonical_text.encode()
    return before[:-1] + b',"snapshot":' + snapshot + b"," + after[1:]


def rejection_json(rec: RejectionRecord) -> dict[str, Any]:
    return {
        "v": VERSION, "type": "rejection", "position": _position(rec.position),
        "reason": rec.reason, "message": rec.message, "original": _b64(rec.original),
        "event_id": rec.event_id, "role_id": rec.role_id, "tenant_id": rec.tenant_id,
        "event_type": rec.event_type, "occurred_at": rec.occurred_at_us,
    }  # fmt: skip


def encode(rec: OutputRecord) -> bytes:
    """The record's bytes (UTF-8 JSON, sorted keys)."""
    if isinstance(rec, ChangeRecord):
        return _dumps(change_json(rec))
    if isinstance(rec, CommitRecord):
        return _encode_commit(rec)
    return _dumps(rejection_json(rec))


def record_key(rec: OutputRecord) -> bytes | None:
    """The Kafka key: the role id, None when the role is not known."""
    return None if rec.role_id is None else rec.role_id.encode()


# --- decoding ----------------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Typed field access that turns every malformation into a RecordError."""

    def __init__(self, doc: Any, kind: str) -> None:
        if not isinstance(doc, dict):
            raise RecordError(f"{kind} record: expected a JSON object, got {type(doc).__name__}")
        self.kind = kind
        self.doc: dict[str, Any] = doc

    @classmethod
    def parse(cls, data: bytes, kind: str) -> _Reader:
        return cls.of(_loads(data, kind), kind)

    @classmethod
    def of(cls, parsed: Any, kind: str) -> _Reader:
        """A reader of an already parsed record of ``kind`` (version and type checked)."""
        reader = cls(parsed, kind)
        doc = reader.doc
        if doc.get("v") != VERSION or doc.get("type") != kind:
            raise RecordError(
                f"{kind} record: expected v={VERSION} and type={kind!r}, got "
                f"v={doc.get('v')!r} type={doc.get('type')!r} (a newer rolebus wrote it? upgrade)"
            )
        return reader

    def get(self, name: str, kind: type[T], *, optional: bool = False) -> T:
        value = self.doc.get(name)
        if value is None and optional:
            return value  # type: ignore[return-value]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            want = kind.__name__ + (" or null" if optional else "")
            raise RecordError(f"{self.kind} record: field {name!r} must be {want}, got {value!r}")
        return value

    def raw(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.get(name, str), validate=True)
        except binascii.Error as exc:
            raise RecordError(f"{self.kind} record: field {name!r} is not base64 ({exc})") from exc

    def position(self, name: str = "position", *, optional: bool = False) -> WalPosition | None:
        pos = self.get(name, dict, optional=optional)
        if pos is None:
            return None
        sub = _Reader(pos, f"{self.kind}.{name}")
        return WalPosition(sub.get("topic", str), sub.get("partition", int), sub.get("offset", int))

    def ranges(self, name: str) -> SeqRanges | None:
        data = self.get(name, dict, optional=True)
        if data is None:
            return None
        try:
            pairs = {k: _pairs(data[k]) for k in ("superseded", "restored", "live")}
            return SeqRanges(
                int(data["after_seq"]), pairs["superseded"], pairs["restored"], pairs["live"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{self.kind} record: field {name!r} is malformed ({exc!r})") from exc


def _pairs(items: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(first), int(last)) for first, last in items)


def _loads(data: bytes, kind: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, TypeError) as exc:
        raise RecordError(f"{kind} record: not UTF-8 JSON ({exc})") from exc


def decode_change(data: bytes) -> ChangeRecord:
    return _change(_Reader.parse(data, "change"))


def _change(r: _Reader) -> ChangeRecord:
    return ChangeRecord(
        event_id=r.get("event_id", str), role_id=r.get("role_id", str),
        tenant_id=r.get("tenant_id", str), seq=r.get("seq", int),
        head_commit_id=r.get("head_commit_id", str, optional=True),
        event_type=r.get("event_type", str), position=_required(r.position()),
        occurred_at_us=r.get("occurred_at", int),
        commit_ids=tuple(str(c) for c in r.get("commit_ids", list)),
        event=r.raw("event"), superseded=r.ranges("superseded"),
    )  # fmt: skip


def decode_commit(data: bytes) -> CommitRecord:
    return _commit(_Reader.parse(data, "commit"))


def _commit(r: _Reader) -> CommitRecord:
    return CommitRecord(
        commit_id=r.get("commit_id", str), role_id=r.get("role_id", str),
        tenant_id=r.get("tenant_id", str), parent_id=r.get("parent_id", str, optional=True),
        seq=r.get("seq", int), state_digest=r.get("state_digest", str),
        occurred_at_us=r.get("occurred_at", int), kind=r.get("kind", str),
        label=r.get("label", str, optional=True), event_id=r.get("event_id", str),
        position=r.position(optional=True), snapshot=parse_snapshot(r.get("snapshot", dict)),
    )  # fmt: skip


def decode_rejection(data: bytes) -> RejectionRecord:
    return _rejection(_Reader.parse(data, "rejection"))


def _rejection(r: _Reader) -> RejectionRecord:
    return RejectionRecord(
        position=_required(r.position()), reason=r.get("reason", str),
        message=r.get("message", str), original=r.raw("original"),
        event_id=r.get("event_id", str, optional=True),
        role_id=r.get("role_id", str, optional=True),
        tenant_id=r.get("tenant_id", str, optional=True),
        event_type=r.get("event_type", str, optional=True),
        occurred_at_us=r.get("occurred_at", int, optional=True),
    )  # fmt: skip


_DECODERS: Final[Mapping[str, Callable[[_Reader], OutputRecord]]] = {
    "change": _change,
    "commit": _commit,
    "rejection": _rejection,
}


def decode(data: bytes) -> OutputRecord:
    """Any output record, by its ``type`` field."""
    doc = _loads(data, "output")
    kind = doc.get("type") if isinstance(doc, dict) else None
    if not isinstance(kind, str) or kind not in _DECODERS:
        raise RecordError(f"output record: unknown type {kind!r} (expected {', '.join(_DECODERS)})")
    return _DECODERS[kind](_Reader.of(doc, kind))  # parsed once: commits carry whole states


def _required(pos: WalPosition | None) -> WalPosition:
    if pos is None:  # pragma: no cover - _Reader.position(optional=False) never returns None
        raise RecordError("position is required")
    return pos
