"""The Avro codec: ``Envelope`` <-> Avro single-object encoding.

Wire form (Avro spec, 'Single object encoding'): ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema, then the Avro binary
body. Writers always use the current schema (``rolebus.wal.schema.current()``);
readers look the writer schema up by fingerprint and resolve it against the
current one, so events written under any kept version stay readable; then the
upcasters of ``rolebus.wal.upcast`` convert fields whose meaning changed.

Invariants: ``decode(encode(e)) == e`` for every valid envelope; ``encode`` is
deterministic (flags and trait keys are written sorted); ``decode`` either
returns an ``Envelope`` or raises ``DecodeError`` (never another exception, never
a partial result); ``encode`` raises ``SchemaError`` for values the schema cannot
hold. The payload union is written and read by record name, so payload records
with identical fields (RoleActivated, RoleSuspended, ...) are never confused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from io import BytesIO
from typing import Any, Final, cast

from fastavro import schemaless_reader, schemaless_writer

from rolebus.errors import DecodeError, SchemaError
from rolebus.wal import fastenc, schema, upcast
from rolebus.wal.canonical import to_micros
from rolebus.wal.events import (
    PAYLOAD_TYPES,
    Author,
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
    RoleResumed,
    RoleSuspended,
    RolledBack,
    ToolCall,
)

_NS: Final = schema.NAMESPACE + "."
_AUTHORS: Final[Mapping[str, Author]] = {a.value: a for a in Author}
_FLAGS: Final[Mapping[str, Flag]] = {f.value: f for f in Flag}

Datum = dict[str, Any]

# --- payload <-> Avro datum --------------------------------------------------


def _reason_datum(payload: Any) -> Datum:
    return {"reason": payload.reason}


def _created_datum(p: RoleCreated) -> Datum:
    return {
        "name": p.name,
        "persona": p.persona,
        "traits": {k: p.traits[k] for k in sorted(p.traits)},
        "model": p.model,
        "skills": p.skills,
    }


def _tool_call_datum(call: ToolCall | None) -> Datum | None:
    if call is None:
        return None
    return {"name": call.name, "arguments_json": call.arguments_json, "result": call.result}


def _message_datum(p: MessageAppended) -> Datum:
    return {
        "message_id": p.message_id,
        "author": p.author,
        "content": p.content,
        "tokens_in": p.tokens_in,
        "tokens_out": p.tokens_out,
        "latency_ms": p.latency_ms,
        "model": p.model,
        "flags": sorted(p.flags) if p.flags else (),
        "tool_call": _tool_call_datum(p.tool_call),
    }


def _persona_datum(p: PersonaUpdated) -> Datum:
    traits = None if p.traits is None else {k: p.traits[k] for k in sorted(p.traits)}
    # A list, not the tuple: inside a union fastavro reads a tuple as (branch name, value).
    skills = None if p.skills is None else list(p.skills)
    return {"persona": p.persona, "traits": traits, "model": p.model, "skills": skills}


_TO_DATUM: Final[dict[type, tuple[str, Callable[[Any], Datum]]]] = {
    RoleCreated: (_NS + "RoleCreated", _created_datum),
    RoleActivated: (_NS + "RoleActivated", _reason_datum),
    RoleSuspended: (_NS + "RoleSuspended", _reason_datum),
    RoleResumed: (_NS + "RoleResumed", _reason_datum),
    RoleArchived: (_NS + "RoleArchived", _reason_datum),
    RoleDeleted: (_NS + "RoleDeleted", _reason_datum),
    MessageAppended: (_NS + "MessageAppended", _message_datum),
    PersonaUpdated: (_NS + "PersonaUpdated", _persona_datum),
    CommitRequested: (_NS + "CommitRequested", lambda p: {"label": p.label}),
    RolledBack: (
        _NS + "RolledBack",
        lambda p: {"to_commit_id": p.to_commit_id, "reason": p.reason},
    ),
    RoleForked: (
        _NS + "RoleForked",
        lambda p: {
            "source_role_id": p.source_role_id,
            "source_commit_id": p.source_commit_id,
            "name": p.name,
        },
    ),
}


def _message_from(d: Datum) -> MessageAppended:
    call = d["tool_call"]
    return MessageAppended(
        message_id=d["message_id"],
        author=_AUTHORS[d["author"]],
        content=d["content"],
        tokens_in=d["tokens_in"],
        tokens_out=d["tokens_out"],
        latency_ms=d["latency_ms"],
        model=d["model"],
        flags=frozenset([_FLAGS[f] for f in d["flags"]]) if d["flags"] else frozenset(),
        tool_call=None if call is None else ToolCall(**call),
    )


def _created_from(d: Datum) -> RoleCreated:
    return RoleCreated(
        name=d["name"],
        persona=d["persona"],
        traits=d["traits"],
        model=d["model"],
        skills=tuple(d["skills"]),
    )


def _persona_from(d: Datum) -> PersonaUpdated:
    skills = d["skills"]
    return PersonaUpdated(
        persona=d["persona"],
        traits=d["traits"],
        model=d["model"],
        skills=None if skills is None else tuple(skills),
    )


_FROM_DATUM: Final[dict[str, Callable[[Datum], Payload]]] = {
    _NS + "RoleCreated": _created_from,
    _NS + "RoleActivated": lambda d: RoleActivated(**d),
    _NS + "RoleSuspended": lambda d: RoleSuspended(**d),
    _NS + "RoleResumed": lambda d: RoleResumed(**d),
    _NS + "RoleArchived": lambda d: RoleArchived(**d),
    _NS + "RoleDeleted": lambda d: RoleDeleted(**d),
    _NS + "MessageAppended": _message_from,
    _NS + "PersonaUpdated": _persona_from,
    _NS + "CommitRequested": lambda d: CommitRequested(**d),
    _NS + "RolledBack": lambda d: RolledBack(**d),
    _NS + "RoleForked": lambda d: RoleForked(**d),
}

# --- envelope <-> Avro datum -------------------------------------------------


def to_datum(envelope: Envelope) -> Datum:
    """The Avro datum (fastavro form) of an envelope; the payload uses tuple notation."""
    payload = envelope.payload
    try:
        name, payload_datum = _TO_DATUM[type(payload)]
    except KeyError:
        raise SchemaError(
            f"event {envelope.event_id}: payload type {type(payload).__name__} is not part "
            f"of the schema (expected one of {', '.join(t.__name__ for t in PAYLOAD_TYPES)})"
        ) from None
    return {
        "event_id": envelope.event_id,
        "tenant_id": envelope.tenant_id,
        "role_id": envelope.role_id,
        "occurred_at": to_micros(envelope.occurred_at),
        "producer": envelope.producer,
        "expected_seq": envelope.expected_seq,
        "payload": (name, payload_datum(payload)),
    }


def from_datum(datum: Datum) -> Envelope:
    """Inverse of ``to_datum`` for a datum read with ``return_record_name=True``."""
    name, payload = datum["payload"]
    return Envelope(
        event_id=datum["event_id"],
        tenant_id=datum["tenant_id"],
        role_id=datum["role_id"],
        occurred_at=datum["occurred_at"],
        producer=datum["producer"],
        payload=_FROM_DATUM[name](payload),
        expected_seq=datum["expected_seq"],
    )


# --- bytes -------------------------------------------------------------------


def current_fingerprint() -> int:
    """CRC-64-AVRO fingerprint of the schema ``encode`` writes with."""
    return schema.current().fingerprint


def encode(envelope: Envelope) -> bytes:
    """Avro single-object encoding of ``envelope`` under the current schema.

    Raises ``SchemaError`` when a value does not fit the schema (wrong type, naive
    datetime, integer out of range, ...). Validation of value rules (id formats,
    sizes) is ``rolebus.wal.validate``'s job, not the codec's. The bytes come from
    ``rolebus.wal.fastenc`` (byte-identical to fastavro's, several times faster);
    fastavro writes them when fastenc cannot handle the current schema.
    """
    fast = fastenc.current()
    if fast is not None:
        return fast(envelope)
    return _encode_with_fastavro(envelope)


def _encode_with_fastavro(envelope: Envelope) -> bytes:
    """``encode`` by fastavro: the reference, used when ``fastenc`` cannot handle the schema."""
    current = schema.current()
    datum = to_datum(envelope)
    out = BytesIO()
    out.write(current.header)
    try:
        schemaless_writer(out, current.parsed, datum)
    except Exception as exc:  # fastavro reports bad values with assorted builtin errors
        raise SchemaError(
            f"event {envelope.event_id} ({envelope.event_type}): does not fit the Avro "
            f"schema v{schema.current().version}: {type(exc).__name__}: {exc}"
        ) from exc
    return out.getvalue()


def encode_many(envelopes: Iterable[Envelope]) -> list[bytes]:
    """``encode`` for each envelope, in order."""
    return [encode(envelope) for envelope in envelopes]


def fingerprint_of(data: bytes | bytearray | memoryview) -> int:
    """The writer-schema fingerprint in a single-object header (``DecodeError`` if none)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) < schema.HEADER_SIZE:
        raise DecodeError(
            f"{len(data)} bytes is too short for an Avro single-object encoding "
            f"(header alone is {schema.HEADER_SIZE} bytes)"
        )
    if bytes(data[:2]) != schema.SINGLE_OBJECT_MAGIC:
        raise DecodeError(
            f"not an Avro single-object encoding: starts with {bytes(data[:2]).hex()} "
            f"instead of {schema.SINGLE_OBJECT_MAGIC.hex()}"
        )
    return int.from_bytes(data[2 : schema.HEADER_SIZE], "little")


