"""Client-side validation: each rule names the dotted field, the rule and the value."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from rolebus.errors import SchemaError, ValidationError
from rolebus.wal.events import (
    PAYLOAD_TYPES,
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
from rolebus.wal.validate import (
    COMMIT_ID_PATTERN,
    ROLE_ID_PATTERN,
    TENANT_ID_PATTERN,
    is_commit_id,
    is_role_id,
    is_tenant_id,
    new_role_id,
    validate,
)

COMMIT = CommitId("ab" * 32)
MESSAGE = MessageAppended(
    message_id="msg-1",
    author=Author.USER,
    content="hello",
    tokens_in=3,
    latency_ms=0,
    flags=frozenset({Flag.REFUSAL}),
    tool_call=ToolCall(name="calc", arguments_json='{"x": 1}'),
)
CREATED = RoleCreated(name="Tutor", persona="", traits={"tone": "kind"}, skills=("calc",))
VALID: dict[type, Payload] = {
    RoleCreated: CREATED,
    RoleActivated: RoleActivated(),
    RoleSuspended: RoleSuspended(reason="why"),
    RoleResumed: RoleResumed(),
    RoleArchived: RoleArchived(),
    RoleDeleted: RoleDeleted(reason=""),
    MessageAppended: MESSAGE,
    PersonaUpdated: PersonaUpdated(persona="new", traits={}, skills=None),
    CommitRequested: CommitRequested(label="v1"),
    RolledBack: RolledBack(to_commit_id=COMMIT),
    RoleForked: RoleForked(source_role_id=RoleId("r-src"), source_commit_id=COMMIT, name="F"),
}


def event(payload: Payload = MESSAGE, **changes: Any) -> Envelope:
    base = Envelope(
        event_id=uuid.uuid4(),
        tenant_id=TenantId("acme_1"),
        role_id=new_role_id(),
        occurred_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        producer="test",
        payload=payload,
    )
    return dataclasses.replace(base, **changes)


def message(**changes: Any) -> Envelope:
    return event(dataclasses.replace(MESSAGE, **changes))


def refused(envelope: Envelope, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate(envelope, **kwargs)
    error = caught.value
    assert isinstance(error, SchemaError)
    assert str(error).startswith(f"{error.field}: {error.rule}")
    return error


@pytest.mark.parametrize("kind", PAYLOAD_TYPES, ids=lambda kind: kind.__name__)
def test_valid_events_pass(kind: type) -> None:
    assert set(VALID) == set(PAYLOAD_TYPES)
    validate(event(VALID[kind]))
    validate(event(VALID[kind], expected_seq=0))


# --- the rules the brief names -----------------------------------------------


@pytest.mark.parametrize("tenant", [None, ""])
def test_missing_tenant(tenant: Any) -> None:
    error = refused(event(tenant_id=tenant))
    assert (error.field, error.rule) == ("tenant_id", "is required")
    assert "tenant_id: is required" in str(error)


def test_bad_author() -> None:
    error = refused(message(author="robot"))
    assert error.field == "payload.author"
    assert "must be an Author (user, assistant, system, tool)" in str(error)
    assert error.value == "robot"
    assert refused(message(author="user")).field == "payload.author"  # str, not Author


def test_content_over_the_limit_names_limit_and_size() -> None:
    error = refused(message(content="é" * 6), max_content_bytes=11)
    assert error.field == "payload.content"
    assert "at most 11 bytes" in error.rule and "max_content_bytes" in error.rule
    assert "12 bytes" in error.rule
    assert str(error).startswith("payload.content: must be at most 11 bytes")
    validate(message(content="é" * 6), max_content_bytes=12)


def test_default_content_limit_is_256_kib() -> None:
    validate(message(content="x" * 256 * 1024))
    assert "262144" in refused(message(content="x" * (256 * 1024 + 1))).rule


@pytest.mark.parametrize(
    "role_id", ["", "-r", "r 1", "r/1", "r\n", "r1\n", "é", "r" * 129, None, 42]
)
def test_bad_role_id_format(role_id: Any) -> None:
    error = refused(event(role_id=role_id))
    assert error.field == "role_id"
    assert str(error).startswith("role_id: ")


def test_role_id_rule_names_the_pattern() -> None:
    assert ROLE_ID_PATTERN.pattern in refused(event(role_id="bad id")).rule


# --- everything else ---------------------------------------------------------


def long_text(n: int) -> str:
    return "x" * n


CASES: list[tuple[str, Envelope, str, str]] = [
    ("event_id", event(event_id="not-a-uuid"), "event_id", "uuid"),
    ("tenant-upper", event(tenant_id="Acme"), "tenant_id", "tenant id"),
    ("tenant-long", event(tenant_id="a" * 65), "tenant_id", "tenant id"),
    ("naive", event(occurred_at=datetime(2024, 1, 1)), "occurred_at", "timezone-aware"),
    ("not-datetime", event(occurred_at=1700000000), "occurred_at", "datetime"),
    ("producer-empty", event(producer=""), "producer", "empty"),
    ("producer-long", event(producer=long_text(201)), "producer", "1-200"),
    ("seq-negative", event(expected_seq=-1), "expected_seq", ">= 0"),
    ("seq-bool", event(expected_seq=True), "expected_seq", "integer"),
    ("payload", event("nope"), "payload", "must be one of RoleCreated"),
    ("name-empty", event(RoleCreated("", "p")), "payload.name", "empty"),
    ("name-long", event(RoleCreated(long_text(201), "p")), "payload.name", "1-200"),
    ("persona", event(RoleCreated("n", long_text(64 * 1024 + 1))), "payload.persona", "65536"),
    (
        "traits-many",
        event(RoleCreated("n", "", {str(i): "" for i in range(101)})),
        "payload.traits",
        "100",
    ),
    ("trait-key", event(RoleCreated("n", "", {"": "v"})), "payload.traits", "keys"),
    (
        "trait-value",
        event(RoleCreated("n", "", {"k": long_text(4097)})),
        "payload.traits[k]",
        "4096",
    ),
    ("skills-list", event(RoleCreated("n", "", skills=["a"])), "payload.skills", "tuple"),
    ("skills-many", event(RoleCreated("n", "", skills=("a",) * 101)), "payload.skills", "100"),
    ("skill-empty", event(RoleCreated("n", "", skills=("a", ""))), "payload.skills[1]", "empty"),
    (
        "skill-long",
        event(RoleCreated("n", "", skills=(long_text(101),))),
        "payload.skills[0]",
        "1-100",
    ),
    ("model-empty", event(RoleCreated("n", "", model="")), "payload.model", "empty"),
    ("message-id", message(message_id="a b"), "payload.message_id", "message id"),
    ("message-id-long", message(message_id="m" * 129), "payload.message_id", "message id"),
    ("content-empty", message(content=""), "payload.content", "empty"),
    ("content-surrogate", message(content="\ud800"), "payload.content", "surrogates"),
    ("tokens-in", message(tokens_in=-1), "payload.tokens_in", ">= 0"),
    ("tokens-out", message(tokens_out=2**31), "payload.tokens_out", "< 2147483648"),
    ("tokens-float", message(tokens_in=1.5), "payload.tokens_in", "integer"),
    ("latency", message(latency_ms=-5), "payload.latency_ms", ">= 0"),
    ("flags-str", message(flags=frozenset({"refusal"})), "payload.flags", "Flag"),
    ("flags-set", message(flags={Flag.ERROR}), "payload.flags", "frozenset"),
    ("tool-name", message(tool_call=ToolCall("", "{}")), "payload.tool_call.name", "empty"),
    (
        "tool-json",
        message(tool_call=ToolCall("t", "{x")),
        "payload.tool_call.arguments_json",
        "JSON",
    ),
    ("tool-type", message(tool_call={"name": "t"}), "payload.tool_call", "ToolCall"),
    ("label", event(CommitRequested("")), "payload.label", "empty"),
    ("label-long", event(CommitRequested(long_text(201))), "payload.label", "1-200"),
    ("rollback", event(RolledBack(CommitId("AB" * 32))), "payload.to_commit_id", "commit id"),
    ("rollback-short", event(RolledBack(CommitId("ab"))), "payload.to_commit_id", "commit id"),
    ("reason", event(RoleSuspended(long_text(4097))), "payload.reason", "0-4096"),
    ("persona-traits", event(PersonaUpdated("p", traits={"": "x"})), "payload.traits", "keys"),
    ("persona-skills", event(PersonaUpdated("p", skills=("",))), "payload.skills[0]", "empty"),
    (
        "fork-role",
        event(RoleForked(RoleId("x y"), COMMIT, "n")),
        "payload.source_role_id",
        "role id",
    ),
    (
        "fork-commit",
        event(RoleForked(RoleId("r"), CommitId("x"), "n")),
        "payload.source_commit_id",
        "commit id",
    ),
    ("fork-name", event(RoleForked(RoleId("r"), COMMIT, "")), "payload.name", "empty"),
]


@pytest.mark.parametrize(
    ("envelope", "field", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_rule_names_field_and_rule(envelope: Envelope, field: str, rule: str) -> None:
    error = refused(envelope)
    assert error.field == field
    assert rule in error.rule


def test_boundaries_are_inclusive() -> None:
    validate(event(tenant_id="a" * 64, role_id="R" * 128, producer=long_text(200)))
    validate(message(message_id="m" * 128, tokens_in=2**31 - 1, tokens_out=0))
    validate(event(RoleCreated(long_text(200), long_text(64 * 1024), {"k" * 100: long_text(4096)})))
    validate(event(RoleCreated("n", "", {str(i): "" for i in range(100)}, skills=("s",) * 100)))


def test_id_helpers_and_patterns() -> None:
    role = new_role_id()
    assert role.startswith("r-") and len(role) == 34 and is_role_id(role)
    assert new_role_id() != role
    assert is_tenant_id("acme-eu_1") and not is_tenant_id("_acme") and not is_tenant_id(None)
    assert is_commit_id(COMMIT) and not is_commit_id(COMMIT + "\n")
    assert is_role_id("game:npc.42") and not is_role_id(".hidden")
    assert TENANT_ID_PATTERN.fullmatch("acme") and COMMIT_ID_PATTERN.fullmatch(COMMIT)


def test_error_value_is_shortened_in_the_message() -> None:
    error = refused(message(content="x" * 1000), max_content_bytes=10)
    assert len(str(error)) < 200 and error.value == "x" * 1000
