"""Folding WAL records into output records, without I/O: the ``Folder`` step
and ``fold_log``, the one whole-log fold.

A worker folds each batch with a ``Folder``; replay and the tests fold whole
partitions with ``fold_log``, which uses the same ``Folder``. Every record
goes through the same steps:

1. ``admit``: decode the record; an undecodable record, or one whose Kafka key
   is not its role id (which would split a role across partitions), becomes a
   ``RejectionRecord`` with the original bytes.
2. ``Folder.waits_for``: a ``RoleForked`` of a new role whose source commit is
   not visible yet names that commit; the caller may wait for it (it can be cut
   on another partition) before folding.
3. ``Folder.apply``: ``apply_event`` on the role's current state; Accepted ->
   a ``ChangeRecord`` plus a ``CommitRecord`` per commit cut, Rejected -> a
   ``RejectionRecord``, Duplicate -> nothing (its outputs were delivered
   before the state that remembers it was stored).

Invariants: the records of an item depend only on the item, the role's state
and the commits visible, never on batch boundaries, so a batch cut anywhere
and re-folded after a crash emits identical records; ``Folder.states`` holds
exactly the roles the batch changed, with their final state.

Fork visibility (``fold_log``): each partition is folded in offset order;
a fork whose source commit is unknown blocks its partition while others make
progress; when every unfinished partition is blocked, the blocked forks are
folded as they are (refused: unknown commit). This is what the workers do
(they wait ``fork_wait_s`` for the commit), so both agree whenever a fork's
source commit is cut by an event that does not itself wait for that fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rolebus.errors import DecodeError
from rolebus.streams.core.commits import NO_COMMITS, ChainLookup, Commit, CommitLookup
from rolebus.streams.core.fold import DEFAULT_CONFIG, apply_event
from rolebus.streams.core.outcome import Accepted, Duplicate, Outcome, Rejected, Superseded
from rolebus.streams.core.serde import commit_record
from rolebus.streams.core.state import FoldConfig, RoleState
from rolebus.wal import codec
from rolebus.wal.canonical import to_micros
from rolebus.wal.events import CommitId, Envelope, RoleForked, RoleId, WalPosition
from rolebus.wal.records import (
    KEY_MISMATCH,
    UNDECODABLE,
    ChangeRecord,
    OutputRecord,
    RejectionRecord,
    SeqRanges,
)


@dataclass(frozen=True)
class WalItem:
    """One WAL record as the worker received it."""

    position: WalPosition
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Step:
    """What folding one WAL record produced."""

    outcome: str
    """accepted | rejected | duplicate | undecodable | key_mismatch."""
    records: tuple[OutputRecord, ...]
    envelope: Envelope | None = None


def _where(pos: WalPosition) -> str:
    return f"WAL record {pos.topic}[{pos.partition}]@{pos.offset}"


def admit(item: WalItem) -> Envelope | RejectionRecord:
    """The item's envelope, or the rejection of a record the fold cannot take."""
    try:
        envelope = codec.decode(item.value)
    except DecodeError as exc:
        message = f"{_where(item.position)}: {exc} (original bytes kept; fix the producer)"
        return RejectionRecord(item.position, UNDECODABLE, message, item.value)
    if item.key != envelope.role_id.encode():
        message = (
            f"role '{envelope.role_id}': {_where(item.position)} has key {item.key!r}, not the "
            "role id (produce with key = role id so a role's events share one partition)"
        )
        return _rejection(item, envelope, KEY_MISMATCH, message)
    return envelope


def _rejection(item: WalItem, env: Envelope, reason: str, message: str) -> RejectionRecord:
    return RejectionRecord(
        position=item.position, reason=reason, message=message, original=item.value,
        event_id=str(env.event_id), role_id=env.role_id, tenant_id=env.tenant_id,
        event_type=env.event_type, occurred_at_us=to_micros(env.occurred_at),
    )  # fmt: skip


def _ranges(gone: Superseded | None) -> SeqRanges | None:
    if gone is None:
        return None
    return SeqRanges(gone.after_seq, gone.superseded, gone.restored, gone.live)


def change_record(item: WalItem, env: Envelope, accepted: Accepted) -> ChangeRecord:
    return ChangeRecord(
        event_id=str(env.event_id), role_id=env.role_id, tenant_id=env.tenant_id,
        seq=accepted.seq, head_commit_id=accepted.state.head_commit_id,
        event_type=env.event_type, position=item.position,
        occurred_at_us=to_micros(env.occurred_at),
        commit_ids=tuple(c.commit_id for c in accepted.commits), event=item.value,
        superseded=_ranges(accepted.superseded),
    )  # fmt: skip


def records_for(item: WalItem, env: Envelope, outcome: Outcome) -> tuple[OutputRecord, ...]:
    """The output records of one folded event."""
    if isinstance(outcome, Accepted):
        commits = tuple(commit_record(c, item.position) for c in outcome.commits)
        return (change_record(item, env, outcome), *commits)
    if isinstance(outcome, Rejected):
        return (_rejection(item, env, outcome.reason.value, outcome.message),)
    return ()


_LABELS = {Accepted: "accepted", Rejected: "rejected", Duplicate: "duplicate"}


def _no_state(role_id: RoleId) -> RoleState | None:
    return None


