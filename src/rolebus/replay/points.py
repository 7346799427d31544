"""Pure pieces of replay: a role's state from a snapshot plus a tail of events,
the points ``asof`` accepts, and the roles a one-role replay must fold.

``state_at`` is the fold of the workers (``apply_event``) started from a
commit's snapshot instead of genesis. A snapshot has no bookkeeping, so the
caller passes what the worker's state held at the commit: the WAL position of
the cutting event (redeliveries at or below it are duplicates) and the ids of
the role's events just before it (its dedupe window). With those, the state
equals the fold from genesis for every redelivery the worker itself dedupes.

``fork_closure``: a role's state depends on the role's events, on the source
role of its fork (the source commit must be visible), and on any fork queued
before one of its events in the same partition (a fork waits for its source
commit and holds its partition meanwhile). The closure folds exactly those.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from rolebus.errors import ConfigError, FoldError
from rolebus.replay.core import (
    Accepted,
    Commit,
    CommitLookup,
    EventWindow,
    FoldConfig,
    RoleState,
    WalItem,
    admit,
    apply_event,
    state_at_commit,
)
from rolebus.wal.canonical import to_micros
from rolebus.wal.events import Envelope, RoleForked, WalPosition
from rolebus.wal.records import CommitRecord

# --- points ----------------------------------------------------------------------


@dataclass(frozen=True)
class AtCommit:
    commit_id: str


@dataclass(frozen=True)
class AtOffset:
    """After the WAL record at ``partition:offset`` (included)."""

    partition: int
    offset: int


@dataclass(frozen=True)
class AtTime:
    """After the role's events that occurred at or before ``time``: the WAL prefix
    ends at the role's first event that occurred later (event times of one role
    are taken as non-decreasing in WAL order, as the SDK stamps them)."""

    time: datetime


Point = AtCommit | AtOffset | AtTime


def parse_offset(text: str) -> AtOffset:
    part, sep, off = text.partition(":")
    if not sep or not part.isdigit() or not off.isdigit():
        raise ConfigError(f"--offset: expected PARTITION:OFFSET like 3:1042 (got {text!r})")
    return AtOffset(int(part), int(off))


def describe(point: Point) -> str:
    if isinstance(point, AtCommit):
        return f"commit {point.commit_id}"
    if isinstance(point, AtOffset):
        return f"WAL offset {point.partition}:{point.offset}"
    return f"time {point.time.isoformat()}"


def covers(point: Point, commit: CommitRecord) -> bool:
    """True when ``commit`` is at or before ``point``."""
    if isinstance(point, AtCommit):
        return commit.commit_id == point.commit_id
    if isinstance(point, AtTime):
        return commit.occurred_at_us <= to_micros(point.time)
    return commit.position is not None and commit.position.offset <= point.offset


# --- snapshot + tail ---------------------------------------------------------------


@dataclass(frozen=True)
class Rebuilt:
    state: RoleState
    tail_events: int
    """WAL records of the role folded after the snapshot."""
    commits_cut: tuple[Commit, ...]
    """Commits the tail cut (none when the commits topic is up to date)."""


def start_state(
    commit: Commit, position: WalPosition | None, window: Iterable[uuid.UUID], config: FoldConfig
) -> RoleState:
    """The worker's state right after ``commit`` was cut (see the module docstring)."""
    seen = EventWindow.of(*window, size=config.dedupe_window)
    return state_at_commit(commit, last_position=position, recent_event_ids=seen)


def state_at(
    start: RoleState | None, role_id: str, tail: Iterable[WalItem], config: FoldConfig,
    lookup: CommitLookup,
) -> Rebuilt:  # fmt: skip
    """Fold the role's ``tail`` records (in WAL order) onto ``start`` (None: genesis)."""
    state, count = start, 0
    cut: list[Commit] = []
    for item in tail:
        admitted = admit(item)
        count += 1
        if not isinstance(admitted, Envelope) or admitted.role_id != role_id:
            continue  # undecodable or misplaced: a rejection, no effect on the role
        new, outcome = apply_event(state, admitted, item.position, lookup=lookup, config=config)
        state = state if new is None else new
        if isinstance(outcome, Accepted):
            cut.extend(outcome.commits)
    if state is None:
        raise FoldError(f"role '{role_id}': no accepted event creates it in the records folded")
    return Rebuilt(state, count, tuple(cut))


def window_ids(items: Sequence[WalItem], role_id: str, size: int) -> list[uuid.UUID]:
    """Event ids of the role's last ``size`` decodable records in ``items``
    (WAL order), oldest first: the dedupe window to start a tail from."""
    ids: list[uuid.UUID] = []
    for item in reversed(items):
        admitted = admit(item)
        if isinstance(admitted, Envelope) and admitted.role_id == role_id:
            ids.append(admitted.event_id)
            if len(ids) >= size:
                break
    return ids[::-1]


# --- one role's replay ---------------------------------------------------------------


def _key(item: WalItem) -> str:
    return (item.key or b"").decode(errors="replace")


def fork_closure(partitions: Mapping[int, Sequence[WalItem]], role_id: str) -> set[str]:
    """The roles to fold so that ``role_id`` folds as in the whole log (docstring)."""
    forks = _forks(partitions)
    last = _last_index(partitions)
    wanted = {role_id}
    while True:
        grown = set(wanted)
        for p, i, role, source in forks:
            if role in wanted:
                grown.add(source)
            elif i < max((last[p].get(r, -1) for r in wanted), default=-1):
                grown.add(role)
        if grown == wanted:
            return wanted
        wanted = grown


def _forks(partitions: Mapping[int, Sequence[WalItem]]) -> list[tuple[int, int, str, str]]:
    """(partition, index, forked role, source role) of every fork event."""
    out = []
    for p, items in partitions.items():
        for i, item in enumerate(items):
            env = admit(item)
            if isinstance(env, Envelope) and isinstance(env.payload, RoleForked):
                out.append((p, i, str(env.role_id), str(env.payload.source_role_id)))
    return out


def _last_index(partitions: Mapping[int, Sequence[WalItem]]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for p, items in partitions.items():
        out[p] = {_key(item): i for i, item in enumerate(items)}
    return out


def only_roles(
    partitions: Mapping[int, Sequence[WalItem]], roles: set[str]
) -> dict[int, list[WalItem]]:
    """The records keyed by one of ``roles``, partitions and order kept."""
    return {p: [it for it in items if _key(it) in roles] for p, items in partitions.items()}
