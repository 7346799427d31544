"""Git-style commits of a role's state, content-addressed.

Commit id recipe (reproducible in any language)::

    commit_id = lowercase hex SHA-256 of the canonical JSON of the map
        {"role_id": str,
         "parent_id": str | null,      # null for a role's first commit
         "seq": int,                   # the role's seq at the commit
         "state_digest": str,          # streams.state.state_digest, 64 hex
         "occurred_at": int}           # event time of the cutting event,
                                       # microseconds since the Unix epoch (UTC)

Canonical JSON = UTF-8, keys sorted, separators ``,`` and ``:``, no
whitespace, non-ASCII kept as is (``rolebus.wal.canonical``); key order in
the source is therefore irrelevant. Nothing else enters the id: no WAL
offsets, no wall clock, no bookkeeping, no kind or label.

Invariants: ``commit.snapshot`` is the committed logical state (a plain
``Snapshot``: no bookkeeping); its canonical text is built ONCE, for the
digest, and reused as is by the commit record and the changelog;
``state_digest(commit.snapshot) == commit.state_digest``; ``commit.seq ==
commit.snapshot.seq``. A fork's first commit has the source commit as
parent, so ``parent_id`` may name another role's commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from rolebus.streams.core.state import RoleState, snapshot_of
from rolebus.wal.canonical import sha256_hex, to_micros
from rolebus.wal.events import CommitId, RoleId
from rolebus.wal.snapshot import Snapshot, state_digest, text_digest


class CommitKind(StrEnum):
    """Why a commit was cut (not part of the id)."""

    CREATED = "created"
    """The role's first commit, on RoleCreated."""
    AUTO = "auto"
    """Every ``commit_every`` accepted events."""
    LIFECYCLE = "lifecycle"
    """On every lifecycle transition."""
    MANUAL = "manual"
    """On CommitRequested; carries the label."""
    ROLLBACK = "rollback"
    """On RolledBack; its parent is the head before the rollback."""
    FORK = "fork"
    """The first commit of a forked role; its parent is the source commit."""


@dataclass(frozen=True)
class Commit:
    """One commit of a role (see the module docstring for the id)."""

    commit_id: CommitId
    role_id: RoleId
    parent_id: CommitId | None
    """Previous head of the role; the source commit for a fork; None first."""
    seq: int
    """The role's seq after the event that cut the commit."""
    state_digest: str
    occurred_at: datetime
    """Event time of the event that cut the commit."""
    kind: CommitKind
    label: str | None
    """The tag of a manual commit; None for every other kind."""
    event_id: uuid.UUID
    """The event that cut the commit (audit only; not part of the id)."""
    snapshot: Snapshot
    """The committed logical state."""


class CommitLookup(Protocol):
    """Read-only access to known commits. A ``Mapping[CommitId, Commit]``
    fits; the Kafka adapter backs it with a table."""

    def get(self, commit_id: CommitId, /) -> Commit | None: ...


class ChainLookup:
    """Looks in each lookup in turn; the first hit wins."""

    def __init__(self, *lookups: CommitLookup) -> None:
        self._lookups = lookups

    def get(self, commit_id: CommitId, /) -> Commit | None:
        for lookup in self._lookups:
            found = lookup.get(commit_id)
            if found is not None:
                return found
        return None


class _NoCommits:
    def get(self, commit_id: CommitId, /) -> Commit | None:
        return None


NO_COMMITS: CommitLookup = _NoCommits()
"""A lookup that knows no commit."""


def commit_id_for(
    role_id: RoleId,
    parent_id: CommitId | None,
    seq: int,
    digest: str,
    occurred_at: datetime,
) -> CommitId:
    """The content address of a commit (recipe in the module docstring)."""
    return CommitId(
        sha256_hex(
            {
                "role_id": role_id,
                "parent_id": parent_id,
                "seq": seq,
                "state_digest": digest,
                "occurred_at": to_micros(occurred_at),
            }
        )
    )


def make_commit(
    state: RoleState,
    kind: CommitKind,
    *,
    occurred_at: datetime,
    event_id: uuid.UUID,
    label: str | None = None,
) -> Commit:
    """Commit ``state``; its parent is ``state.head_commit_id``."""
    snapshot = snapshot_of(state)
    digest = text_digest(snapshot.canonical_text)  # the one encoding of this state
    commit_id = commit_id_for(state.role_id, state.head_commit_id, state.seq, digest, occurred_at)
    return Commit(
        commit_id=commit_id,
        role_id=state.role_id,
        parent_id=state.head_commit_id,
        seq=state.seq,
        state_digest=digest,
        occurred_at=occurred_at,
        kind=kind,
        label=label if kind is CommitKind.MANUAL else None,
        event_id=event_id,
        snapshot=snapshot,
    )


def is_consistent(commit: Commit) -> bool:
    """True when the id, digest and snapshot agree (e.g. after reading a commit
    back from a store)."""
    digest = state_digest(commit.snapshot)
    expected = commit_id_for(
        commit.role_id, commit.parent_id, commit.seq, digest, commit.occurred_at
    )
    return (
        digest == commit.state_digest
        and expected == commit.commit_id
        and commit.snapshot.seq == commit.seq
        and commit.snapshot.role_id == commit.role_id
    )


def index_commits(commits: Iterable[Commit]) -> dict[CommitId, Commit]:
    """A lookup over ``commits``, keyed by id."""
    return {commit.commit_id: commit for commit in commits}
