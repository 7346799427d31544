"""The determinism proof, pure: a replayed fold against the live output records.

For every role, seq by seq: the event accepted at that seq (changes topic) and
the head commit after it, then the commit cut at that seq (commits topic), must
be the replay's; the first seq that differs is the role's divergence, named by
the event at that seq (its id and WAL position). A role with no such
divergence must end in the same state: same last seq, same head commit, and
the same state digest, the live one being the head commit's snapshot plus the
live accepted events after it.

Live records can repeat (at-least-once): identical copies are merged; two
different records for one commit id or one event id are a divergence, and so
is a commit record whose id, digest and snapshot disagree (``is_consistent``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rolebus.errors import SchemaError
from rolebus.replay.core import (
    NO_COMMITS,
    FoldConfig,
    LogResult,
    WalItem,
    commit_of,
    is_consistent,
    state_digest,
)
from rolebus.replay.points import start_state, state_at
from rolebus.wal.events import RoleId, WalPosition
from rolebus.wal.records import ChangeRecord, CommitRecord


@dataclass(frozen=True)
class Divergence:
    role_id: str
    seq: int | None
    what: str
    expected: str
    """The replay's value."""
    found: str
    """The live value."""
    event_id: str | None = None
    """The first event that differs (the event at ``seq``)."""
    position: WalPosition | None = None
    """Its WAL position."""

    def line(self) -> str:
        where = "" if self.position is None else (
            f" at WAL {self.position.partition}:{self.position.offset}")  # fmt: skip
        event = "" if self.event_id is None else f", event {self.event_id}{where}"
        seq = "" if self.seq is None else f" seq {self.seq}"
        return (f"role '{self.role_id}'{seq}{event}: {self.what}: "
                f"replay {self.expected}, live {self.found}")  # fmt: skip

    def json(self) -> dict[str, Any]:
        pos = self.position
        return {
            "role_id": self.role_id, "seq": self.seq, "what": self.what,
            "expected": self.expected, "found": self.found, "event_id": self.event_id,
            "position": None if pos is None else f"{pos.partition}:{pos.offset}",
        }  # fmt: skip


BySeq = dict[str, dict[int, list[Any]]]


@dataclass
class Live:
    """The live outputs, duplicates merged, by role and seq."""

    commits: dict[str, dict[int, list[CommitRecord]]] = field(default_factory=dict)
    changes: dict[str, dict[int, list[ChangeRecord]]] = field(default_factory=dict)
    problems: list[Divergence] = field(default_factory=list)
    duplicates: int = 0


def collect_live(commits: Iterable[CommitRecord], changes: Iterable[ChangeRecord]) -> Live:
    live = Live()
    first_commit: dict[str, CommitRecord] = {}
    for rec in commits:
        seen = _merge(live, first_commit, rec.commit_id, rec, "commit record")
        if seen == "new":
            live.commits.setdefault(rec.role_id, {}).setdefault(rec.seq, []).append(rec)
        if seen != "same":
            _check_consistent(live, rec)
    first_change: dict[str, ChangeRecord] = {}
    for change in changes:
        if _merge(live, first_change, change.event_id, change, "change record") == "new":
            live.changes.setdefault(change.role_id, {}).setdefault(change.seq, []).append(change)
    return live


def _merge(live: Live, first: dict[str, Any], key: str, rec: Any, what: str) -> str:
    """new | same (an identical copy) | different (a divergence, recorded)."""
    old = first.get(key)
    if old is None:
        first[key] = rec
        return "new"
    live.duplicates += 1
    if old == rec:
        return "same"
    live.problems.append(Divergence(
        rec.role_id, rec.seq, f"two different {what}s for {key}", _short(old), _short(rec),
        rec.event_id, rec.position,
    ))  # fmt: skip
    return "different"


def _short(rec: Any) -> str:
    if isinstance(rec, CommitRecord):
        return f"commit {rec.commit_id[:12]} seq {rec.seq} digest {rec.state_digest[:12]}"
    return f"event {rec.event_id} seq {rec.seq} head {str(rec.head_commit_id)[:12]}"


def _check_consistent(live: Live, rec: CommitRecord) -> None:
    try:
        ok = is_consistent(commit_of(rec))
    except SchemaError as exc:
        ok, why = False, str(exc)
    else:
        why = "its id, state digest and snapshot disagree"
    if not ok:
        live.problems.append(Divergence(
            rec.role_id, rec.seq, f"corrupt commit record ({why})", "a consistent record",
            _short(rec), rec.event_id, rec.position,
        ))  # fmt: skip


