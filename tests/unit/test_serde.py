"""Table and commit serialization: exact round trips, digest-compatible snapshots."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from rolebus.streams.core import serde
from rolebus.streams.core.state import FoldConfig, RoleState, logical_view, state_digest
from rolebus.streams.core.window import EventWindow
from rolebus.wal import records
from rolebus.wal.canonical import canonical_bytes, plain, sha256_hex
from rolebus.wal.events import WalPosition
from rolebus.wal.records import RecordError
from testkit.workload import Workload, WorkloadSpec

CONFIG = FoldConfig(commit_every=5, message_window=4, dedupe_window=16)


@pytest.fixture(scope="module")
def folded() -> Workload:
    workload = Workload(WorkloadSpec(roles=12, seed=3), CONFIG)
    workload.take(1500)
    return workload


def test_every_state_round_trips_with_bookkeeping(folded: Workload) -> None:
    assert len(folded.states) > 10
    for state in folded.states.values():
        placed = replace(state, last_position=WalPosition("p.wal", 2, state.seq * 3))
        assert serde.decode_state(serde.encode_state(placed)) == placed
        assert serde.decode_state(serde.encode_state(state)) == state


def test_logical_json_is_the_digest_input(folded: Workload) -> None:
    for state in folded.states.values():
        logical = serde.logical_json(state)
        assert logical == plain(logical_view(state))
        assert sha256_hex(logical) == state_digest(state)
        # survives a trip through the wire encoding (what projectors see)
        assert canonical_bytes(json.loads(json.dumps(logical))) == canonical_bytes(logical)


def test_every_commit_round_trips_through_its_record(folded: Workload) -> None:
    assert len(folded.commits) > 50
    kinds = set()
    for commit in folded.commits.values():
        rec = serde.commit_record(commit, WalPosition("p.wal", 0, 9))
        back = serde.commit_from_record(records.decode_commit(records.encode(rec)))
        assert back == commit
        assert sha256_hex(rec.snapshot) == rec.state_digest
        kinds.add(commit.kind)
    assert len(kinds) == 6  # created, auto, lifecycle, manual, rollback, fork


def test_full_dedupe_window_round_trips(folded: Workload) -> None:
    size = FoldConfig().dedupe_window
    ids = EventWindow.of(*(uuid.uuid4() for _ in range(size + 10)), size=size)
    state = replace(next(iter(folded.states.values())), recent_event_ids=ids)
    assert serde.decode_state(serde.encode_state(state)) == state


def test_from_micros_inverts_to_micros() -> None:
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert serde.from_micros(1_935_817_689_123_456) == moment
    assert serde.from_micros(0) == datetime(1970, 1, 1, tzinfo=UTC)


def _doc(state: RoleState) -> dict[str, object]:
    return serde.state_json(state)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(v=9), "expected v=3"),
        (lambda d: d.pop("logical"), "malformed"),
        (lambda d: d["logical"].update(lifecycle="zombie"), "malformed"),
        (lambda d: d.update(recent_event_ids=["AAA="]), "16-byte ids|malformed"),
        (lambda d: d.update(recent_event_ids=[]), "non-empty list of chunks"),
        (lambda d: d.update(last_position=[1]), "malformed"),
    ],
)
def test_malformed_state_raises_record_error(folded: Workload, mutate: object, match: str) -> None:
    doc = _doc(next(iter(folded.states.values())))
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(RecordError, match=match):
        serde.decode_state(json.dumps(doc).encode())


def test_garbage_state_bytes() -> None:
    with pytest.raises(RecordError, match="not UTF-8 JSON"):
        serde.decode_state(b"\xff")
    with pytest.raises(RecordError, match="expected v=3"):
        serde.decode_state(b"[]")


def test_commit_record_with_bad_fields(folded: Workload) -> None:
    rec = serde.commit_record(next(iter(folded.commits.values())))
    with pytest.raises(RecordError, match="unknown kind"):
        serde.commit_from_record(replace(rec, kind="squash"))
    with pytest.raises(RecordError, match="no UUID"):
        serde.commit_from_record(replace(rec, event_id="nope"))
    assert uuid.UUID(rec.event_id)
