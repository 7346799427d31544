"""Lifecycle rules and every reason the fold can refuse an event.

The rules are pure checks returning ``Refusal | None`` (or what the event
leads to: a lifecycle, a commit); they never raise for user input. Every refusal has a
machine-readable ``Reason`` and a message naming the role, the rule and the
way out, e.g. ``role 'r-42': transition suspended -> created is not allowed
(allowed: active, archived, deleted)``.

Invariants: ``ALLOWED_TRANSITIONS`` is the design's matrix (deleted is
terminal, no self-transitions); every (source -> target) of
``EVENT_TRANSITIONS`` is in that matrix and together they cover it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from rolebus.streams.core.commits import Commit
from rolebus.streams.core.state import Lifecycle
from rolebus.wal.events import (
    CommitId,
    RoleActivated,
    RoleArchived,
    RoleDeleted,
    RoleId,
    RoleResumed,
    RoleSuspended,
    TenantId,
)

C, A, S, AR, D = (
    Lifecycle.CREATED,
    Lifecycle.ACTIVE,
    Lifecycle.SUSPENDED,
    Lifecycle.ARCHIVED,
    Lifecycle.DELETED,
)


class Reason(StrEnum):
    """Why an event was refused (the ``rolebus.rejections`` reason code)."""

    UNKNOWN_ROLE = "unknown_role"
    ROLE_EXISTS = "role_exists"
    TRANSITION_NOT_ALLOWED = "transition_not_allowed"
    NOT_ACTIVE = "not_active"
    SEQ_MISMATCH = "seq_mismatch"
    UNKNOWN_COMMIT = "unknown_commit"
    FOREIGN_COMMIT = "foreign_commit"
    CROSS_TENANT = "cross_tenant"
    ROLE_ARCHIVED = "role_archived"
    ROLE_DELETED = "role_deleted"


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str


ALLOWED_TRANSITIONS: Mapping[Lifecycle, tuple[Lifecycle, ...]] = {
    C: (A, AR, D),
    A: (S, AR, D),
    S: (A, AR, D),
    AR: (D,),
    D: (),
}
"""lifecycle -> the lifecycles it may move to."""

LifecycleEvent = RoleActivated | RoleSuspended | RoleResumed | RoleArchived | RoleDeleted

EVENT_TRANSITIONS: Mapping[type[LifecycleEvent], Mapping[Lifecycle, Lifecycle]] = {
    RoleActivated: {C: A},
    RoleSuspended: {A: S},
    RoleResumed: {S: A},
    RoleArchived: {C: AR, A: AR, S: AR},
    RoleDeleted: {C: D, A: D, S: D, AR: D},
}
"""lifecycle event type -> {source lifecycle: target lifecycle}."""

EDITABLE: tuple[Lifecycle, ...] = (C, A, S)
"""Lifecycles in which PersonaUpdated is accepted."""


def _role(role_id: RoleId) -> str:
    return f"role '{role_id}'"


def _names(lifecycles: tuple[Lifecycle, ...]) -> str:
    return ", ".join(lifecycles) if lifecycles else "none, deleted is terminal"


def check_transition(role_id: RoleId, current: Lifecycle, target: Lifecycle) -> Refusal | None:
    """Refuse a move the lifecycle matrix does not allow."""
    allowed = ALLOWED_TRANSITIONS[current]
    if target in allowed:
        return None
    return Refusal(
        Reason.TRANSITION_NOT_ALLOWED,
        f"{_role(role_id)}: transition {current} -> {target} is not allowed "
        f"(allowed: {_names(allowed)})",
    )


def lifecycle_target(
    role_id: RoleId, current: Lifecycle, event_type: type[LifecycleEvent]
) -> Lifecycle | Refusal:
    """Where ``event_type`` takes a role in ``current``, or why it cannot."""
    moves = EVENT_TRANSITIONS[event_type]
    if current in moves:
        return moves[current]
    target = next(iter(moves.values()))
    refusal = check_transition(role_id, current, target)
    if refusal is not None:
        return refusal
    # The matrix allows current -> target, but through another event.
    right = next(name for name, m in EVENT_TRANSITIONS.items() if m.get(current) == target)
    sources = ", ".join(moves)
    return Refusal(
        Reason.TRANSITION_NOT_ALLOWED,
        f"{_role(role_id)}: {event_type.__name__} applies to {sources} roles, "
        f"but the role is {current} (use {right.__name__} for {current} -> {target})",
    )


_WAKE_UP: Mapping[Lifecycle, str] = {
    C: "activate it with RoleActivated first",
    S: "resume it with RoleResumed first",
    AR: "archived roles take no messages; fork it to continue",
}


def check_message(role_id: RoleId, current: Lifecycle) -> Refusal | None:
    """Messages only while active."""
    if current is A:
        return None
    if current is D:
        return role_deleted(role_id, "MessageAppended")
    return Refusal(
        Reason.NOT_ACTIVE,
        f"{_role(role_id)}: MessageAppended needs an active role, but it is {current} "
        f"({_WAKE_UP[current]})",
    )


def check_persona(role_id: RoleId, current: Lifecycle) -> Refusal | None:
    """PersonaUpdated while created, active or suspended."""
    if current in EDITABLE:
        return None
    if current is D:
        return role_deleted(role_id, "PersonaUpdated")
    return Refusal(
        Reason.ROLE_ARCHIVED,
        f"{_role(role_id)}: PersonaUpdated is not allowed on an archived role "
        f"(allowed while {_names(EDITABLE)}; fork it to change the persona)",
    )


def check_not_deleted(role_id: RoleId, current: Lifecycle, event_type: str) -> Refusal | None:
    """CommitRequested and RolledBack: anything but a deleted role."""
    return role_deleted(role_id, event_type) if current is D else None


def role_deleted(role_id: RoleId, event_type: str) -> Refusal:
    return Refusal(
        Reason.ROLE_DELETED,
        f"{_role(role_id)}: {event_type} refused: the role is deleted (deleted is terminal)",
    )


def unknown_role(role_id: RoleId, event_type: str) -> Refusal:
    return Refusal(
        Reason.UNKNOWN_ROLE,
        f"{_role(role_id)}: {event_type} refused: no such role "
        "(create it with RoleCreated or RoleForked first)",
    )


def role_exists(role_id: RoleId, event_type: str) -> Refusal:
    return Refusal(
        Reason.ROLE_EXISTS,
        f"{_role(role_id)}: {event_type} refused: the role already exists "
        "(role ids are never reused; pick a new id)",
    )


def check_expected_seq(role_id: RoleId, expected: int | None, actual: int) -> Refusal | None:
    """Optimistic concurrency: ``expected`` must be the role's current seq."""
    if expected is None or expected == actual:
        return None
    return Refusal(
        Reason.SEQ_MISMATCH,
        f"{_role(role_id)}: expected_seq {expected} does not match the role's seq {actual} "
        "(re-read the role and retry)",
    )


