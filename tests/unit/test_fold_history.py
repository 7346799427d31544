"""Rollback, fork, and replay from a snapshot (history semantics of the fold)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rolebus.streams.core.commits import Commit, CommitKind
from rolebus.streams.core.log import Folder
from rolebus.streams.core.outcome import Accepted, Outcome, Rejected
from rolebus.streams.core.rules import Reason
from rolebus.streams.core.serde import state_from_snapshot
from rolebus.streams.core.state import (
    Counters,
    FoldConfig,
    Lifecycle,
    RoleState,
    SeqRange,
    live_ranges,
    state_digest,
)
from rolebus.wal.events import (
    Author,
    CommitId,
    CommitRequested,
    Envelope,
    MessageAppended,
    Payload,
    PersonaUpdated,
    RoleActivated,
    RoleArchived,
    RoleCreated,
    RoleDeleted,
    RoleForked,
    RoleId,
    RoleResumed,
    RoleSuspended,
    RolledBack,
    TenantId,
    WalPosition,
)
from testkit.folding import fold

BASE = datetime(2025, 1, 1, tzinfo=UTC)
R1, R2 = RoleId("r-1"), RoleId("r-2")


class Driver(Folder):
    """Sends events one by one through ``apply_event``, keeping states and commits."""

    def __init__(self, config: FoldConfig | None = None) -> None:
        super().__init__(config or FoldConfig())
        self.envelopes: list[Envelope] = []

    def send(
        self, role: str, payload: Payload, tenant: str = "t-1", seq: int | None = None
    ) -> Outcome:
        n = len(self.envelopes) + 1
        envelope = Envelope(
            uuid.UUID(int=n), TenantId(tenant), RoleId(role),
            BASE + timedelta(seconds=n), "test", payload, seq,
        )  # fmt: skip
        self.envelopes.append(envelope)
        return self.fold(envelope)

    def head(self, role: RoleId = R1) -> Commit:
        head_id = self.states[role].head_commit_id
        assert head_id is not None
        return self.commits[head_id]


def accepted(outcome: Outcome) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


def rejected(outcome: Outcome, reason: Reason) -> Rejected:
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason is reason, outcome.message
    return outcome


def msg(i: int, author: Author = Author.USER) -> MessageAppended:
    return MessageAppended(message_id=f"m{i}", author=author, content=f"text {i}", tokens_in=i)


CREATE = RoleCreated("Ada", "A patient tutor.", {"tone": "warm", "lang": "en"}, "m-1", ("s",))


def active_role(config: FoldConfig | None = None) -> Driver:
    driver = Driver(config)
    accepted(driver.send("r-1", CREATE))
    accepted(driver.send("r-1", RoleActivated()))
    return driver


CONTENT = ("lifecycle", "name", "persona", "traits", "model", "skills", "messages")


def content(state: RoleState) -> tuple[object, ...]:
    return tuple(getattr(state, name) for name in CONTENT)


# --- rollback ----------------------------------------------------------------


def test_rollback_restores_target_and_keeps_counting() -> None:
    d = active_role()
    accepted(d.send("r-1", msg(1)))
    accepted(d.send("r-1", msg(2)))
    v1 = accepted(d.send("r-1", CommitRequested("v1"))).commits[0]  # seq 5
    accepted(d.send("r-1", msg(3)))
    accepted(d.send("r-1", PersonaUpdated("Changed.", traits={"tone": "dry"})))
    previous_head = accepted(d.send("r-1", RoleSuspended())).commits[0]  # seq 8
    ok = accepted(d.send("r-1", RolledBack(v1.commit_id, reason="bad persona")))
    state = ok.state
    assert ok.seq == state.seq == 9
    assert content(state) == content(v1.snapshot)
    assert state.lifecycle is Lifecycle.ACTIVE  # the snapshot's lifecycle
    assert state.counters.rollbacks == 1
    assert state.counters.persona_updates == 1  # lifetime counters are not rolled back
    assert state.counters.messages == {"user": 3}
    (commit,) = ok.commits
    assert (commit.kind, commit.parent_id, commit.seq) == (
        CommitKind.ROLLBACK,
        previous_head.commit_id,
        9,
    )
    assert state.head_commit_id == commit.commit_id
    assert commit.state_digest == state_digest(state)
    assert ok.superseded is not None
    assert ok.superseded.after_seq == 5
    assert ok.superseded.superseded == (SeqRange(6, 8),)
    assert ok.superseded.restored == ()
    assert ok.superseded.live == (SeqRange(1, 5), SeqRange(9, 9))
    after = accepted(d.send("r-1", msg(4)))
    assert [m.message_id for m in after.state.messages] == ["m1", "m2", "m4"]
    assert [m.seq for m in after.state.messages] == [3, 4, 10]
    assert live_ranges(after.state) == (SeqRange(1, 5), SeqRange(9, 10))


def test_rollback_to_an_abandoned_branch_restores_its_seqs() -> None:
    d = active_role()
    accepted(d.send("r-1", msg(3)))
    v1 = accepted(d.send("r-1", CommitRequested("v1"))).commits[0]  # seq 4
    accepted(d.send("r-1", msg(5)))
    v2 = accepted(d.send("r-1", CommitRequested("v2"))).commits[0]  # seq 6
    first = accepted(d.send("r-1", RolledBack(v1.commit_id)))  # seq 7
    assert first.superseded is not None and first.superseded.superseded == (SeqRange(5, 6),)
    accepted(d.send("r-1", msg(8)))
    second = accepted(d.send("r-1", RolledBack(v2.commit_id)))  # seq 9
    assert second.superseded is not None
    assert second.superseded.superseded == (SeqRange(7, 8),)
    assert second.superseded.restored == (SeqRange(5, 6),)
    assert second.superseded.live == (SeqRange(1, 6), SeqRange(9, 9))
    assert [m.message_id for m in second.state.messages] == ["m3", "m5"]


def test_rollback_to_current_head_supersedes_nothing() -> None:
    d = active_role()
    head = d.head()
    ok = accepted(d.send("r-1", RolledBack(head.commit_id)))
    assert ok.superseded is not None and ok.superseded.superseded == ()
    assert ok.commits[0].parent_id == head.commit_id


def test_rollback_can_leave_archived() -> None:
    d = active_role()
    target = d.head()
    accepted(d.send("r-1", RoleArchived()))
    assert accepted(d.send("r-1", RolledBack(target.commit_id))).state.lifecycle is Lifecycle.ACTIVE


def test_rollback_refusals() -> None:
    d = active_role()
    accepted(d.send("r-2", CREATE))
    foreign = d.head(R2)
    rejected(d.send("r-1", RolledBack(CommitId("0" * 64))), Reason.UNKNOWN_COMMIT)
    rejected(d.send("r-1", RolledBack(foreign.commit_id)), Reason.UNKNOWN_COMMIT)
    target = d.head()
    accepted(d.send("r-1", RoleDeleted()))
    rejected(d.send("r-1", RolledBack(target.commit_id)), Reason.ROLE_DELETED)


def test_rollback_to_a_commit_from_the_future_is_unknown() -> None:
    """A lookup pre-filled by an earlier run of the same log cannot change outcomes."""
    first = active_role()
    accepted(first.send("r-1", msg(1)))
    future = accepted(first.send("r-1", CommitRequested("v1"))).commits[0]  # seq 4
    second = active_role()
    second.commits.update(first.commits)
    rejected(second.send("r-1", RolledBack(future.commit_id)), Reason.UNKNOWN_COMMIT)


# --- fork --------------------------------------------------------------------


def test_fork_starts_from_the_source_snapshot() -> None:
    d = active_role(FoldConfig(message_window=2))
    for i in range(3):
        accepted(d.send("r-1", msg(i, Author.ASSISTANT)))
    source = accepted(d.send("r-1", CommitRequested("v1"))).commits[0]
    ok = accepted(d.send("r-2", RoleForked(R1, source.commit_id, "Ada's twin")))
    state = ok.state
    assert (state.role_id, state.tenant_id, state.seq) == (R2, "t-1", 1)
    assert (state.name, state.lifecycle) == ("Ada's twin", Lifecycle.CREATED)
    snap = source.snapshot
    assert (state.persona, state.traits, state.model, state.skills) == (
        snap.persona, snap.traits, snap.model, snap.skills,
    )  # fmt: skip
    assert state.messages == snap.messages
    assert {m.role_id for m in state.messages} == {R1}
    assert state.counters == Counters()
    (commit,) = ok.commits
    assert (commit.kind, commit.parent_id, commit.role_id) == (
        CommitKind.FORK,
        source.commit_id,
        R2,
    )
    accepted(d.send("r-2", RoleActivated()))
    assert accepted(d.send("r-2", msg(9))).state.messages[-1].role_id == R2
    assert d.states[R1].seq == 6


def test_fork_refusals() -> None:
    d = active_role()
    source = d.head()
    accepted(d.send("r-3", CREATE))
    other = d.head(RoleId("r-3"))
    fork = RoleForked(R1, source.commit_id, "twin")
    rejected(d.send("r-2", RoleForked(R1, CommitId("f" * 64), "x")), Reason.UNKNOWN_COMMIT)
    rejected(d.send("r-2", RoleForked(R1, other.commit_id, "x")), Reason.FOREIGN_COMMIT)
    rejected(d.send("r-2", fork, tenant="t-2"), Reason.CROSS_TENANT)
    rejected(d.send("r-2", fork, seq=3), Reason.SEQ_MISMATCH)
    rejected(d.send("r-3", fork), Reason.ROLE_EXISTS)
    assert R2 not in d.states
    accepted(d.send("r-1", RoleDeleted()))
    rejected(d.send("r-2", RoleForked(R1, d.head().commit_id, "x")), Reason.ROLE_DELETED)
    # Earlier commits of a deleted role stay forkable: history is never deleted.
    accepted(d.send("r-2", fork, seq=0))


# --- replay ------------------------------------------------------------------


def busy_log() -> tuple[list[Envelope], FoldConfig]:
    config = FoldConfig(commit_every=4, message_window=3)
    d = active_role(config)
    for i in range(6):
        d.send("r-1", msg(i))
    v1 = accepted(d.send("r-1", CommitRequested("v1"))).commits[0]
    middle: list[Payload] = [msg(7), PersonaUpdated("P2"), RoleSuspended(), msg(8), RoleResumed()]
    for payload in middle:
        d.send("r-1", payload)
    d.send("r-1", RolledBack(v1.commit_id))
    for i in range(9, 16):
        d.send("r-1", msg(i))
    d.send("r-1", RoleArchived())
    return d.envelopes, config


def test_snapshot_plus_tail_equals_genesis() -> None:
    events, config = busy_log()
    genesis = fold(events, config=config)
    commits = genesis.commits_of("r-1")
    assert len(commits) >= 8
    cut_at = {e.event_id: i for i, e in enumerate(events)}
    for commit in commits:
        tail = events[cut_at[commit.event_id] + 1 :]
        earlier = {c.commit_id: c for c in commits if c.seq <= commit.seq}
        start = state_from_snapshot(commit.snapshot, head_commit_id=commit.commit_id)
        replayed = fold(tail, [start], lookup=earlier, config=config)
        final = replayed.states[R1]
        assert state_digest(final) == state_digest(genesis.states[R1])
        assert final.head_commit_id == genesis.states[R1].head_commit_id
        later = [c.commit_id for c in commits if c.seq > commit.seq]
        assert [c.commit_id for c in replayed.commits_of("r-1")] == later


def test_replay_elsewhere_gives_the_same_ids() -> None:
    """Other topic, partition and offsets: same states (but bookkeeping), same ids."""
    events, config = busy_log()
    here = fold([(e, WalPosition("a.wal", 0, i)) for i, e in enumerate(events)], config=config)
    there = fold([(e, WalPosition("b.wal", 7, 1000 + 3 * i)) for i, e in enumerate(events)],
                 config=config)  # fmt: skip
    assert here.commits == there.commits
    assert replace(here.states[R1], last_position=None) == replace(
        there.states[R1], last_position=None
    )


@pytest.mark.parametrize("window", [1, 2, 50])
def test_commit_ids_do_not_depend_on_dedupe_window(window: int) -> None:
    events, config = busy_log()
    base = fold(events, config=config)
    other = fold(events, config=replace(config, dedupe_window=window))
    assert base.commits == other.commits
