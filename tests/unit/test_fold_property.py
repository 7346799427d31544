"""Property: random event sequences fold deterministically, seq counts accepted events."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rolebus.streams.core.commits import Commit, is_consistent
from rolebus.streams.core.fold import apply_event
from rolebus.streams.core.outcome import Accepted, Outcome
from rolebus.streams.core.state import FoldConfig, RoleState, state_digest
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
)
from testkit.folding import FoldResult, fold

BASE = datetime(2025, 1, 1, tzinfo=UTC)
ROLES = [RoleId(f"r-{i}") for i in range(4)]
CONFIG = FoldConfig(commit_every=3, message_window=4, dedupe_window=8)
KINDS = [
    "create", "create", "fork", "activate", "activate", "suspend", "resume", "archive", "delete",
    "msg", "msg", "msg", "msg", "persona", "commit", "rollback", "rollback", "dup",
]  # fmt: skip


@dataclass(frozen=True)
class Op:
    kind: str
    role: int
    pick: int
    source: int
    seq_mode: str
    foreign_tenant: bool
    traits: Mapping[str, str]
    flags: frozenset[Flag]
    author: Author


ops = st.builds(
    Op,
    kind=st.sampled_from(KINDS),
    role=st.integers(0, len(ROLES) - 1),
    pick=st.integers(0, 50),
    source=st.integers(0, len(ROLES) - 1),
    seq_mode=st.sampled_from(["none", "none", "none", "right", "wrong"]),
    foreign_tenant=st.sampled_from([False] * 9 + [True]),
    traits=st.dictionaries(st.sampled_from(["tone", "lang", "age"]), st.sampled_from("abc")),
    flags=st.frozensets(st.sampled_from(list(Flag))),
    author=st.sampled_from(list(Author)),
)


def _pick_commit(commits: list[Commit], pick: int) -> CommitId:
    if pick % (len(commits) + 1) == len(commits):
        return CommitId(f"{pick:064x}")  # unknown
    return commits[pick % (len(commits) + 1)].commit_id


def _payload(op: Op, commits: list[Commit], n: int) -> Payload:
    simple: dict[str, Payload] = {
        "activate": RoleActivated(),
        "suspend": RoleSuspended(),
        "resume": RoleResumed(),
        "archive": RoleArchived(),
        "delete": RoleDeleted(),
        "commit": CommitRequested(label=f"tag-{n}"),
    }
    if op.kind in simple:
        return simple[op.kind]
    if op.kind == "create":
        return RoleCreated(name=f"role {n}", persona=f"persona {n}", traits=op.traits)
    if op.kind == "persona":
        return PersonaUpdated(persona=f"persona {n}", traits=op.traits or None)
    if op.kind == "msg":
        return MessageAppended(f"m{n}", op.author, f"text {n}", n % 7, n % 5, flags=op.flags)
    if op.kind == "rollback":
        own = [c for c in commits if c.role_id == ROLES[op.role]]
        return RolledBack(to_commit_id=_pick_commit(own if op.pick % 4 else commits, op.pick))
    target = _pick_commit([c for c in commits if c.role_id == ROLES[op.source]], op.pick)
    return RoleForked(source_role_id=ROLES[op.source], source_commit_id=target, name=f"fork {n}")


def _prelude() -> list[Op]:
    """Start with the roles created and active, so plans reach the interesting rules."""
    make = {"pick": 0, "source": 0, "seq_mode": "none", "foreign_tenant": False}
    extra = {"traits": {"tone": "a"}, "flags": frozenset[Flag](), "author": Author.USER}
    return [
        Op(kind, role, **make, **extra)  # type: ignore[arg-type]
        for role in range(2)
        for kind in ("create", "activate")
    ]


def materialize(plan: list[Op]) -> list[Envelope]:
    """Turn a plan into a fixed log; rollbacks and forks pick commits cut so far."""
    states: dict[RoleId, RoleState] = {}
    commits: list[Commit] = []
    events: list[Envelope] = []
    for n, op in enumerate(_prelude() + plan, start=1):
        if op.kind == "dup" and events:
            envelope = events[op.pick % len(events)]
        else:
            envelope = _envelope(op, states, commits, n)
        events.append(envelope)
        role = envelope.role_id
        new, outcome = apply_event(
            states.get(role), envelope, lookup=_index(commits), config=CONFIG
        )
        if new is not None:
            states[role] = new
        if isinstance(outcome, Accepted):
            commits.extend(outcome.commits)
    return events


def _envelope(
    op: Op, states: Mapping[RoleId, RoleState], commits: list[Commit], n: int
) -> Envelope:
    role = ROLES[op.role]
    current = states[role].seq if role in states else 0
    expected = {"none": None, "right": current, "wrong": current + 1 + op.pick}[op.seq_mode]
    return Envelope(
        event_id=uuid.UUID(int=n),
        tenant_id=TenantId("t-2" if op.foreign_tenant else "t-1"),
        role_id=role,
        occurred_at=BASE + timedelta(milliseconds=1500 * n),
        producer="hypothesis",
        payload=_payload(op, commits, n),
        expected_seq=expected,
    )


def _index(commits: list[Commit]) -> dict[CommitId, Commit]:
    return {c.commit_id: c for c in commits}


def _reverse_traits(envelope: Envelope) -> Envelope:
    payload = envelope.payload
    if isinstance(payload, RoleCreated | PersonaUpdated) and payload.traits:
        flipped = dict(reversed(list(payload.traits.items())))
        return replace(envelope, payload=replace(payload, traits=flipped))
    return envelope


def _fingerprint(result: FoldResult) -> tuple[object, ...]:
    ids = [[c.commit_id for c in o.commits] for o in result.outcomes if isinstance(o, Accepted)]
    digests = sorted((role, state_digest(s)) for role, s in result.states.items())
    return ids, digests, [type(o).__name__ for o in result.outcomes]


@settings(max_examples=80, deadline=None, database=None)
@given(st.lists(ops, min_size=1, max_size=60))
def test_random_logs_fold_deterministically(plan: list[Op]) -> None:
    events = materialize(plan)
    first = fold(events, config=CONFIG)
    second = fold(events, config=CONFIG)
    assert first == second
    flipped = fold([_reverse_traits(e) for e in events], config=CONFIG)
    assert _fingerprint(flipped) == _fingerprint(first)
    _check_invariants(first.outcomes)


def _check_invariants(outcomes: tuple[Outcome, ...]) -> None:
    seqs: dict[RoleId, list[int]] = defaultdict(list)
    for outcome in outcomes:
        if not isinstance(outcome, Accepted):
            continue
        seqs[outcome.role_id].append(outcome.seq)
        assert outcome.state.seq == outcome.seq
        assert len(outcome.commits) <= 1
        for commit in outcome.commits:
            assert is_consistent(commit)
            assert commit.seq == outcome.seq
            assert commit.state_digest == state_digest(outcome.state)
            assert outcome.state.head_commit_id == commit.commit_id
    for role_seqs in seqs.values():
        assert role_seqs == list(range(1, len(role_seqs) + 1))
