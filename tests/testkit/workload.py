"""Synthetic, reproducible role workloads for tests and benchmarks.

``Workload`` plays many clients at once: it creates roles, activates them,
appends messages (with flags and tool calls), updates personas, requests
commits, rolls back to earlier commits, forks, suspends, archives and deletes,
and mixes in events the fold must refuse (messages to suspended or deleted
roles, stale ``expected_seq``, unknown commits) and redeliveries of events
already sent (same event id). It folds what it emits with the pure fold, like
a client that reads the commits topic, so rollbacks and forks name real
commit ids.

Invariants: the same seed and spec give the same envelopes (ids, times and
all), so a WAL written from a workload can be compared across runs; a
rollback or fork only names a commit cut by an event emitted earlier.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rolebus.streams.core.commits import Commit
from rolebus.streams.core.log import Folder
from rolebus.streams.core.outcome import Accepted
from rolebus.streams.core.state import FoldConfig, Lifecycle, RoleState
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
)

START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class WorkloadSpec:
    roles: int = 40
    """Roles created up front (forks add more)."""
    seed: int = 7
    tenant_id: str = "tenant-w"
    prefix: str = "w"
    """Role ids are ``<prefix>-<n>``; pick another prefix per run to avoid clashes."""
    refusals: float = 0.05
    """Share of events built to be refused."""
    chatty: float = 0.8
    """Share of events of an active role that are messages."""


@dataclass
class Workload:
    """An endless, reproducible stream of envelopes; see the module docstring."""

    spec: WorkloadSpec = field(default_factory=WorkloadSpec)
    config: FoldConfig = field(default_factory=FoldConfig)
    states: dict[RoleId, RoleState] = field(default_factory=dict, init=False)
    commits: dict[CommitId, Commit] = field(default_factory=dict, init=False)
    emitted: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    """accepted / rejected / duplicate: what the fold said about the emitted events."""

    def __post_init__(self) -> None:
        self._folding = Folder(self.config, states=self.states)
        self.commits = self._folding.commits  # the same dicts: the fold keeps them
        self._rng = random.Random(self.spec.seed)
        self._sent: list[Envelope] = []
        self._pending = [self._role_id(i) for i in range(self.spec.roles)]
        self._roles: list[RoleId] = []
        self._by_role: dict[RoleId, list[Commit]] = {}
        self._forks = 0
        self._queued: Envelope | None = None

    def take(self, count: int) -> list[Envelope]:
        return [next(self) for _ in range(count)]

    def commit_all(self, label: str = "final") -> list[Envelope]:
        """A manual commit for every role that can take one, so each role's head
        commit records its final state (deleted roles already end on a commit)."""
        out = []
        for role_id in list(self._roles):
            if self.states[role_id].lifecycle is not Lifecycle.DELETED:
                self._queued = self._envelope(role_id, CommitRequested(label))
                out.append(next(self))
        return out

    def __iter__(self) -> Iterator[Envelope]:
        return self

    def __next__(self) -> Envelope:
        envelope = self._build()
        role_id = envelope.role_id
        known = role_id in self.states
        outcome = self._folding.fold(envelope)
        if not known and role_id in self.states:
            self._roles.append(role_id)
        if isinstance(outcome, Accepted):
            self._by_role.setdefault(role_id, []).extend(outcome.commits)
        kind = type(outcome).__name__.lower()
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        self._sent.append(envelope)
        self.emitted += 1
        return envelope

    # --- choosing the next event ------------------------------------------------

    def _role_id(self, n: int) -> RoleId:
        return RoleId(f"{self.spec.prefix}-{n:05d}")

    def _envelope(
        self, role_id: RoleId, payload: Payload, expected_seq: int | None = None
    ) -> Envelope:
        rng = self._rng
        return Envelope(
            event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            tenant_id=TenantId(self.spec.tenant_id),
            role_id=role_id,
            occurred_at=START + timedelta(milliseconds=self.emitted),
            producer="rolebus-workload",
            payload=payload,
            expected_seq=expected_seq,
        )

    def _build(self) -> Envelope:
        rng = self._rng
        if self._queued is not None:
            queued, self._queued = self._queued, None
            return queued
        if self._pending and (not self._roles or rng.random() < 0.3):
            role_id = self._pending.pop(0)
            payload = RoleCreated(f"Role {role_id}", "You help.", {"tone": "calm"})
            return self._envelope(role_id, payload)
        if self._sent and rng.random() < 0.01:
            return rng.choice(self._sent)  # a redelivery: same event id, new WAL offset
        if rng.random() < self.spec.refusals:
            return self._refused()
        if self.commits and rng.random() < 0.005:
            return self._fork()
        return self._next_for(self.states[self._pick_role()])

    def _pick_role(self) -> RoleId:
        """Mostly a live role; now and then a deleted one (its events are refused)."""
        role = self._rng.choice(self._roles)
        for _ in range(8):
            if self.states[role].lifecycle is not Lifecycle.DELETED or self._rng.random() < 0.03:
                break
            role = self._rng.choice(self._roles)
        return role

    def _fork(self) -> Envelope:
        source = self._by_role[self._rng.choice(sorted(self._by_role))]
        commit = self._rng.choice(source)
        self._forks += 1
        new_id = RoleId(f"{self.spec.prefix}-f{self._forks:04d}")
        name = f"Fork of {commit.role_id}"
        return self._envelope(new_id, RoleForked(commit.role_id, commit.commit_id, name))

    def _next_for(self, state: RoleState) -> Envelope:
        rng, role = self._rng, state.role_id
        life = state.lifecycle
        if life is Lifecycle.CREATED:
            return self._envelope(role, RoleActivated("ready"))
        if life is Lifecycle.SUSPENDED and rng.random() < 0.15:
            return self._envelope(role, self._message(state))  # refused: not_active
        if life is Lifecycle.SUSPENDED:
            return self._envelope(role, RoleResumed() if rng.random() < 0.95 else RoleArchived())
        if life is Lifecycle.ARCHIVED:
            return self._envelope(role, RoleDeleted("cleanup"))
        if life is Lifecycle.DELETED:
            return self._envelope(role, self._message(state))  # refused: role_deleted
        roll = rng.random()
        if roll < self.spec.chatty:
            return self._envelope(role, self._message(state), state.seq if roll < 0.05 else None)
        return self._envelope(role, self._rare(state))

    def _rare(self, state: RoleState) -> Payload:
        rng, mine = self._rng, self._by_role.get(state.role_id, [])
        choice = rng.random()
        if choice < 0.25:
            return PersonaUpdated(f"Persona v{state.seq}", traits={"tone": rng.choice("abc")})
        if choice < 0.5:
            return CommitRequested(f"tag-{state.seq}")
        if choice < 0.75 and mine:
            return RolledBack(rng.choice(mine).commit_id, "undo")
        if choice < 0.985:
            return RoleSuspended("pause")
        return RoleArchived() if rng.random() < 0.5 else RoleDeleted("done")

    def _message(self, state: RoleState) -> MessageAppended:
        rng = self._rng
        author = rng.choice([Author.USER, Author.ASSISTANT, Author.ASSISTANT, Author.TOOL])
        flags = frozenset(f for f in Flag if rng.random() < 0.03)
        call = ToolCall("search", '{"q": "kafka"}', "ok") if author is Author.TOOL else None
        return MessageAppended(
            message_id=f"m-{self.emitted}", author=author,
            content=f"message {self.emitted} for {state.role_id} — ünïcode ok",
            tokens_in=rng.randint(1, 200), tokens_out=rng.randint(0, 400),
            latency_ms=rng.randint(50, 3000) if author is Author.ASSISTANT else None,
            model="llama3:8b", flags=flags, tool_call=call,
        )  # fmt: skip

    def _refused(self) -> Envelope:
        rng = self._rng
        role = rng.choice(self._roles)
        state = self.states[role]
        kind = rng.randrange(4)
        if kind == 0:
            return self._envelope(role, self._message(state), expected_seq=state.seq + 7)
        if kind == 1:
            return self._envelope(role, RolledBack(CommitId(f"{rng.getrandbits(256):064x}")))
        if kind == 2:
            return self._envelope(RoleId(f"{self.spec.prefix}-ghost"), RoleActivated())
        return self._envelope(role, RoleCreated("again", "dup"))
