"""Lifecycle rules and refusal messages, checked without folding."""

from __future__ import annotations

import itertools

import pytest

from rolebus.streams.core.rules import (
    ALLOWED_TRANSITIONS,
    EDITABLE,
    EVENT_TRANSITIONS,
    Reason,
    Refusal,
    check_expected_seq,
    check_message,
    check_not_deleted,
    check_persona,
    check_tenant,
    check_transition,
    lifecycle_target,
)
from rolebus.streams.core.state import Lifecycle
from rolebus.wal.events import (
    RoleActivated,
    RoleArchived,
    RoleDeleted,
    RoleId,
    RoleResumed,
    RoleSuspended,
    TenantId,
)

L = Lifecycle
R = RoleId("r-42")

EXPECTED_MATRIX = {
    (L.CREATED, L.ACTIVE),
    (L.CREATED, L.ARCHIVED),
    (L.CREATED, L.DELETED),
    (L.ACTIVE, L.SUSPENDED),
    (L.ACTIVE, L.ARCHIVED),
    (L.ACTIVE, L.DELETED),
    (L.SUSPENDED, L.ACTIVE),
    (L.SUSPENDED, L.ARCHIVED),
    (L.SUSPENDED, L.DELETED),
    (L.ARCHIVED, L.DELETED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(L, L)))
def test_transition_matrix(current: Lifecycle, target: Lifecycle) -> None:
    refusal = check_transition(R, current, target)
    if (current, target) in EXPECTED_MATRIX:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.reason is Reason.TRANSITION_NOT_ALLOWED
        assert f"transition {current} -> {target} is not allowed" in refusal.message


def test_refusal_message_names_role_rule_and_allowed_moves() -> None:
    refusal = check_transition(R, L.SUSPENDED, L.CREATED)
    assert refusal == Refusal(
        Reason.TRANSITION_NOT_ALLOWED,
        "role 'r-42': transition suspended -> created is not allowed "
        "(allowed: active, archived, deleted)",
    )


def test_deleted_is_terminal() -> None:
    assert ALLOWED_TRANSITIONS[L.DELETED] == ()
    refusal = check_transition(R, L.DELETED, L.ACTIVE)
    assert refusal is not None
    assert "(allowed: none, deleted is terminal)" in refusal.message


def test_event_transitions_cover_the_matrix_exactly() -> None:
    moves = {(s, t) for m in EVENT_TRANSITIONS.values() for s, t in m.items()}
    assert moves == EXPECTED_MATRIX
    assert {(s, t) for s, ts in ALLOWED_TRANSITIONS.items() for t in ts} == EXPECTED_MATRIX


LIFECYCLE_EVENTS = [RoleActivated, RoleSuspended, RoleResumed, RoleArchived, RoleDeleted]


@pytest.mark.parametrize(("current", "event_type"), list(itertools.product(L, LIFECYCLE_EVENTS)))
def test_lifecycle_target(current: Lifecycle, event_type: type[RoleActivated]) -> None:
    result = lifecycle_target(R, current, event_type)
    expected = EVENT_TRANSITIONS[event_type].get(current)
    if expected is None:
        assert isinstance(result, Refusal)
        assert result.reason is Reason.TRANSITION_NOT_ALLOWED
        assert result.message.startswith("role 'r-42': ")
    else:
        assert result is expected


def test_matrix_move_through_the_wrong_event_names_the_right_one() -> None:
    result = lifecycle_target(R, L.SUSPENDED, RoleActivated)
    assert isinstance(result, Refusal)
    assert result.message == (
        "role 'r-42': RoleActivated applies to created roles, but the role is suspended "
        "(use RoleResumed for suspended -> active)"
    )


@pytest.mark.parametrize("current", list(L))
def test_messages_only_while_active(current: Lifecycle) -> None:
    refusal = check_message(R, current)
    if current is L.ACTIVE:
        assert refusal is None
    else:
        assert refusal is not None
        expected = Reason.ROLE_DELETED if current is L.DELETED else Reason.NOT_ACTIVE
        assert refusal.reason is expected


def test_not_active_message_tells_the_fix() -> None:
    refusal = check_message(R, L.SUSPENDED)
    assert refusal is not None
    assert refusal.message == (
        "role 'r-42': MessageAppended needs an active role, but it is suspended "
        "(resume it with RoleResumed first)"
    )


@pytest.mark.parametrize("current", list(L))
def test_persona_rule(current: Lifecycle) -> None:
    refusal = check_persona(R, current)
    if current in EDITABLE:
        assert refusal is None
    else:
        assert refusal is not None
        expected = Reason.ROLE_DELETED if current is L.DELETED else Reason.ROLE_ARCHIVED
        assert refusal.reason is expected


@pytest.mark.parametrize("current", list(L))
def test_commit_and_rollback_allowed_unless_deleted(current: Lifecycle) -> None:
    refusal = check_not_deleted(R, current, "CommitRequested")
    assert (refusal is None) is (current is not L.DELETED)


def test_expected_seq() -> None:
    assert check_expected_seq(R, None, 7) is None
    assert check_expected_seq(R, 7, 7) is None
    refusal = check_expected_seq(R, 6, 7)
    assert refusal is not None
    assert refusal.reason is Reason.SEQ_MISMATCH
    assert "expected_seq 6 does not match the role's seq 7" in refusal.message


def test_tenant() -> None:
    assert check_tenant(R, TenantId("t-1"), TenantId("t-1")) is None
    refusal = check_tenant(R, TenantId("t-1"), TenantId("t-2"))
    assert refusal is not None
    assert refusal.reason is Reason.CROSS_TENANT
