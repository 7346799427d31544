"""One mutator per payload type: what an event does to a role's content.

Mutators are pure. They return a ``Change`` (or a ``Refusal``) and leave the
common bookkeeping to ``rolebus.streams.core.fold``: seq, the commit cadence, the
dedupe window and the WAL position. Conventions a mutator follows:

* the returned state keeps the PREVIOUS seq (the fold adds 1);
* its ``head_commit_id`` is the parent of a commit cut now: the previous head
  (a rollback keeps it), the source commit for a fork, None on creation;
* ``cut`` names the commit kind when the event itself cuts a commit.

Choices: a fork starts ``created`` (it must be activated like any new role, so
the lifecycle matrix holds from its first event) with the source snapshot's
persona, traits, model, skills and message window, and zero counters. A
rollback restores the snapshot's content (lifecycle, name, persona, traits,
model, skills, message window, lineage), never the counters, which are
lifetime totals. Deleted roles cannot roll back, so a rollback never
resurrects one; it is the only way to leave ``archived`` other than deletion.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import singledispatch

from rolebus.errors import FoldError
from rolebus.streams.core.commits import CommitKind, CommitLookup
from rolebus.streams.core.outcome import Superseded
from rolebus.streams.core.rules import (
    Refusal,
    check_message,
    check_not_deleted,
    check_persona,
    lifecycle_target,
    resolve_fork_source,
    resolve_rollback_target,
)
from rolebus.streams.core.state import (
    FoldConfig,
    Lifecycle,
    Lineage,
    RecentMessage,
    RoleState,
    SeqRange,
    evolve,
    live_ranges,
    logical_view,
    normalize_ranges,
    sorted_map,
    subtract_ranges,
)
from rolebus.wal.events import (
    CommitRequested,
    Envelope,
    MessageAppended,
    PersonaUpdated,
    RoleActivated,
    RoleArchived,
    RoleCreated,
    RoleDeleted,
    RoleForked,
    RoleResumed,
    RoleSuspended,
    RolledBack,
)
from rolebus.wal.snapshot import count


@dataclass(frozen=True)
class Change:
    """What an accepted event does, before the fold's bookkeeping."""

    state: RoleState
    cut: CommitKind | None = None
    label: str | None = None
    superseded: Superseded | None = None


Step = Change | Refusal


@dataclass(frozen=True)
class Context:
    envelope: Envelope
    lookup: CommitLookup
    config: FoldConfig


def create_role(envelope: Envelope, payload: RoleCreated) -> Change:
    state = RoleState(
        role_id=envelope.role_id,
        tenant_id=envelope.tenant_id,
        lifecycle=Lifecycle.CREATED,
        name=payload.name,
        persona=payload.persona,
        traits=sorted_map(payload.traits),
        model=payload.model,
        skills=tuple(payload.skills),
    )
    return Change(state, cut=CommitKind.CREATED)


def fork_role(envelope: Envelope, payload: RoleForked, lookup: CommitLookup) -> Step:
    source = resolve_fork_source(
        envelope.role_id,
        envelope.tenant_id,
        payload.source_role_id,
        payload.source_commit_id,
        lookup.get(payload.source_commit_id),
    )
    if isinstance(source, Refusal):
        return source
    snap = source.snapshot
    state = RoleState(
        role_id=envelope.role_id,
        tenant_id=envelope.tenant_id,
        lifecycle=Lifecycle.CREATED,
        name=payload.name,
        persona=snap.persona,
        traits=snap.traits,
        model=snap.model,
        skills=snap.skills,
        messages=snap.messages,
        head_commit_id=source.commit_id,
    )
    return Change(state, cut=CommitKind.FORK)


@singledispatch
def mutate(payload: object, state: RoleState, ctx: Context) -> Step:
    """Apply an event of an existing role (creation events go elsewhere)."""
    raise FoldError(
        f"role '{state.role_id}': no fold rule for payload {type(payload).__name__} "
        "(register one in rolebus.streams.core.mutate)"
    )


@mutate.register(RoleActivated)
@mutate.register(RoleSuspended)
@mutate.register(RoleResumed)
@mutate.register(RoleArchived)
@mutate.register(RoleDeleted)
def _lifecycle(
    payload: RoleActivated | RoleSuspended | RoleResumed | RoleArchived | RoleDeleted,
    state: RoleState,
    ctx: Context,
) -> Step:
    target = lifecycle_target(state.role_id, state.lifecycle, type(payload))
    if isinstance(target, Refusal):
        return target
    return Change(evolve(state, lifecycle=target), cut=CommitKind.LIFECYCLE)


@mutate.register
def _message(payload: MessageAppended, state: RoleState, ctx: Context) -> Step:
    refusal = check_message(state.role_id, state.lifecycle)
    if refusal is not None:
        return refusal
    message = RecentMessage(
        message_id=payload.message_id,
        seq=state.seq + 1,
        role_id=state.role_id,
        author=payload.author,
        content=payload.content,
        occurred_at=ctx.envelope.occurred_at,
        flags=frozenset(payload.flags),
        tool_call=payload.tool_call,
    )
    window = (*state.messages, message)[-ctx.config.message_window :]
    return Change(evolve(state, messages=window, counters=count(state.counters, payload)))


@mutate.register
def _persona(payload: PersonaUpdated, state: RoleState, ctx: Context) -> Step:
    refusal = check_persona(state.role_id, state.lifecycle)
    if refusal is not None:
        return refusal
    updated = evolve(
        state,
        persona=payload.persona,
        traits=state.traits if payload.traits is None else sorted_map(payload.traits),
        model=state.model if payload.model is None else payload.model,
        skills=state.skills if payload.skills is None else tuple(payload.skills),
        counters=count(state.counters, payload),
    )
    return Change(updated)


@mutate.register
def _commit_requested(payload: CommitRequested, state: RoleState, ctx: Context) -> Step:
    refusal = check_not_deleted(state.role_id, state.lifecycle, "CommitRequested")
    if refusal is not None:
        return refusal
    return Change(state, cut=CommitKind.MANUAL, label=payload.label)


@mutate.register
def _rolled_back(payload: RolledBack, state: RoleState, ctx: Context) -> Step:
    refusal = check_not_deleted(state.role_id, state.lifecycle, "RolledBack")
    if refusal is not None:
        return refusal
    seq = state.seq + 1
    found = ctx.lookup.get(payload.to_commit_id)
    target = resolve_rollback_target(state.role_id, payload.to_commit_id, found, seq)
    if isinstance(target, Refusal):
        return target
    kept = live_ranges(target.snapshot)
    restored = RoleState(
        **{
            **logical_view(target.snapshot),
            "seq": state.seq,
            "counters": count(state.counters, payload),
            "lineage": Lineage(closed=kept, branch_start=seq),
        },
        head_commit_id=state.head_commit_id,
        events_since_commit=state.events_since_commit,
    )
    before = live_ranges(state)
    superseded = Superseded(
        after_seq=target.seq,
        superseded=subtract_ranges(before, kept),
        restored=subtract_ranges(kept, before),
        live=normalize_ranges((*kept, SeqRange(seq, seq))),
    )
    return Change(restored, cut=CommitKind.ROLLBACK, superseded=superseded)
