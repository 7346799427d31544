"""Serialization of the fold's values for the changelog and the output records.

``RoleState`` <-> JSON (the worker's state changelog) and ``Commit`` <->
``rolebus.wal.records.CommitRecord`` (the ``commits`` output topic).

Invariants: ``state_from_json(state_json(s)) == s`` for every state the fold
can build, bookkeeping included (WAL position, dedupe window, head commit,
events since commit); ``logical_json(s) == canonical.plain(logical_view(s))``,
so ``sha256(canonical_bytes(logical_json(s))) == state_digest(s)``;
``commit_from_record(commit_record(c)) == c``. The converters are written
out field by field (no generic reflection) because they sit on the worker's
hot path. Decoders raise ``RecordError`` for malformed input.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from rolebus.streams.core.commits import Commit, CommitKind
from rolebus.streams.core.state import RoleState, logical_json, logical_view
from rolebus.streams.core.window import EventWindow
from rolebus.wal.canonical import from_micros, to_micros
from rolebus.wal.events import CommitId, RoleId, WalPosition
from rolebus.wal.records import CommitRecord, RecordError
from rolebus.wal.snapshot import Snapshot, logical_fields

STATE_VERSION: Final = 3
_KINDS: Final = {k.value: k for k in CommitKind}


# --- logical state ---------------------------------------------------------------


def state_from_logical(d: Mapping[str, Any], **bookkeeping: Any) -> RoleState:
    """A state from ``snapshot_json`` data plus the given bookkeeping fields."""
    return RoleState(**logical_fields(d), **bookkeeping)


def state_from_snapshot(snapshot: Snapshot, **bookkeeping: Any) -> RoleState:
    """A state from a commit's snapshot plus the given bookkeeping fields."""
    return RoleState(**logical_view(snapshot), **bookkeeping)


# --- full state (table values) -----------------------------------------------------


def _ids_b64(ids: Iterable[int]) -> str:
    return base64.b64encode(b"".join(i.to_bytes(16, "big") for i in ids)).decode("ascii")


def _ids(text: str) -> tuple[int, ...]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 16:
        raise RecordError(f"role state: dedupe window of {len(raw)} bytes is not 16-byte ids")
    return tuple(int.from_bytes(raw[i : i + 16], "big") for i in range(0, len(raw), 16))


def _window_json(w: EventWindow) -> list[str]:
    """The full chunks (ids sorted), then the tail: the chunks are kept as they are."""
    return [*(_ids_b64(sorted(chunk)) for chunk in w.full), _ids_b64(w.tail)]


def _window(doc: Sequence[str]) -> EventWindow:
    if not isinstance(doc, list) or not doc:
        raise RecordError("role state: recent_event_ids must be a non-empty list of chunks")
    return EventWindow(tuple(frozenset(_ids(chunk)) for chunk in doc[:-1]), _ids(doc[-1]))


def _bookkeeping_json(s: RoleState) -> dict[str, Any]:
    pos = s.last_position
    return {
        "v": STATE_VERSION,
        "head_commit_id": s.head_commit_id,
        "events_since_commit": s.events_since_commit,
        "last_position": None if pos is None else [pos.topic, pos.partition, pos.offset],
        "recent_event_ids": _window_json(s.recent_event_ids),
    }


def state_json(s: RoleState) -> dict[str, Any]:
    """The whole state, bookkeeping included, as JSON data."""
    return {**_bookkeeping_json(s), "logical": logical_json(s)}


def state_from_json(d: Mapping[str, Any]) -> RoleState:
    if not isinstance(d, Mapping) or d.get("v") != STATE_VERSION:
        got = d.get("v") if isinstance(d, Mapping) else type(d).__name__
        raise RecordError(f"role state: expected v={STATE_VERSION}, got {got!r}")
    try:
        pos = d["last_position"]
        return state_from_logical(
            d["logical"],
            head_commit_id=d["head_commit_id"],
            events_since_commit=d["events_since_commit"],
            last_position=None if pos is None else WalPosition(pos[0], pos[1], pos[2]),
            recent_event_ids=_window(d["recent_event_ids"]),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RecordError(f"role state: malformed ({exc!r})") from exc


def encode_state(s: RoleState) -> bytes:
    """``state_json(s)`` as compact JSON, the logical part spliced in from the
    state's canonical text (built once: a state at a commit shares the commit's)."""
    doc = json.dumps(_bookkeeping_json(s), separators=(",", ":"), ensure_ascii=False)
    return f'{doc[:-1]},"logical":{s.canonical_text}}}'.encode()


def decode_state(data: bytes) -> RoleState:
    try:
        doc = json.loads(data)
    except (ValueError, TypeError) as exc:
        raise RecordError(f"role state: not UTF-8 JSON ({exc})") from exc
    return state_from_json(doc)


# --- commits -----------------------------------------------------------------


def commit_record(commit: Commit, position: WalPosition | None = None) -> CommitRecord:
    return CommitRecord(
        commit_id=commit.commit_id, role_id=commit.role_id,
        tenant_id=commit.snapshot.tenant_id, parent_id=commit.parent_id, seq=commit.seq,
        state_digest=commit.state_digest, occurred_at_us=to_micros(commit.occurred_at),
        kind=commit.kind.value, label=commit.label, event_id=str(commit.event_id),
        position=position, snapshot=commit.snapshot,
    )  # fmt: skip


def commit_from_record(rec: CommitRecord) -> Commit:
    """The commit a record describes (its snapshot rebuilt from the logical view)."""
    kind = _KINDS.get(rec.kind)
    if kind is None:
        raise RecordError(f"commit {rec.commit_id}: unknown kind {rec.kind!r}")
    commit_id = CommitId(rec.commit_id)
    try:
        event_id = uuid.UUID(rec.event_id)
    except ValueError as exc:
        raise RecordError(f"commit {rec.commit_id}: event_id {rec.event_id!r} is no UUID") from exc
    return Commit(
        commit_id=commit_id, role_id=RoleId(rec.role_id),
        parent_id=None if rec.parent_id is None else CommitId(rec.parent_id),
        seq=rec.seq, state_digest=rec.state_digest, occurred_at=from_micros(rec.occurred_at_us),
        kind=kind, label=rec.label, event_id=event_id,
        snapshot=rec.snapshot,
    )  # fmt: skip