# --- comparing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    roles: int
    commits: int
    """Commits the replay cut (in the roles compared)."""
    divergences: tuple[Divergence, ...]
    duplicates: int = 0
    """Identical copies of live records, merged (at-least-once delivery)."""


def compare(
    result: LogResult, live: Live, config: FoldConfig, roles: set[str] | None = None
) -> Report:
    """Every role's first divergence, the live records' own problems first."""
    mine_changes: BySeq = {}
    mine_commits: BySeq = {}
    for rec in result.records:
        if isinstance(rec, ChangeRecord):
            mine_changes.setdefault(rec.role_id, {})[rec.seq] = [rec]
        elif isinstance(rec, CommitRecord):
            mine_commits.setdefault(rec.role_id, {})[rec.seq] = [rec]
    names = set(mine_changes) | set(live.changes) | set(mine_commits) | set(live.commits)
    if roles is not None:
        names &= roles
    found = [p for p in live.problems if roles is None or p.role_id in roles]
    for role in sorted(names):
        mine = (mine_changes.get(role, {}), mine_commits.get(role, {}))
        theirs = (live.changes.get(role, {}), live.commits.get(role, {}))
        first = _first_by_seq(role, mine, theirs) or _final(role, result, live, config)
        if first is not None:
            found.append(first)
    cut = sum(len(mine_commits.get(r, {})) for r in names)
    return Report(len(names), cut, tuple(found), live.duplicates)


Pair = tuple[Mapping[int, list[Any]], Mapping[int, list[Any]]]


def _first_by_seq(role: str, mine: Pair, theirs: Pair) -> Divergence | None:
    seqs = set().union(*mine, *theirs)
    for seq in sorted(seqs):
        event = (mine[0].get(seq) or theirs[0].get(seq) or [None])[0]
        found = _diff(role, seq, "event", mine[0].get(seq, []), theirs[0].get(seq, []), event)
        found = found or _diff(
            role, seq, "commit", mine[1].get(seq, []), theirs[1].get(seq, []), event
        )
        if found is not None:
            return found
    return None


def _diff(
    role: str, seq: int, what: str, mine: list[Any], theirs: list[Any], event: Any
) -> Divergence | None:
    want = [_value(what, r) for r in mine]
    got = sorted({_value(what, r) for r in theirs})
    if want == got:
        return None
    label = "accepted event and head commit" if what == "event" else "commit"
    return Divergence(
        role, seq, f"{label} differs", ", ".join(want) or "none", ", ".join(got) or "none",
        None if event is None else event.event_id, None if event is None else event.position,
    )  # fmt: skip


def _value(what: str, rec: Any) -> str:
    if what == "event":
        return f"{rec.event_id} (head {str(rec.head_commit_id)[:12]})"
    return str(rec.commit_id)


def _final(role: str, result: LogResult, live: Live, config: FoldConfig) -> Divergence | None:
    state = result.states.get(RoleId(role))
    mine = "none" if state is None else (
        f"seq {state.seq} head {state.head_commit_id} digest {state_digest(state)}")  # fmt: skip
    got = _live_final(role, live, config)
    if mine == got:
        return None
    return Divergence(role, None if state is None else state.seq, "final state", mine, got)


def _live_final(role: str, live: Live, config: FoldConfig) -> str:
    """The live final state: the head commit's snapshot + the accepted events after it."""
    changes = live.changes.get(role, {})
    if not changes:
        return "none"
    last = changes[max(changes)][0]
    head = next((c for cs in live.commits.get(role, {}).values() for c in cs
                 if c.commit_id == last.head_commit_id), None)  # fmt: skip
    if head is None:
        return f"seq {last.seq} head {last.head_commit_id} (head commit record missing)"
    tail = [
        WalItem(changes[s][0].position, role.encode(), changes[s][0].event)
        for s in sorted(changes) if s > head.seq
    ]  # fmt: skip
    start = start_state(commit_of(head), head.position, (), config)
    state = state_at(start, role, tail, config, NO_COMMITS).state
    return f"seq {state.seq} head {state.head_commit_id} digest {state_digest(state)}"
