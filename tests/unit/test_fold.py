"""The fold: lifecycle through events, messages, seq, idempotence, commit cadence."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rolebus.config import Settings
from rolebus.errors import ConfigError, FoldError
from rolebus.streams.core.commits import CommitKind
from rolebus.streams.core.fold import apply_event
from rolebus.streams.core.log import Folder
from rolebus.streams.core.outcome import Accepted, Duplicate, DuplicateBy, Outcome, Rejected
from rolebus.streams.core.rules import EVENT_TRANSITIONS, Reason
from rolebus.streams.core.state import FoldConfig, Lifecycle, state_digest
from rolebus.wal.events import (
    Author,
    CommitId,
    CommitRequested,
    Envelope,
    Flag,
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
    ToolCall,
    WalPosition,
)
from testkit.folding import fold

BASE = datetime(2025, 1, 1, tzinfo=UTC)
L = Lifecycle


class Driver(Folder):
    """Sends events one by one through ``apply_event``, keeping states and commits."""

    def __init__(self, config: FoldConfig | None = None) -> None:
        super().__init__(config or FoldConfig())
        self.n = 0

    def envelope(
        self, role: str, payload: Payload, *, tenant: str = "t-1", expected_seq: int | None = None
    ) -> Envelope:
        self.n += 1
        return Envelope(
            event_id=uuid.UUID(int=self.n),
            tenant_id=TenantId(tenant),
            role_id=RoleId(role),
            occurred_at=BASE + timedelta(seconds=self.n),
            producer="test",
            payload=payload,
            expected_seq=expected_seq,
        )

    def send(self, role: str, payload: Payload, **kw: object) -> Outcome:
        return self.fold(self.envelope(role, payload, **kw))  # type: ignore[arg-type]


def accepted(outcome: Outcome) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


def rejected(outcome: Outcome, reason: Reason) -> Rejected:
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason is reason, outcome.message
    return outcome


CREATE = RoleCreated(name="Ada", persona="A patient tutor.", traits={"tone": "warm"})
MSG = MessageAppended(message_id="m", author=Author.USER, content="hello")
PATHS: dict[Lifecycle, list[Payload]] = {
    L.CREATED: [],
    L.ACTIVE: [RoleActivated()],
    L.SUSPENDED: [RoleActivated(), RoleSuspended()],
    L.ARCHIVED: [RoleArchived()],
    L.DELETED: [RoleDeleted()],
}


def role_in(lifecycle: Lifecycle, driver: Driver | None = None) -> Driver:
    driver = driver or Driver()
    for payload in [CREATE, *PATHS[lifecycle]]:
        accepted(driver.send("r-1", payload))
    assert driver.states[RoleId("r-1")].lifecycle is lifecycle
    return driver


LIFECYCLE_EVENTS = [RoleActivated, RoleSuspended, RoleResumed, RoleArchived, RoleDeleted]


@pytest.mark.parametrize(("current", "event_type"), list(itertools.product(L, LIFECYCLE_EVENTS)))
def test_lifecycle_matrix_through_the_fold(
    current: Lifecycle, event_type: type[RoleActivated]
) -> None:
    driver = role_in(current)
    before = driver.states[RoleId("r-1")]
    outcome = driver.send("r-1", event_type())
    target = EVENT_TRANSITIONS[event_type].get(current)
    after = driver.states[RoleId("r-1")]
    if target is None:
        rejected(outcome, Reason.TRANSITION_NOT_ALLOWED)
        assert state_digest(after) == state_digest(before)
    else:
        ok = accepted(outcome)
        assert after.lifecycle is target
        assert [c.kind for c in ok.commits] == [CommitKind.LIFECYCLE]
        assert after.head_commit_id == ok.commits[0].commit_id


@pytest.mark.parametrize("current", list(L))
def test_messages_only_while_active(current: Lifecycle) -> None:
    driver = role_in(current)
    outcome = driver.send("r-1", MSG)
    if current is L.ACTIVE:
        assert accepted(outcome).state.messages[-1].content == "hello"
    elif current is L.DELETED:
        rejected(outcome, Reason.ROLE_DELETED)
    else:
        rejected(outcome, Reason.NOT_ACTIVE)


@pytest.mark.parametrize("current", list(L))
def test_persona_update_rule(current: Lifecycle) -> None:
    driver = role_in(current)
    outcome = driver.send("r-1", PersonaUpdated(persona="New.", skills=("calc",)))
    if current in (L.CREATED, L.ACTIVE, L.SUSPENDED):
        state = accepted(outcome).state
        assert (state.persona, state.skills, state.traits) == ("New.", ("calc",), {"tone": "warm"})
        assert state.counters.persona_updates == 1
    else:
        reason = Reason.ROLE_DELETED if current is L.DELETED else Reason.ROLE_ARCHIVED
        rejected(outcome, reason)


@pytest.mark.parametrize("current", list(L))
def test_commit_requested_unless_deleted(current: Lifecycle) -> None:
    driver = role_in(current)
    outcome = driver.send("r-1", CommitRequested(label="v1"))
    if current is L.DELETED:
        rejected(outcome, Reason.ROLE_DELETED)
    else:
        (commit,) = accepted(outcome).commits
        assert (commit.kind, commit.label) == (CommitKind.MANUAL, "v1")


@pytest.mark.parametrize(
    "payload",
    [RoleActivated(), MSG, PersonaUpdated(persona="x"), CommitRequested(label="v"),
     RolledBack(to_commit_id=CommitId("0" * 64)), RoleDeleted()],
)  # fmt: skip
def test_unknown_role_refused(payload: Payload) -> None:
    driver = Driver()
    outcome = driver.send("r-404", payload)
    assert "no such role" in rejected(outcome, Reason.UNKNOWN_ROLE).message
    assert driver.states == {}


def test_second_creation_refused() -> None:
    driver = role_in(L.ACTIVE)
    head = driver.commits[driver.states[RoleId("r-1")].head_commit_id]  # type: ignore[index]
    rejected(driver.send("r-1", CREATE), Reason.ROLE_EXISTS)
    fork = RoleForked(RoleId("r-1"), head.commit_id, "again")
    rejected(driver.send("r-1", fork), Reason.ROLE_EXISTS)


def test_created_role() -> None:
    driver = Driver()
    ok = accepted(driver.send("r-1", CREATE, expected_seq=0))
    assert (ok.seq, ok.state.lifecycle, ok.state.name) == (1, L.CREATED, "Ada")
    (commit,) = ok.commits
    assert (commit.kind, commit.parent_id, commit.seq) == (CommitKind.CREATED, None, 1)


def test_expected_seq() -> None:
    driver = role_in(L.ACTIVE)  # seq 2
    rejected(driver.send("r-1", MSG, expected_seq=1), Reason.SEQ_MISMATCH)
    assert accepted(driver.send("r-1", MSG, expected_seq=2)).seq == 3
    rejected(driver.send("r-2", CREATE, expected_seq=1), Reason.SEQ_MISMATCH)


def test_other_tenant_refused() -> None:
    driver = role_in(L.ACTIVE)
    rejected(driver.send("r-1", MSG, tenant="t-2"), Reason.CROSS_TENANT)


def test_seq_increases_by_one_per_accepted_event_only() -> None:
    driver = role_in(L.ACTIVE)
    seqs = []
    payloads: list[Payload] = [MSG, RoleActivated(), MSG, RoleSuspended(), MSG, RoleResumed()]
    for payload in payloads:
        outcome = driver.send("r-1", payload)
        if isinstance(outcome, Accepted):
            seqs.append(outcome.seq)
    assert seqs == [3, 4, 5, 6]


def test_message_window_and_counters() -> None:
    driver = role_in(L.ACTIVE, Driver(FoldConfig(message_window=2)))
    tool = ToolCall(name="search", arguments_json='{"q": "x"}', result="y")
    msgs = [
        MessageAppended("m1", Author.USER, "q?", tokens_in=3),
        MessageAppended("m2", Author.ASSISTANT, "a", tokens_out=5, flags=frozenset(Flag)),
        MessageAppended("m3", Author.TOOL, "r", tool_call=tool,
                        flags=frozenset({Flag.TOOL_ERROR})),
    ]  # fmt: skip
    for msg in msgs:
        accepted(driver.send("r-1", msg))
    state = driver.states[RoleId("r-1")]
    assert [(m.message_id, m.seq) for m in state.messages] == [("m2", 4), ("m3", 5)]
    assert state.messages[1].tool_call == tool
    c = state.counters
    assert c.messages == {"assistant": 1, "tool": 1, "user": 1}
    assert (c.tokens_in, c.tokens_out, c.tool_calls) == (3, 5, 1)
    assert c.flags == {f.value: 1 for f in Flag if f is not Flag.TOOL_ERROR} | {"tool_error": 2}
    assert list(c.flags) == sorted(c.flags)


def test_duplicate_by_event_id() -> None:
    driver = role_in(L.ACTIVE)
    envelope = driver.envelope("r-1", MSG)
    accepted(driver.fold(envelope))
    before = driver.states[RoleId("r-1")]
    outcome = driver.fold(envelope)
    assert outcome == Duplicate(envelope.event_id, RoleId("r-1"), DuplicateBy.EVENT_ID)
    assert driver.states[RoleId("r-1")] is before


def test_duplicate_by_position() -> None:
    driver = Driver()
    pos = [WalPosition("rolebus.wal", 3, offset) for offset in range(10)]
    accepted(driver.fold(driver.envelope("r-1", CREATE), pos[4]))
    accepted(driver.fold(driver.envelope("r-1", RoleActivated()), pos[6]))
    for old in (pos[5], pos[6]):
        outcome = driver.fold(driver.envelope("r-1", MSG), old)
        assert isinstance(outcome, Duplicate) and outcome.by is DuplicateBy.POSITION
    other_partition = WalPosition("rolebus.wal", 4, 0)
    assert accepted(driver.fold(driver.envelope("r-1", MSG), other_partition)).seq == 3
    assert driver.states[RoleId("r-1")].last_position == other_partition


def test_dedupe_window_is_bounded_and_position_covers_older() -> None:
    driver = Driver(FoldConfig(dedupe_window=3))
    payloads: list[Payload] = [CREATE, RoleActivated(), MSG, MSG, MSG, MSG, MSG]
    envelopes = [driver.envelope("r-1", p) for p in payloads]
    for offset, envelope in enumerate(envelopes):
        accepted(driver.fold(envelope, WalPosition("w", 0, offset)))
    window = driver.states[RoleId("r-1")].recent_event_ids
    assert {e.event_id for e in envelopes[-3:]} <= set(window)
    assert len(window) <= 5 and envelopes[0].event_id not in window
    # Forgotten by id, still caught by position.
    outcome = driver.fold(envelopes[0], WalPosition("w", 0, 0))
    assert isinstance(outcome, Duplicate) and outcome.by is DuplicateBy.POSITION


def test_redelivered_rejection_is_a_duplicate() -> None:
    driver = role_in(L.CREATED)
    before = driver.states[RoleId("r-1")]
    envelope = driver.envelope("r-1", MSG)
    rejected(driver.fold(envelope), Reason.NOT_ACTIVE)
    after = driver.states[RoleId("r-1")]
    assert state_digest(after) == state_digest(before)
    assert replace(after, recent_event_ids=before.recent_event_ids) == before
    assert isinstance(driver.fold(envelope), Duplicate)


def test_auto_commit_every_n_accepted_events() -> None:
    driver = role_in(L.ACTIVE, Driver(FoldConfig(commit_every=3)))  # seq 2, just committed
    kinds = []
    payloads: list[Payload] = [MSG, MSG, MSG, MSG, MSG, RoleSuspended(), MSG, RoleResumed()]
    for payload in [*payloads, MSG, MSG, MSG]:
        outcome = driver.send("r-1", payload)
        if isinstance(outcome, Accepted):
            kinds.append((outcome.seq, [c.kind.value for c in outcome.commits]))
    assert kinds == [
        (3, []), (4, []), (5, ["auto"]), (6, []), (7, []),
        (8, ["lifecycle"]),  # a rejected message in between does not count
        (9, ["lifecycle"]), (10, []), (11, []), (12, ["auto"]),
    ]  # fmt: skip


def test_commit_chain_links_parents() -> None:
    driver = role_in(L.SUSPENDED)
    commits = sorted(driver.commits.values(), key=lambda c: c.seq)
    assert [c.parent_id for c in commits] == [None, commits[0].commit_id, commits[1].commit_id]


def test_fold_helper_matches_apply_event() -> None:
    driver = Driver()
    payloads: list[Payload] = [CREATE, RoleActivated(), MSG, MSG, RoleSuspended(), MSG]
    envelopes = [driver.envelope("r-1", p) for p in payloads]
    outcomes = [driver.fold(e) for e in envelopes]
    replayed = fold(envelopes)
    assert replayed.outcomes == tuple(outcomes)
    assert replayed.states == driver.states
    assert replayed.commits == driver.commits
    assert [c.seq for c in replayed.commits_of("r-1")] == [1, 2, 5]


def test_fold_config() -> None:
    config = FoldConfig.from_settings(Settings(commit_every=7, message_window=3))
    assert (config.commit_every, config.message_window) == (7, 3)
    with pytest.raises(ConfigError, match="commit_every"):
        FoldConfig(commit_every=0)


def test_state_of_another_role_is_a_bug() -> None:
    driver = role_in(L.ACTIVE)
    envelope = driver.envelope("r-2", MSG)
    with pytest.raises(FoldError, match="r-2"):
        apply_event(driver.states[RoleId("r-1")], envelope)
