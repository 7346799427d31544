"""The output topics' wire format: round trips, stable bytes, typed errors."""

from __future__ import annotations

import base64
import json

import pytest

from rolebus.wal import records
from rolebus.wal.events import RoleId, TenantId, WalPosition
from rolebus.wal.records import (
    ChangeRecord,
    CommitRecord,
    RecordError,
    RejectionRecord,
    SeqRanges,
)
from rolebus.wal.snapshot import Lifecycle, Snapshot

POS = WalPosition("p.wal", 3, 1234)

CHANGE = ChangeRecord(
    event_id="1b4e28ba-2fa1-41d2-883f-0016d3cca427",
    role_id="r-1",
    tenant_id="acme",
    seq=7,
    head_commit_id="ab" * 32,
    event_type="RolledBack",
    position=POS,
    occurred_at_us=1_767_225_600_000_001,
    commit_ids=("ab" * 32,),
    event=b"\xc3\x01binary\x00",
    superseded=SeqRanges(3, ((4, 6),), (), ((1, 3), (7, 7))),
)
COMMIT = CommitRecord(
    commit_id="cd" * 32,
    role_id="r-1",
    tenant_id="acme",
    parent_id=None,
    seq=1,
    state_digest="ef" * 32,
    occurred_at_us=5,
    kind="created",
    label=None,
    event_id="1b4e28ba-2fa1-41d2-883f-0016d3cca427",
    position=None,
    snapshot=Snapshot(
        RoleId("r-1"), TenantId("acme"), Lifecycle.CREATED, "Nova", "p", {"a": "1", "b": "2"}
    ),
)
REJECTION = RejectionRecord(POS, records.UNDECODABLE, "garbage", b"\x00\xff")
REFUSAL = RejectionRecord(
    POS, "not_active", "role 'r-1': ...", b"x", "e-1", "r-1", "acme", "MessageAppended", 9
)


@pytest.mark.parametrize("record", [CHANGE, COMMIT, REJECTION, REFUSAL])
def test_round_trip(record: records.OutputRecord) -> None:
    data = records.encode(record)
    assert records.decode(data) == record
    doc = json.loads(data)
    assert doc["v"] == 1
    assert list(doc) == sorted(doc)


def test_change_without_rollback() -> None:
    plain = ChangeRecord(**{**CHANGE.__dict__, "superseded": None, "head_commit_id": None})
    assert records.decode_change(records.encode(plain)) == plain


def test_bytes_are_base64_and_times_are_micros() -> None:
    doc = json.loads(records.encode(CHANGE))
    assert base64.b64decode(doc["event"]) == CHANGE.event
    assert doc["occurred_at"] == CHANGE.occurred_at_us
    assert doc["position"] == {"topic": "p.wal", "partition": 3, "offset": 1234}


def test_idempotency_keys_and_kafka_keys() -> None:
    assert CHANGE.idempotency_key == CHANGE.event_id
    assert COMMIT.idempotency_key == COMMIT.commit_id
    assert REFUSAL.idempotency_key == "p.wal/3/1234"
    assert REJECTION.idempotency_key == "p.wal/3/1234"
    assert records.record_key(CHANGE) == b"r-1"
    assert records.record_key(REJECTION) is None


def test_encoding_is_stable() -> None:
    assert records.encode(COMMIT) == records.encode(records.decode_commit(records.encode(COMMIT)))


def _mutate(record: records.OutputRecord, **changes: object) -> bytes:
    doc = json.loads(records.encode(record))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "decoder", "match"),
    [
        (b"not json", records.decode_change, "not UTF-8 JSON"),
        (b"[1]", records.decode_change, "expected a JSON object"),
        (_mutate(CHANGE, v=2), records.decode_change, "expected v=1"),
        (records.encode(COMMIT), records.decode_change, "type='change'"),
        (_mutate(CHANGE, seq="7"), records.decode_change, "'seq' must be int"),
        (_mutate(CHANGE, seq=True), records.decode_change, "'seq' must be int"),
        (_mutate(CHANGE, event="@@@"), records.decode_change, "not base64"),
        (_mutate(CHANGE, position={"topic": "t"}), records.decode_change, "'partition'"),
        (_mutate(CHANGE, superseded={"after_seq": 1}), records.decode_change, "malformed"),
        (_mutate(COMMIT, snapshot=[]), records.decode_commit, "'snapshot' must be dict"),
        (_mutate(REJECTION, reason=None), records.decode_rejection, "'reason' must be str"),
        (_mutate(REJECTION, type="nope"), records.decode, "unknown type 'nope'"),
        (b"\xff", records.decode, "not UTF-8 JSON"),
    ],
)
def test_malformed_records_raise_record_error(data: bytes, decoder: object, match: str) -> None:
    with pytest.raises(RecordError, match=match):
        decoder(data)  # type: ignore[operator]