def check_tenant(role_id: RoleId, owner: TenantId, tenant_id: TenantId) -> Refusal | None:
    """An event must come from the tenant that owns the role."""
    if owner == tenant_id:
        return None
    return Refusal(
        Reason.CROSS_TENANT,
        f"{_role(role_id)}: belongs to another tenant than '{tenant_id}' "
        "(send the event with the role's own tenant id)",
    )


def resolve_rollback_target(
    role_id: RoleId, commit_id: CommitId, target: Commit | None, next_seq: int
) -> Commit | Refusal:
    """The target must be a known commit of this role, cut before this event.

    A commit whose seq is not below ``next_seq`` cannot have been cut earlier
    in this role's log, so it counts as unknown: a lookup that already holds
    commits from a previous run of the same log cannot change the outcome.
    Another role's commit counts as unknown too: whether a worker can see it
    depends on which worker cut it and when, so the answer must not.
    """
    if target is None or target.role_id != role_id or target.seq >= next_seq:
        return Refusal(
            Reason.UNKNOWN_COMMIT,
            f"{_role(role_id)}: unknown commit {commit_id}: not one of this role's earlier "
            "commits (list the role's commits and pick one; to start from another role's "
            "commit, fork it)",
        )
    return target


def resolve_fork_source(
    role_id: RoleId,
    tenant_id: TenantId,
    source_role_id: RoleId,
    commit_id: CommitId,
    source: Commit | None,
) -> Commit | Refusal:
    """The source commit must exist, belong to the named role and tenant, and
    not record a deleted role."""
    if source is None:
        return _unknown_commit(role_id, commit_id)
    if source.role_id != source_role_id:
        return Refusal(
            Reason.FOREIGN_COMMIT,
            f"{_role(role_id)}: commit {commit_id} belongs to role '{source.role_id}', "
            f"not to the fork source '{source_role_id}'",
        )
    if source.snapshot.tenant_id != tenant_id:
        return Refusal(
            Reason.CROSS_TENANT,
            f"{_role(role_id)}: cannot fork across tenants (source commit {commit_id} "
            f"belongs to another tenant than '{tenant_id}')",
        )
    if source.snapshot.lifecycle is D:
        return Refusal(
            Reason.ROLE_DELETED,
            f"{_role(role_id)}: commit {commit_id} records the deletion of "
            f"'{source_role_id}' (fork from one of its earlier commits)",
        )
    return source


def _unknown_commit(role_id: RoleId, commit_id: CommitId) -> Refusal:
    return Refusal(
        Reason.UNKNOWN_COMMIT,
        f"{_role(role_id)}: unknown commit {commit_id} (list the role's commits and pick one)",
    )
