"""The fold: ``(state, event) -> (state, outcome)``, pure and deterministic.

``apply_event`` takes a role's state (None for a role not seen yet), one
envelope and, optionally, the WAL position it was read from. Nothing else
influences the result: no clock (time comes from ``occurred_at``), no
randomness, no dict ordering, no I/O. Commits of other events are reached only
through the read-only ``lookup`` argument.

Order of checks: duplicate (event id in the dedupe window, or a position at or
below the role's last one on the same topic and partition) -> role existence
(RoleCreated/RoleForked need a new id, everything else a known one) -> tenant
-> expected_seq (0 for creation events) -> the payload's own rules
(``rolebus.streams.core.rules`` via ``rolebus.streams.core.mutate``).

Invariants: an accepted event gets seq = previous seq + 1; a commit is cut on
creation, fork, every lifecycle transition, CommitRequested, rollback, and
otherwise after ``commit_every`` accepted events without one (at most one
commit per event); a duplicate returns the state unchanged; a rejection leaves
the logical state unchanged but remembers the event id and position (so a
redelivered rejected event is a duplicate, not a second rejection record).
"""

from __future__ import annotations

from rolebus.errors import FoldError
from rolebus.streams.core.commits import NO_COMMITS, Commit, CommitKind, CommitLookup, make_commit
from rolebus.streams.core.mutate import Change, Context, Step, create_role, fork_role, mutate
from rolebus.streams.core.outcome import Accepted, Duplicate, DuplicateBy, Outcome, Rejected
from rolebus.streams.core.rules import (
    Refusal,
    check_expected_seq,
    check_tenant,
    role_exists,
    unknown_role,
)
from rolebus.streams.core.state import FoldConfig, RoleState, evolve
from rolebus.streams.core.window import EventWindow
from rolebus.wal.events import Envelope, RoleCreated, RoleForked, WalPosition

DEFAULT_CONFIG = FoldConfig()

Positioned = tuple[Envelope, WalPosition | None]
"""An envelope with the WAL position it was read from (None when unknown)."""


def apply_event(
    state: RoleState | None,
    envelope: Envelope,
    position: WalPosition | None = None,
    *,
    lookup: CommitLookup = NO_COMMITS,
    config: FoldConfig = DEFAULT_CONFIG,
) -> tuple[RoleState | None, Outcome]:
    """Fold one event into its role's state."""
    if state is not None and state.role_id != envelope.role_id:
        raise FoldError(
            f"role '{envelope.role_id}': folded into the state of role '{state.role_id}' "
            "(pass the state of the envelope's role)"
        )
    duplicate = duplicate_by(state, envelope, position)
    if duplicate is not None:
        return state, Duplicate(envelope.event_id, envelope.role_id, duplicate)
    step = _step(state, envelope, lookup, config)
    if isinstance(step, Refusal):
        rejected = Rejected(envelope.event_id, envelope.role_id, step.reason, step.message)
        if state is None:
            return None, rejected
        remembered = evolve(state)
        _bookkeeping(remembered.__dict__, state, envelope, position, config)
        return remembered, rejected
    return _accept(state, step, envelope, position, config)


def duplicate_by(
    state: RoleState | None, envelope: Envelope, position: WalPosition | None
) -> DuplicateBy | None:
    """Why ``envelope`` was already applied to ``state``, or None."""
    if state is None:
        return None
    if envelope.event_id in state.recent_event_ids:
        return DuplicateBy.EVENT_ID
    last = state.last_position
    if (
        position is not None
        and last is not None
        and (position.topic, position.partition) == (last.topic, last.partition)
        and position.offset <= last.offset
    ):
        return DuplicateBy.POSITION
    return None


def _step(
    state: RoleState | None, envelope: Envelope, lookup: CommitLookup, config: FoldConfig
) -> Step:
    payload, role_id = envelope.payload, envelope.role_id
    if isinstance(payload, RoleCreated | RoleForked):
        if state is not None:
            return role_exists(role_id, envelope.event_type)
        refusal = check_expected_seq(role_id, envelope.expected_seq, 0)
        if refusal is not None:
            return refusal
        if isinstance(payload, RoleCreated):
            return create_role(envelope, payload)
        return fork_role(envelope, payload, lookup)
    if state is None:
        return unknown_role(role_id, envelope.event_type)
    refusal = check_tenant(role_id, state.tenant_id, envelope.tenant_id) or check_expected_seq(
        role_id, envelope.expected_seq, state.seq
    )
    if refusal is not None:
        return refusal
    return mutate(payload, state, Context(envelope, lookup, config))


def _accept(
    previous: RoleState | None,
    change: Change,
    envelope: Envelope,
    position: WalPosition | None,
    config: FoldConfig,
) -> tuple[RoleState, Accepted]:
    # A mutator's state is a new object nobody else holds yet (CommitRequested
    # hands back the previous one: copied), so the step finishes it in place
    # instead of copying it once more per field group.
    state = evolve(change.state) if change.state is previous else change.state
    attrs = state.__dict__
    attrs["seq"] = seq = state.seq + 1
    pending = state.events_since_commit + 1
    kind = change.cut
    if kind is None and pending >= config.commit_every:
        kind = CommitKind.AUTO
    commits: tuple[Commit, ...] = ()
    head = state.head_commit_id
    if kind is not None:
        commit = make_commit(  # parent: the head before this event
            state, kind, occurred_at=envelope.occurred_at, event_id=envelope.event_id,
            label=change.label,
        )  # fmt: skip
        head, pending, commits = commit.commit_id, 0, (commit,)
        # The state's logical part is the commit's: share its one encoding
        # (the changelog writes it again), do not build it twice.
        attrs["canonical_text"] = commit.snapshot.canonical_text
    attrs["head_commit_id"], attrs["events_since_commit"] = head, pending
    _bookkeeping(attrs, previous, envelope, position, config)
    accepted = Accepted(envelope.event_id, state.role_id, seq, state, commits, change.superseded)
    return state, accepted


def _bookkeeping(
    attrs: dict[str, object],
    previous: RoleState | None,
    envelope: Envelope,
    position: WalPosition | None,
    config: FoldConfig,
) -> None:
    """The event id joins the bounded dedupe window; the position, when known,
    becomes the last applied one (written into a new state's ``attrs``)."""
    seen = EventWindow() if previous is None else previous.recent_event_ids
    last = None if previous is None else previous.last_position
    attrs["recent_event_ids"] = seen.add(envelope.event_id, config.dedupe_window)
    attrs["last_position"] = last if position is None else position