@dataclass
class Folder:
    """Folds events one at a time into the states of any number of roles, and
    keeps the commits it cut, which it looks up before ``lookup``: rollbacks
    and forks within the sequence resolve. The unit of every fold: a worker's
    batch, ``fold_log``, the workload generator and the tests."""

    config: FoldConfig = DEFAULT_CONFIG
    lookup: CommitLookup = NO_COMMITS
    """Commits cut before this folder (stored, fetched, other partitions)."""
    source: Callable[[RoleId], RoleState | None] = _no_state
    """The stored state of a role (a worker's memory), None for an unknown role."""
    states: dict[RoleId, RoleState] = field(default_factory=dict)
    """Roles changed so far, with their latest state."""
    commits: dict[CommitId, Commit] = field(default_factory=dict)
    """Commits cut so far."""

    def __post_init__(self) -> None:
        self._chain = ChainLookup(self.commits, self.lookup)

    def state_of(self, role_id: RoleId) -> RoleState | None:
        found = self.states.get(role_id)
        return found if found is not None else self.source(role_id)

    def waits_for(self, envelope: Envelope) -> CommitId | None:
        """The fork source commit this event needs and nobody can see yet."""
        payload = envelope.payload
        if not isinstance(payload, RoleForked) or envelope.expected_seq not in (None, 0):
            return None
        if self.state_of(envelope.role_id) is not None:
            return None  # a duplicate or a refused re-creation: no commit needed
        if self._chain.get(payload.source_commit_id) is not None:
            return None
        return payload.source_commit_id

    def fold(self, envelope: Envelope, position: WalPosition | None = None) -> Outcome:
        """``apply_event`` on the role's current state; keeps the new state and commits."""
        state = self.state_of(envelope.role_id)
        new, outcome = apply_event(
            state, envelope, position, lookup=self._chain, config=self.config
        )
        if new is not None and new is not state:
            self.states[envelope.role_id] = new
        if isinstance(outcome, Accepted):
            for commit in outcome.commits:
                self.commits[commit.commit_id] = commit
        return outcome

    def apply(self, item: WalItem, admitted: Envelope | RejectionRecord) -> Step:
        """Fold one admitted WAL record; its output records."""
        if isinstance(admitted, RejectionRecord):
            return Step(admitted.reason, (admitted,))
        outcome = self.fold(admitted, item.position)
        return Step(_LABELS[type(outcome)], records_for(item, admitted, outcome), admitted)


# --- whole logs (tests, replay) ------------------------------------------------------


@dataclass(frozen=True)
class LogResult:
    """The end of ``fold_log``."""

    states: Mapping[RoleId, RoleState]
    commits: Mapping[CommitId, Commit]
    records: tuple[OutputRecord, ...]
    """Every output record, partitions interleaved as folded."""


def fold_log(partitions: Mapping[int, Sequence[WalItem]], config: FoldConfig) -> LogResult:
    """Fold whole partitions with the workers' fork semantics (module docstring)."""
    folder = Folder(config)
    cursors = {p: Cursor(items) for p, items in sorted(partitions.items())}
    records: list[OutputRecord] = []
    while not all(c.done for c in cursors.values()):
        advance_all(folder, cursors, records)
        # Deadlock: every unfinished partition waits for a fork source that no
        # partition can cut. Fold all those forks at once (refused: unknown commit).
        for p in blocked_forks(folder, cursors):
            cursors[p].release(folder, records)
    return LogResult(dict(folder.states), dict(folder.commits), tuple(records))


@dataclass
class Cursor:
    """One partition's records, folded in offset order from ``next``."""

    items: Sequence[WalItem]
    next: int = 0
    admitted: dict[int, Envelope | RejectionRecord] = field(default_factory=dict)
    """Admitted items by index (each record is decoded once)."""

    @property
    def done(self) -> bool:
        return self.next >= len(self.items)

    def head(self) -> tuple[WalItem, Envelope | RejectionRecord]:
        return self.items[self.next], self._admit(self.next)

    def pending(self) -> list[Envelope | RejectionRecord]:
        """Every record not folded yet, admitted (each is decoded once)."""
        return [self._admit(i) for i in range(self.next, len(self.items))]

    def _admit(self, i: int) -> Envelope | RejectionRecord:
        found = self.admitted.get(i)
        if found is None:
            found = self.admitted[i] = admit(self.items[i])
        return found

    def waiting_for(self, folder: Folder) -> CommitId | None:
        """The fork source the head record waits for, if it waits."""
        if self.done:
            return None
        _, admitted = self.head()
        return folder.waits_for(admitted) if isinstance(admitted, Envelope) else None

    def release(self, folder: Folder, records: list[OutputRecord]) -> None:
        """Fold the head record now, whatever it waits for."""
        item, admitted = self.head()
        records.extend(folder.apply(item, admitted).records)
        self.admitted.pop(self.next, None)
        self.next += 1

    def advance(self, folder: Folder, records: list[OutputRecord]) -> bool:
        """Fold until the end or a fork whose source nobody can see; True if it moved."""
        start = self.next
        while not self.done and self.waiting_for(folder) is None:
            self.release(folder, records)
        return self.next > start


def advance_all(folder: Folder, cursors: Mapping[int, Cursor], records: list[OutputRecord]) -> None:
    """Advance the partitions in turn until none moves (a commit cut in one
    partition can unblock a fork in another)."""
    moved = True
    while moved:
        moved = False
        for cursor in cursors.values():
            moved = cursor.advance(folder, records) or moved


def blocked_forks(folder: Folder, cursors: Mapping[int, Cursor]) -> dict[int, CommitId]:
    """Partition -> the fork source its next record waits for."""
    out = {}
    for p, cursor in cursors.items():
        waiting = cursor.waiting_for(folder)
        if waiting is not None:
            out[p] = waiting
    return out


def items_by_partition(items: Iterable[WalItem]) -> dict[int, list[WalItem]]:
    """Group items by partition, each in offset order."""
    out: dict[int, list[WalItem]] = {}
    for item in items:
        out.setdefault(item.position.partition, []).append(item)
    for group in out.values():
        group.sort(key=lambda it: it.position.offset)
    return out