def _writer_version(fingerprint: int) -> schema.SchemaVersion:
    version = schema.by_fingerprint(fingerprint)
    if version is None:
        known = ", ".join(f"v{v.version}={v.fingerprint_hex}" for v in schema.versions())
        raise DecodeError(
            f"unknown writer schema fingerprint {schema.fingerprint_hex(fingerprint)} "
            f"(CRC-64-AVRO, as in the header); known: {known}. Either the bytes are not a "
            "rolebus event or a newer rolebus wrote them with a schema this one lacks: upgrade"
        )
    return version


def decode(data: bytes | bytearray | memoryview) -> Envelope:
    """The envelope in a single-object encoding; ``DecodeError`` for anything else."""
    version = _writer_version(fingerprint_of(data))
    current = schema.current()
    reader = None if version is current else current.parsed
    body = BytesIO(data)
    body.seek(schema.HEADER_SIZE)
    try:
        datum = schemaless_reader(
            body,
            version.parsed,
            reader,
            return_record_name=True,
            return_record_name_override=True,
        )
        # Resolution fixed the shape; upcasters fix the meaning (rolebus.wal.upcast).
        resolved = upcast.SHIPPED.apply(version.version, current.version, cast(Datum, datum))
        envelope = from_datum(resolved)
    except Exception as exc:  # garbage input makes fastavro fail in many ways
        raise DecodeError(
            f"cannot decode {len(data)} bytes with writer schema v{version.version} "
            f"({version.fingerprint_hex}): {type(exc).__name__}: {exc}"
        ) from exc
    if body.tell() != len(data):
        raise DecodeError(
            f"{len(data) - body.tell()} trailing bytes after the event (read {body.tell()} "
            f"of {len(data)} bytes with writer schema v{version.version})"
        )
    return envelope


def decode_many(items: Iterable[bytes | bytearray | memoryview]) -> list[Envelope]:
    """``decode`` for each item, in order (the first failure raises)."""
    return [decode(item) for item in items]
