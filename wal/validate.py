"""Client-side validation: refuse a malformed event before it reaches the log.

``validate`` checks the value rules the Avro schema cannot express (id formats,
sizes, ranges, enum membership) and raises ``ValidationError(field, rule, value)``
for the first broken rule, ``field`` being the dotted path ('tenant_id',
'payload.content', 'payload.traits[tone]'). It is pure: no I/O, no clock.
The pattern constants are the single definition of id formats for all modules.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from rolebus.config import Settings
from rolebus.errors import ValidationError
from rolebus.wal.events import (
    PAYLOAD_TYPES,
    Author,
    CommitRequested,
    Envelope,
    Flag,
    MessageAppended,
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
    ToolCall,
)

# Id formats. Match with ``fullmatch``: ``re.match`` with ``$`` accepts a trailing newline.
TENANT_ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ROLE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
COMMIT_ID_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
MESSAGE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

DEFAULT_MAX_CONTENT_BYTES: Final = Settings.max_content_bytes
MAX_NAME_CHARS: Final = 200
MAX_PRODUCER_CHARS: Final = 200
MAX_MODEL_CHARS: Final = 200
MAX_REASON_CHARS: Final = 4096
MAX_PERSONA_BYTES: Final = 64 * 1024
MAX_TRAITS: Final = 100
MAX_TRAIT_KEY_CHARS: Final = 100
MAX_TRAIT_VALUE_BYTES: Final = 4 * 1024
MAX_SKILLS: Final = 100
MAX_SKILL_CHARS: Final = 100
MAX_TOKENS: Final = 2**31
MAX_LONG: Final = 2**63


def new_role_id() -> RoleId:
    """A fresh role id: 'r-' + 32 hex chars (uuid4), matching ``ROLE_ID_PATTERN``."""
    return RoleId("r-" + uuid.uuid4().hex)


def is_tenant_id(value: object) -> bool:
    return isinstance(value, str) and TENANT_ID_PATTERN.fullmatch(value) is not None


def is_role_id(value: object) -> bool:
    return isinstance(value, str) and ROLE_ID_PATTERN.fullmatch(value) is not None


def is_commit_id(value: object) -> bool:
    return isinstance(value, str) and COMMIT_ID_PATTERN.fullmatch(value) is not None


# --- building blocks ---------------------------------------------------------


def _string(field: str, value: object) -> str:
    if value is None:
        raise ValidationError(field, "is required", value)
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string", value)
    return value


def _chars(field: str, value: object, low: int, high: int) -> str:
    text = _string(field, value)
    if not text and low > 0:
        raise ValidationError(field, "must not be empty", value)
    if not low <= len(text) <= high:
        raise ValidationError(field, f"must be {low}-{high} characters (is {len(text)})", value)
    return text


def _utf8_size(field: str, text: str) -> int:
    if text.isascii():  # O(1) in CPython; ASCII has no lone surrogates, 1 byte per char
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(field, "must be valid Unicode (no lone surrogates)", text) from None


def _max_bytes(field: str, value: object, limit: int, setting: str = "") -> str:
    text = _string(field, value)
    size = _utf8_size(field, text)
    if size > limit:
        where = f" ({setting})" if setting else ""
        rule = f"must be at most {limit} bytes of UTF-8{where}; it is {size} bytes"
        raise ValidationError(field, rule, value)
    return text


def _pattern(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    text = _string(field, value)
    if pattern.fullmatch(text) is None:
        rule = f"must be {what} matching {pattern.pattern}" if text else "is required"
        raise ValidationError(field, rule, value)
    return text


def _commit_id(field: str, value: object) -> None:
    _pattern(field, value, COMMIT_ID_PATTERN, "a commit id (64 lowercase hex chars)")


def _int(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(field, "must be an integer", value)
    if not low <= value < high:
        raise ValidationError(field, f"must be >= {low} and < {high}", value)


def _optional(field: str, value: object, check: Callable[[str, object], object]) -> None:
    if value is not None:
        check(field, value)


def _model(field: str, value: object) -> None:
    if value is not None:
        _chars(field, value, 1, MAX_MODEL_CHARS)


def _reason(field: str, value: object) -> None:
    if value is not None:
        _chars(field, value, 0, MAX_REASON_CHARS)


# --- collections -------------------------------------------------------------


def _traits(field: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be a mapping of strings to strings", value)
    if len(value) > MAX_TRAITS:
        raise ValidationError(field, f"must have at most {MAX_TRAITS} traits (has {len(value)})")
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_TRAIT_KEY_CHARS:
            rule = f"keys must be strings of 1-{MAX_TRAIT_KEY_CHARS} characters"
            raise ValidationError(field, rule, key)
        _max_bytes(f"{field}[{key}]", item, MAX_TRAIT_VALUE_BYTES)


def _skills(field: str, value: object) -> None:
    if not isinstance(value, tuple):
        raise ValidationError(field, "must be a tuple of strings", value)
    if len(value) > MAX_SKILLS:
        raise ValidationError(field, f"must have at most {MAX_SKILLS} items (has {len(value)})")
    for index, item in enumerate(value):
        _chars(f"{field}[{index}]", item, 1, MAX_SKILL_CHARS)


def _flags(field: str, value: object) -> None:
    if not isinstance(value, frozenset):
        raise ValidationError(field, "must be a frozenset of Flag", value)
    for flag in value:
        if not isinstance(flag, Flag):
            allowed = ", ".join(f.value for f in Flag)
            raise ValidationError(field, f"must contain only Flag members ({allowed})", flag)


def _tool_call(field: str, call: object, max_bytes: int) -> None:
    if not isinstance(call, ToolCall):
        raise ValidationError(field, "must be a ToolCall", call)
    _chars(f"{field}.name", call.name, 1, MAX_NAME_CHARS)
    arguments = _max_bytes(f"{field}.arguments_json", call.arguments_json, max_bytes)
    try:
        json.loads(arguments)
    except ValueError as exc:
        rule = f"must be a JSON document ({exc})"
        raise ValidationError(f"{field}.arguments_json", rule, arguments) from None
    if call.result is not None:
        _max_bytes(f"{field}.result", call.result, max_bytes)


# --- payloads ----------------------------------------------------------------

_Check = Callable[[Any, int], None]


def _role_created(p: RoleCreated, max_bytes: int) -> None:
    _chars("payload.name", p.name, 1, MAX_NAME_CHARS)
    _max_bytes("payload.persona", p.persona, MAX_PERSONA_BYTES)
    _traits("payload.traits", p.traits)
    _model("payload.model", p.model)
    _skills("payload.skills", p.skills)


def _lifecycle(
    p: RoleActivated | RoleSuspended | RoleResumed | RoleArchived | RoleDeleted, max_bytes: int
) -> None:
    _reason("payload.reason", p.reason)


def _message(p: MessageAppended, max_bytes: int) -> None:
    _pattern("payload.message_id", p.message_id, MESSAGE_ID_PATTERN, "a message id")
    if not isinstance(p.author, Author):
        allowed = ", ".join(a.value for a in Author)
        raise ValidationError("payload.author", f"must be an Author ({allowed})", p.author)
    # Size first (it checks the type too): an empty string passes it, then fails here.
    if _max_bytes("payload.content", p.content, max_bytes, "max_content_bytes") == "":
        raise ValidationError("payload.content", "must not be empty", p.content)
    _int("payload.tokens_in", p.tokens_in, 0, MAX_TOKENS)
    _int("payload.tokens_out", p.tokens_out, 0, MAX_TOKENS)
    if p.latency_ms is not None:
        _int("payload.latency_ms", p.latency_ms, 0, MAX_LONG)
    _model("payload.model", p.model)
    _flags("payload.flags", p.flags)
    if p.tool_call is not None:
        _tool_call("payload.tool_call", p.tool_call, max_bytes)


def _persona(p: PersonaUpdated, max_bytes: int) -> None:
    _max_bytes("payload.persona", p.persona, MAX_PERSONA_BYTES)
    _optional("payload.traits", p.traits, _traits)
    _model("payload.model", p.model)
    _optional("payload.skills", p.skills, _skills)


def _commit_requested(p: CommitRequested, max_bytes: int) -> None:
    _chars("payload.label", p.label, 1, MAX_NAME_CHARS)


def _rolled_back(p: RolledBack, max_bytes: int) -> None:
    _commit_id("payload.to_commit_id", p.to_commit_id)
    _reason("payload.reason", p.reason)


def _forked(p: RoleForked, max_bytes: int) -> None:
    _pattern("payload.source_role_id", p.source_role_id, ROLE_ID_PATTERN, "a role id")
    _commit_id("payload.source_commit_id", p.source_commit_id)
    _chars("payload.name", p.name, 1, MAX_NAME_CHARS)


_PAYLOAD_CHECKS: Final[Mapping[type, _Check]] = {
    RoleCreated: _role_created,
    RoleActivated: _lifecycle,
    RoleSuspended: _lifecycle,
    RoleResumed: _lifecycle,
    RoleArchived: _lifecycle,
    RoleDeleted: _lifecycle,
    MessageAppended: _message,
    PersonaUpdated: _persona,
    CommitRequested: _commit_requested,
    RolledBack: _rolled_back,
    RoleForked: _forked,
}

# --- envelope ----------------------------------------------------------------


def _occurred_at(value: object) -> None:
    if not isinstance(value, datetime):
        raise ValidationError("occurred_at", "must be a datetime", value)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError("occurred_at", "must be timezone-aware (use UTC)", value)


def validate(envelope: Envelope, *, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> None:
    """Raise ``ValidationError`` for the first rule ``envelope`` breaks; else return None."""
    if not isinstance(envelope.event_id, uuid.UUID):
        raise ValidationError("event_id", "must be a uuid.UUID", envelope.event_id)
    _pattern("tenant_id", envelope.tenant_id, TENANT_ID_PATTERN, "a tenant id")
    _pattern("role_id", envelope.role_id, ROLE_ID_PATTERN, "a role id")
    _occurred_at(envelope.occurred_at)
    _chars("producer", envelope.producer, 1, MAX_PRODUCER_CHARS)
    if envelope.expected_seq is not None:
        _int("expected_seq", envelope.expected_seq, 0, MAX_LONG)
    check = _PAYLOAD_CHECKS.get(type(envelope.payload))
    if check is None:
        names = ", ".join(t.__name__ for t in PAYLOAD_TYPES)
        raise ValidationError("payload", f"must be one of {names}", envelope.payload)
    check(envelope.payload, max_content_bytes)
