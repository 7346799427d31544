"""The Avro codec: round trips, single-object framing, hostile input, and an
independent decoder (Apache ``avro``) reading what ``encode`` writes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import avro.io
import avro.schema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolebus.errors import DecodeError, SchemaError
from rolebus.wal import codec, schema
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
    MESSAGE_ID_PATTERN,
    ROLE_ID_PATTERN,
    TENANT_ID_PATTERN,
    new_role_id,
    validate,
)

COMMIT = CommitId("0123456789abcdef" * 4)
WHEN = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)

MESSAGE = MessageAppended(
    message_id="m-1",
    author=Author.ASSISTANT,
    content="Bonjour, ça va ? 🙂",
    tokens_in=120,
    tokens_out=48,
    latency_ms=812,
    model="gpt-4o",
    flags=frozenset({Flag.SAFETY, Flag.HALLUCINATION}),
    tool_call=ToolCall(name="search", arguments_json='{"q": "avro"}', result="3 hits"),
)

SAMPLES: dict[type, Payload] = {
    RoleCreated: RoleCreated(
        name="Ada",
        persona="You are a patient maths tutor.",
        traits={"tone": "warm", "language": "en"},
        model="llama3:8b",
        skills=("calculator", "search"),
    ),
    RoleActivated: RoleActivated(),
    RoleSuspended: RoleSuspended(reason="billing"),
    RoleResumed: RoleResumed(reason="paid"),
    RoleArchived: RoleArchived(),
    RoleDeleted: RoleDeleted(reason="gdpr request"),
    MessageAppended: MESSAGE,
    PersonaUpdated: PersonaUpdated(persona="Now terse.", traits=None, model="gpt-4o", skills=()),
    CommitRequested: CommitRequested(label="before-launch"),
    RolledBack: RolledBack(to_commit_id=COMMIT, reason="bad answers"),
    RoleForked: RoleForked(
        source_role_id=RoleId("r-source"), source_commit_id=COMMIT, name="Ada 2"
    ),
}


def envelope(payload: Payload, **changes: Any) -> Envelope:
    base = Envelope(
        event_id=uuid.UUID("6f1c2b5e-8a4d-4c3b-9e2f-0123456789ab"),
        tenant_id=TenantId("acme"),
        role_id=RoleId("r-0f8e2d4c6b1a49578e3d2c1b0a998877"),
        occurred_at=WHEN,
        producer="rolebus-sdk/0.1",
        payload=payload,
        expected_seq=7,
    )
    return dataclasses.replace(base, **changes)


# --- strategies: every valid envelope ----------------------------------------

text = st.text(max_size=40)
names = st.text(min_size=1, max_size=40)
optional_model = st.none() | names
reasons = st.none() | text
role_ids = st.from_regex(ROLE_ID_PATTERN, fullmatch=True) | st.builds(new_role_id)
commit_ids = st.text("0123456789abcdef", min_size=64, max_size=64)
traits = st.dictionaries(st.text(min_size=1, max_size=20), text, max_size=5)
skills = st.lists(names, max_size=5).map(tuple)
json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
).map(json.dumps)
tool_calls = st.builds(ToolCall, name=names, arguments_json=json_docs, result=st.none() | text)
messages = st.builds(
    MessageAppended,
    message_id=st.from_regex(MESSAGE_ID_PATTERN, fullmatch=True),
    author=st.sampled_from(Author),
    content=st.text(min_size=1, max_size=200),
    tokens_in=st.integers(0, 2**31 - 1),
    tokens_out=st.integers(0, 2**31 - 1),
    latency_ms=st.none() | st.integers(0, 2**63 - 1),
    model=optional_model,
    flags=st.frozensets(st.sampled_from(Flag)),
    tool_call=st.none() | tool_calls,
)
payloads = st.one_of(
    st.builds(RoleCreated, names, text, traits, optional_model, skills),
    *(st.builds(kind, reasons) for kind in PAYLOAD_TYPES[1:6]),
    messages,
    st.builds(PersonaUpdated, text, st.none() | traits, optional_model, st.none() | skills),
    st.builds(CommitRequested, names),
    st.builds(RolledBack, commit_ids, reasons),
    st.builds(RoleForked, role_ids, commit_ids, names),
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
envelopes = st.builds(
    Envelope,
    event_id=st.uuids(),
    tenant_id=st.from_regex(TENANT_ID_PATTERN, fullmatch=True),
    role_id=role_ids,
    occurred_at=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
    ),
    producer=names,
    payload=payloads,
    expected_seq=st.none() | st.integers(0, 2**63 - 1),
)
fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- round trips -------------------------------------------------------------


def test_samples_cover_every_payload_type() -> None:
    assert set(SAMPLES) == set(PAYLOAD_TYPES)


@pytest.mark.parametrize("kind", PAYLOAD_TYPES, ids=lambda kind: kind.__name__)
def test_every_payload_type_round_trips(kind: type) -> None:
    event = envelope(SAMPLES[kind])
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    assert type(decoded.payload) is kind
    assert decoded.occurred_at.tzinfo is not None


def test_decoded_values_have_the_model_types() -> None:
    decoded = codec.decode(codec.encode(envelope(SAMPLES[MessageAppended], expected_seq=None)))
    assert isinstance(decoded.event_id, uuid.UUID)
    assert decoded.occurred_at == WHEN and decoded.occurred_at.utcoffset() == timedelta(0)
    assert decoded.expected_seq is None
    message = decoded.payload
    assert isinstance(message, MessageAppended)
    assert type(message.author) is Author
    assert isinstance(message.flags, frozenset) and all(type(f) is Flag for f in message.flags)
    created = codec.decode(codec.encode(envelope(SAMPLES[RoleCreated]))).payload
    assert isinstance(created, RoleCreated)
    assert isinstance(created.skills, tuple) and isinstance(created.traits, dict)


def test_payloads_with_the_same_fields_keep_their_type() -> None:
    for kind in (RoleActivated, RoleSuspended, RoleResumed, RoleArchived, RoleDeleted):
        decoded = codec.decode(codec.encode(envelope(kind(reason="same"))))
        assert type(decoded.payload) is kind


def test_persona_update_keeps_given_and_missing_collections_apart() -> None:
    for update in (
        PersonaUpdated(persona="p"),
        PersonaUpdated(persona="p", traits={}, skills=()),
        PersonaUpdated(persona="p", traits={"a": "b"}, skills=("x", "y")),
    ):
        assert codec.decode(codec.encode(envelope(update))).payload == update


@fuzz
@given(envelopes)
def test_any_valid_envelope_round_trips(event: Envelope) -> None:
    validate(event)  # the strategy only builds valid envelopes
    assert codec.decode(codec.encode(event)) == event


def test_encoding_is_deterministic() -> None:
    one = RoleCreated(name="n", persona="p", traits={"b": "2", "a": "1"})
    two = RoleCreated(name="n", persona="p", traits={"a": "1", "b": "2"})
    assert codec.encode(envelope(one)) == codec.encode(envelope(two))
    flags = [Flag.SAFETY, Flag.ERROR, Flag.REFUSAL]
    encoded = {
        codec.encode(envelope(dataclasses.replace(MESSAGE, flags=frozenset(f))))
        for f in (flags, reversed(flags))
    }
    assert len(encoded) == 1


def test_encode_many_and_decode_many_keep_order() -> None:
    events = [envelope(SAMPLES[kind]) for kind in PAYLOAD_TYPES]
    encoded = codec.encode_many(events)
    assert encoded == [codec.encode(e) for e in events]
    assert codec.decode_many(encoded) == events


def test_decode_accepts_any_bytes_like() -> None:
    data = codec.encode(envelope(SAMPLES[MessageAppended]))
    event = codec.decode(data)
    assert codec.decode(bytearray(data)) == event
    assert codec.decode(memoryview(data)) == event


# --- framing -----------------------------------------------------------------


def test_single_object_header() -> None:
    data = codec.encode(envelope(SAMPLES[RoleCreated]))
    assert data[:2] == b"\xc3\x01"
    fingerprint = int.from_bytes(data[2:10], "little")
    assert fingerprint == codec.fingerprint_of(data) == codec.current_fingerprint()
    assert fingerprint == schema.current().fingerprint
    assert data[2:10].hex() == schema.current().fingerprint_hex


def test_unknown_fingerprint_is_named() -> None:
    data = bytearray(codec.encode(envelope(SAMPLES[RoleActivated])))
    data[2:10] = bytes.fromhex("0102030405060708")
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint 0102030405060708"):
        codec.decode(bytes(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\xc3\x01\x00", "too short"),
        (b"\x00\x01" + bytes(20), "not an Avro single-object encoding: starts with 0001"),
        (b"Obj\x01" + bytes(20), "starts with 4f62"),
    ],
)
def test_bad_framing_is_a_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        codec.decode(data)


@pytest.mark.parametrize("value", [None, "c301", 42, [0xC3, 0x01]])
def test_non_bytes_is_a_decode_error(value: Any) -> None:
    with pytest.raises(DecodeError, match="expected bytes"):
        codec.decode(value)


def test_trailing_bytes_are_a_decode_error() -> None:
    data = codec.encode(envelope(SAMPLES[CommitRequested]))
    with pytest.raises(DecodeError, match="3 trailing bytes"):
        codec.decode(data + b"abc")


def test_decode_error_names_the_writer_schema() -> None:
    data = codec.encode(envelope(SAMPLES[CommitRequested]))
    with pytest.raises(
        DecodeError, match=f"writer schema v2 \\({schema.current().fingerprint_hex}"
    ):
        codec.decode(data[:-1])


@fuzz
@given(st.binary(max_size=300))
def test_garbage_raises_decode_error_only(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


@fuzz
@given(st.sampled_from([1, 2]), st.binary(max_size=300))
def test_known_header_with_garbage_body_decodes_or_raises_decode_error(
    version: int, body: bytes
) -> None:
    try:
        event = codec.decode(schema.by_version(version).header + body)
    except DecodeError:
        return
    assert isinstance(event, Envelope)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes)
def test_every_truncation_raises_decode_error(event: Envelope) -> None:
    data = codec.encode(event)
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:end])


@fuzz
@given(envelopes, st.data())
def test_corrupted_bytes_decode_or_raise_decode_error(event: Envelope, data: st.DataObject) -> None:
    raw = bytearray(codec.encode(event))
    index = data.draw(st.integers(schema.HEADER_SIZE, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        assert isinstance(codec.decode(bytes(raw)), Envelope)


# --- encode refuses what the schema cannot hold ------------------------------


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (envelope(SAMPLES[RoleActivated], occurred_at=datetime(2024, 1, 1)), "no timezone"),
        (envelope(SAMPLES[RoleActivated], expected_seq=2**63), "does not fit the Avro schema"),
        (envelope(SAMPLES[RoleActivated], tenant_id=None), "does not fit the Avro schema"),
        (envelope("not a payload"), "payload type str is not part of the schema"),  # type: ignore[arg-type]
        (envelope(MessageAppended("m", "robot", "hi")), "does not fit the Avro schema"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_values_outside_the_schema(event: Envelope, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        codec.encode(event)


# --- an independent implementation reads our bytes ---------------------------


class NamedUnionReader(avro.io.DatumReader):
    """Apache DatumReader that also reports which record branch a union holds."""

    def read_union(self, writers_schema: Any, readers_schema: Any, decoder: Any) -> Any:
        index = int(decoder.read_long())
        branch = writers_schema.schemas[index]
        value: Any = self.read_data(branch, readers_schema, decoder)
        records = [s for s in writers_schema.schemas if isinstance(s, avro.schema.RecordSchema)]
        if isinstance(branch, avro.schema.RecordSchema) and len(records) > 1:
            return {"__record__": branch.fullname, **value}
        return value


def apache_decode(data: bytes) -> dict[str, Any]:
    text = schema.current().text
    parsed = avro.schema.parse(text)
    decoder = avro.io.BinaryDecoder(io.BytesIO(data[schema.HEADER_SIZE :]))
    result = NamedUnionReader(parsed, parsed).read(decoder)
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("kind", PAYLOAD_TYPES, ids=lambda kind: kind.__name__)
def test_apache_avro_decodes_what_encode_writes(kind: type) -> None:
    event = envelope(SAMPLES[kind])
    datum = apache_decode(codec.encode(event))
    assert uuid.UUID(str(datum["event_id"])) == event.event_id
    assert (datum["tenant_id"], datum["role_id"]) == (event.tenant_id, event.role_id)
    assert datum["occurred_at"] == event.occurred_at
    assert (datum["producer"], datum["expected_seq"]) == (event.producer, event.expected_seq)
    payload = datum["payload"]
    assert payload.pop("__record__") == f"{schema.NAMESPACE}.{kind.__name__}"
    assert payload == _plain_payload(event.payload)


def _plain_payload(payload: Payload) -> dict[str, Any]:
    plain = dataclasses.asdict(payload)
    if isinstance(payload, MessageAppended):
        plain["author"] = payload.author.value
        plain["flags"] = sorted(f.value for f in payload.flags)
    for key in ("skills", "traits"):
        if isinstance(plain.get(key), tuple):
            plain[key] = list(plain[key])
        elif isinstance(plain.get(key), dict):
            plain[key] = dict(plain[key])
    return plain
