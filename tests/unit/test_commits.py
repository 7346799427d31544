"""Commit ids, snapshots and the digest, checked on hand-built states."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from rolebus.streams.core.commits import (
    NO_COMMITS,
    ChainLookup,
    Commit,
    CommitKind,
    CommitLookup,
    commit_id_for,
    index_commits,
    is_consistent,
    make_commit,
)
from rolebus.streams.core.state import (
    Lifecycle,
    RoleState,
    SeqRange,
    logical_view,
    normalize_ranges,
    state_digest,
    subtract_ranges,
)
from rolebus.streams.core.window import EventWindow
from rolebus.wal.events import CommitId, RoleId, TenantId, WalPosition
from rolebus.wal.snapshot import Snapshot

AT = datetime(2025, 1, 1, 9, 30, 0, 123456, tzinfo=UTC)
EVENT = uuid.UUID(int=1)


def _state(**changes: object) -> RoleState:
    base = RoleState(
        role_id=RoleId("r-1"),
        tenant_id=TenantId("t-1"),
        lifecycle=Lifecycle.ACTIVE,
        name="Ada",
        persona="A patient tutor.",
        traits={"tone": "warm", "language": "en"},
        model="llama3:8b",
        skills=("search",),
        seq=3,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_commit_id_recipe_reproduced_by_hand() -> None:
    """The documented recipe, written without rolebus helpers."""
    digest = "ab" * 32
    parent = CommitId("cd" * 32)
    text = (
        '{"occurred_at":1735723800123456,"parent_id":"' + parent + '","role_id":"r-1",'
        '"seq":3,"state_digest":"' + digest + '"}'
    )
    expected = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert commit_id_for(RoleId("r-1"), parent, 3, digest, AT) == expected


def test_first_commit_has_null_parent_in_the_recipe() -> None:
    digest = "00" * 32
    doc = {"role_id": "r-1", "parent_id": None, "seq": 1, "state_digest": digest}
    doc["occurred_at"] = 1735723800123456
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert commit_id_for(RoleId("r-1"), None, 1, digest, AT) == expected


def test_digest_ignores_trait_insertion_order() -> None:
    one = _state(traits={"tone": "warm", "language": "en"})
    two = _state(traits={"language": "en", "tone": "warm"})
    assert state_digest(one) == state_digest(two)
    c1 = make_commit(one, CommitKind.AUTO, occurred_at=AT, event_id=EVENT)
    c2 = make_commit(two, CommitKind.AUTO, occurred_at=AT, event_id=EVENT)
    assert c1.commit_id == c2.commit_id


def test_digest_ignores_bookkeeping() -> None:
    state = _state()
    noisy = replace(
        state,
        head_commit_id=CommitId("ef" * 32),
        events_since_commit=4,
        last_position=WalPosition("rolebus.wal", 3, 99),
        recent_event_ids=EventWindow.of(EVENT, size=10),
    )
    assert state_digest(noisy) == state_digest(state)
    assert "last_position" not in logical_view(state)


@pytest.mark.parametrize(
    "change",
    [
        {"persona": "Another persona."},
        {"traits": {"tone": "dry", "language": "en"}},
        {"seq": 4},
        {"lifecycle": Lifecycle.SUSPENDED},
        {"skills": ("search", "calc")},
        {"model": None},
    ],
)
def test_digest_covers_logical_fields(change: dict[str, object]) -> None:
    assert state_digest(_state(**change)) != state_digest(_state())


def test_make_commit_snapshot_invariants() -> None:
    state = replace(
        _state(events_since_commit=2, head_commit_id=CommitId("11" * 32)),
        last_position=WalPosition("rolebus.wal", 0, 5),
        recent_event_ids=EventWindow.of(EVENT, size=10),
    )
    commit = make_commit(state, CommitKind.LIFECYCLE, occurred_at=AT, event_id=EVENT)
    assert commit.parent_id == "11" * 32
    assert commit.seq == 3
    assert commit.label is None
    assert type(commit.snapshot) is Snapshot  # the logical state, no bookkeeping
    assert logical_view(commit.snapshot) == logical_view(state)
    assert state_digest(commit.snapshot) == commit.state_digest == state_digest(state)
    assert is_consistent(commit)


def test_label_only_on_manual_commits() -> None:
    manual = make_commit(_state(), CommitKind.MANUAL, occurred_at=AT, event_id=EVENT, label="v1")
    auto = make_commit(_state(), CommitKind.AUTO, occurred_at=AT, event_id=EVENT, label="v1")
    assert manual.label == "v1"
    assert auto.label is None
    assert manual.commit_id == auto.commit_id  # kind and label are not in the id


def test_is_consistent_detects_tampering() -> None:
    commit = make_commit(_state(), CommitKind.AUTO, occurred_at=AT, event_id=EVENT)
    tampered = replace(commit, snapshot=replace(commit.snapshot, persona="evil"))
    assert not is_consistent(tampered)
    assert not is_consistent(replace(commit, seq=4))


def test_lookups() -> None:
    commit = make_commit(_state(), CommitKind.AUTO, occurred_at=AT, event_id=EVENT)
    table: CommitLookup = index_commits([commit])
    chain = ChainLookup(NO_COMMITS, table)
    assert chain.get(commit.commit_id) is commit
    assert chain.get(CommitId("00" * 32)) is None
    assert NO_COMMITS.get(commit.commit_id) is None
    assert isinstance(commit, Commit)


def test_range_helpers() -> None:
    ranges = [SeqRange(5, 7), SeqRange(1, 2), SeqRange(3, 3), SeqRange(9, 8)]
    assert normalize_ranges(ranges) == (SeqRange(1, 3), SeqRange(5, 7))
    assert subtract_ranges([SeqRange(1, 10)], [SeqRange(3, 4), SeqRange(8, 20)]) == (
        SeqRange(1, 2),
        SeqRange(5, 7),
    )
    assert subtract_ranges([SeqRange(1, 3)], [SeqRange(1, 3)]) == ()
