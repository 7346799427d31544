"""What the fold says about one event: Accepted, Rejected or Duplicate.

Invariants: exactly one outcome per event, nothing dropped silently.
``Accepted.seq == Accepted.state.seq`` and equals the previous seq + 1;
``Accepted.commits`` holds at most one commit (a tuple so a future rule may cut
more) and, when present, ``state.head_commit_id`` is the last one's id.
``Rejected`` and ``Duplicate`` leave the logical state (and its digest)
unchanged. ``superseded`` is set on rollbacks only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from rolebus.streams.core.commits import Commit
from rolebus.streams.core.rules import Reason
from rolebus.streams.core.state import RoleState, SeqRange
from rolebus.wal.events import RoleId


@dataclass(frozen=True)
class Superseded:
    """Which of the role's seqs a rollback superseded, for projectors.

    With a linear history, ``superseded`` is the one range after ``after_seq``
    up to the seq before the rollback (empty when the target was the head) and
    ``restored`` is empty. Rolling back to a commit of an earlier branch
    (reachable because a rollback commit's parent is the previous head) can
    bring superseded seqs back: those are in ``restored``. ``live`` is the
    absolute answer (idempotent to apply): a message is superseded iff its seq
    is in no ``live`` range.
    """

    after_seq: int
    """The target commit's seq."""
    superseded: tuple[SeqRange, ...]
    """Seqs live before the rollback and superseded now."""
    restored: tuple[SeqRange, ...]
    """Seqs superseded earlier that are live again."""
    live: tuple[SeqRange, ...]
    """Every live seq of the role after the rollback (the rollback included)."""


@dataclass(frozen=True)
class Accepted:
    event_id: uuid.UUID
    role_id: RoleId
    seq: int
    """The role's seq after this event."""
    state: RoleState
    commits: tuple[Commit, ...] = ()
    """Commits this event cut, oldest first."""
    superseded: Superseded | None = None


@dataclass(frozen=True)
class Rejected:
    event_id: uuid.UUID
    role_id: RoleId
    reason: Reason
    message: str


class DuplicateBy(StrEnum):
    EVENT_ID = "event_id"
    """The event id is in the role's dedupe window."""
    POSITION = "position"
    """The WAL position is at or below the role's last applied position."""


@dataclass(frozen=True)
class Duplicate:
    event_id: uuid.UUID
    role_id: RoleId
    by: DuplicateBy


Outcome = Accepted | Rejected | Duplicate
