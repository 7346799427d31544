"""The event model: one envelope, one union of payloads (see schemas/).

These frozen dataclasses are the in-memory form of the wire contract. The Avro
codec maps them to and from bytes; the fold consumes them. Times are UTC-aware
datetimes with microsecond precision (Avro timestamp-micros); ids are strings
whose formats ``rolebus.wal.validate`` enforces.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NewType

RoleId = NewType("RoleId", str)
TenantId = NewType("TenantId", str)
CommitId = NewType("CommitId", str)
"""64 lowercase hex chars: SHA-256 of the commit's canonical encoding."""


class Author(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class Flag(StrEnum):
    HALLUCINATION = "hallucination"
    REFUSAL = "refusal"
    ERROR = "error"
    TOOL_ERROR = "tool_error"
    SAFETY = "safety"


# --- lifecycle ---------------------------------------------------------------


@dataclass(frozen=True)
class RoleCreated:
    name: str
    """Display name of the role (1-200 chars)."""
    persona: str
    """Persona / system prompt text."""
    traits: Mapping[str, str] = field(default_factory=dict)
    """Free-form key/value traits (tone, language, ...)."""
    model: str | None = None
    """Model the role speaks through, e.g. 'gpt-4o' or 'llama3:8b'."""
    skills: tuple[str, ...] = ()
    """Tool / skill names the role may use."""


@dataclass(frozen=True)
class RoleActivated:
    reason: str | None = None


@dataclass(frozen=True)
class RoleSuspended:
    reason: str | None = None


@dataclass(frozen=True)
class RoleResumed:
    reason: str | None = None


@dataclass(frozen=True)
class RoleArchived:
    reason: str | None = None


@dataclass(frozen=True)
class RoleDeleted:
    reason: str | None = None


# --- conversation ------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    name: str
    """Tool name."""
    arguments_json: str
    """Arguments as a JSON document (kept verbatim)."""
    result: str | None = None
    """Tool output, when known."""


@dataclass(frozen=True)
class MessageAppended:
    message_id: str
    """Client-chosen id of the message (unique within the role)."""
    author: Author
    content: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int | None = None
    """Model latency for assistant messages."""
    model: str | None = None
    flags: frozenset[Flag] = frozenset()
    """Quality flags raised on this message (hallucination, refusal, ...)."""
    tool_call: ToolCall | None = None


@dataclass(frozen=True)
class PersonaUpdated:
    """Replaces the persona; traits/model/skills are replaced only when given."""

    persona: str
    traits: Mapping[str, str] | None = None
    model: str | None = None
    skills: tuple[str, ...] | None = None


# --- history -----------------------------------------------------------------


@dataclass(frozen=True)
class CommitRequested:
    """A manual, labelled commit (like a Git tag)."""

    label: str


@dataclass(frozen=True)
class RolledBack:
    to_commit_id: CommitId
    reason: str | None = None


@dataclass(frozen=True)
class RoleForked:
    """First event of a new role, starting from another role's commit."""

    source_role_id: RoleId
    source_commit_id: CommitId
    name: str


Payload = (
    RoleCreated
    | RoleActivated
    | RoleSuspended
    | RoleResumed
    | RoleArchived
    | RoleDeleted
    | MessageAppended
    | PersonaUpdated
    | CommitRequested
    | RolledBack
    | RoleForked
)

PAYLOAD_TYPES: tuple[type[Payload], ...] = (
    RoleCreated,
    RoleActivated,
    RoleSuspended,
    RoleResumed,
    RoleArchived,
    RoleDeleted,
    MessageAppended,
    PersonaUpdated,
    CommitRequested,
    RolledBack,
    RoleForked,
)
"""Every payload type, in schema union order."""


@dataclass(frozen=True)
class Envelope:
    event_id: uuid.UUID
    """Idempotency key: the same event sent twice is applied once."""
    tenant_id: TenantId
    role_id: RoleId
    """Kafka key: all events of a role are ordered in one partition."""
    occurred_at: datetime
    """When the producer says it happened (UTC, microseconds). The fold's only clock."""
    producer: str
    """Who wrote it: SDK name/version, service name, 'cli', ..."""
    payload: Payload
    expected_seq: int | None = None
    """Optimistic concurrency: refuse unless the role's seq equals this."""

    @property
    def event_type(self) -> str:
        return type(self.payload).__name__


@dataclass(frozen=True)
class WalPosition:
    """Where a record sits in the WAL."""

    topic: str
    partition: int
    offset: int
