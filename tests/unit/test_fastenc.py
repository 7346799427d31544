"""The specialised encoder (rolebus.wal.fastenc) against the reference, fastavro:
byte-identical output for every envelope the schema holds, round trips, the
SchemaError contract for values it cannot hold, and the fallback to fastavro."""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import operator
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from types import MappingProxyType
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolebus.errors import SchemaError
from rolebus.wal import codec, fastenc, schema
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


def reference(event: Envelope) -> bytes:
    """What the codec wrote before fastenc: fastavro's schemaless_writer."""
    current = schema.current()
    out = io.BytesIO()
    out.write(current.header)
    schemaless_writer(out, current.parsed, codec.to_datum(event))
    return out.getvalue()


def fast(event: Envelope) -> bytes:
    encoder = fastenc.current()
    assert encoder is not None
    return encoder(event)


COMMIT = CommitId("0123456789abcdef" * 4)
WHEN = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
MESSAGE = MessageAppended(
    message_id="m-1",
    author=Author.ASSISTANT,
    content="turn: " + "the quick brown fox jumps over the lazy dog " * 4,
    tokens_in=120,
    tokens_out=48,
    latency_ms=420,
    model="llama3:8b",
    flags=frozenset({Flag.HALLUCINATION}),
)
SAMPLES: dict[type, Payload] = {
    RoleCreated: RoleCreated("Ada", "tutor", {"tone": "warm", "lang": "en"}, "m", ("a", "b")),
    RoleActivated: RoleActivated(),
    RoleSuspended: RoleSuspended(reason="billing"),
    RoleResumed: RoleResumed(reason="paid"),
    RoleArchived: RoleArchived(),
    RoleDeleted: RoleDeleted(reason="gdpr"),
    MessageAppended: dataclasses.replace(
        MESSAGE,
        flags=frozenset({Flag.SAFETY, Flag.ERROR}),
        tool_call=ToolCall("search", '{"q": "avro"}', "3 hits"),
    ),
    PersonaUpdated: PersonaUpdated(persona="terse", traits={}, skills=()),
    CommitRequested: CommitRequested(label="v1"),
    RolledBack: RolledBack(to_commit_id=COMMIT, reason="bad"),
    RoleForked: RoleForked(RoleId("r-src"), COMMIT, "Ada 2"),
}


def envelope(payload: Any = MESSAGE, **changes: Any) -> Envelope:
    base = Envelope(
        event_id=uuid.UUID("6f1c2b5e-8a4d-4c3b-9e2f-0123456789ab"),
        tenant_id=TenantId("acme"),
        role_id=RoleId("r-1"),
        occurred_at=WHEN,
        producer="rolebus-sdk/0.1.0",
        payload=payload,
        expected_seq=7,
    )
    return dataclasses.replace(base, **changes)


def message(**changes: Any) -> Envelope:
    return envelope(dataclasses.replace(MESSAGE, **changes))


# --- strategies: every envelope the schema can hold --------------------------
# Wider than validate() allows (any long, empty strings, years 2..9998): fastenc
# must match fastavro on everything the codec accepts, not only on valid events.

EDGE_LONGS = [0, 1, -1, 63, 64, -64, -65, 1023, 1024, 8191, 8192, -8193, 2**31, 2**63 - 1, -(2**63)]
longs = st.sampled_from(EDGE_LONGS) | st.integers(-(2**63), 2**63 - 1) | st.integers(-100, 3000)
short_text = st.text(max_size=30)
# Repeated text: cheap strings past the pre-encoded length table (1024 bytes) and
# past two-byte lengths (8192 bytes).
long_text = st.builds(operator.mul, st.text(min_size=1, max_size=4), st.integers(200, 3000))
text = st.one_of(short_text, short_text, long_text)
optional_text = st.none() | text
string_maps = st.dictionaries(short_text, text, max_size=5)
traits = string_maps | string_maps.map(MappingProxyType)
skills = st.lists(short_text, max_size=5).map(tuple)
tool_calls = st.builds(ToolCall, short_text, text, optional_text)
messages = st.builds(
    MessageAppended,
    message_id=short_text,
    author=st.sampled_from(Author),
    content=text,
    tokens_in=longs,
    tokens_out=longs,
    latency_ms=st.none() | longs,
    model=optional_text,
    flags=st.frozensets(st.sampled_from(Flag)),
    tool_call=st.none() | tool_calls,
)
payloads = st.one_of(
    st.builds(RoleCreated, short_text, text, traits, optional_text, skills),
    *(st.builds(kind, optional_text) for kind in PAYLOAD_TYPES[1:6]),
    messages,
    messages,
    st.builds(PersonaUpdated, text, st.none() | traits, optional_text, st.none() | skills),
    st.builds(CommitRequested, short_text),
    st.builds(RolledBack, short_text, optional_text),
    st.builds(RoleForked, short_text, short_text, short_text),
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8, minutes=1))]
)
envelopes = st.builds(
    Envelope,
    event_id=st.uuids(),
    tenant_id=short_text,
    role_id=short_text,
    occurred_at=st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=zones
    ),
    producer=short_text,
    payload=payloads,
    expected_seq=st.none() | longs,
)


# --- the fast encoder is the one in use --------------------------------------


def test_the_current_schema_gets_a_fast_encoder() -> None:
    assert fastenc.current() is not None


def test_codec_encode_does_not_call_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> None:
        raise AssertionError("fastavro used")

    monkeypatch.setattr(codec, "schemaless_writer", boom)
    assert codec.encode(envelope()) == reference(envelope())


# --- byte identity with fastavro ---------------------------------------------


@pytest.mark.parametrize("kind", PAYLOAD_TYPES, ids=lambda kind: kind.__name__)
def test_every_payload_type_is_byte_identical(kind: type) -> None:
    event = envelope(SAMPLES[kind])
    assert fast(event) == reference(event)
    assert codec.decode(fast(event)) == event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes)
def test_any_envelope_is_byte_identical_and_round_trips(event: Envelope) -> None:
    data = fast(event)
    assert data == reference(event)
    assert codec.decode(data) == event


@pytest.mark.parametrize("value", EDGE_LONGS)
def test_long_edges(value: int) -> None:
    for event in (
        envelope(expected_seq=value),
        message(tokens_in=value, tokens_out=-value - 1, latency_ms=value),
    ):
        assert fast(event) == reference(event)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 1023, 1024, 8191, 8192, 70_000])
def test_string_length_edges(size: int) -> None:
    for content in ("x" * size, "é" * size):
        event = message(content=content, model=content or None)
        assert fast(event) == reference(event)


def test_timestamps_reusing_and_crossing_the_cached_high_bits() -> None:
    # The zigzagged micros' groups above bit 21 change every ~1.05 s; the encoder
    # reuses the previous event's: go back and forth across such boundaries.
    moments = [WHEN + timedelta(microseconds=step * 37_013) for step in range(-80, 80)]
    moments += [datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=m) for m in
                (0, 1, -1, 2**20 - 1, 2**20, -(2**20), -(2**20) - 1, 10**6, -(10**6))]  # fmt: skip
    moments += [WHEN, datetime(1, 1, 2, tzinfo=UTC), WHEN, datetime(9999, 12, 30, tzinfo=UTC)]
    for moment in moments:
        event = envelope(occurred_at=moment)
        assert fast(event) == reference(event), moment


def test_enum_values_as_plain_strings_and_other_str_enums() -> None:
    class Loud(enum.StrEnum):
        USER = "user"

    for author in ("assistant", Author.ASSISTANT, "user", Loud.USER, Author.USER):
        event = message(author=author)
        assert fast(event) == reference(event)
    assert fast(message(author="tool")) == fast(message(author=Author.TOOL))


def test_flags_and_trait_keys_are_written_sorted() -> None:
    flags = [Flag.SAFETY, Flag.ERROR, Flag.REFUSAL, Flag.HALLUCINATION]
    one = message(flags=frozenset(flags))
    two = message(flags=frozenset(reversed(flags)))
    assert fast(one) == fast(two) == reference(one)
    traits = {"b": "2", "a": "1", "é": "3", "Z": "4"}
    created = envelope(RoleCreated("n", "p", traits))
    assert fast(created) == reference(created)
    assert fast(created) == fast(envelope(RoleCreated("n", "p", dict(sorted(traits.items())))))


def test_str_and_int_subclasses_are_written_as_their_value() -> None:
    class Seq(enum.IntEnum):
        SEVEN = 7

    event = envelope(tenant_id=TenantId("acme"), role_id=Author.USER, expected_seq=Seq.SEVEN)
    assert fast(event) == reference(event)


def test_the_generated_source_covers_every_record() -> None:
    text = fastenc.source()
    compile(text, "<fastenc>", "exec")
    for name in ("Envelope", "ToolCall", *(kind.__name__ for kind in PAYLOAD_TYPES)):
        assert f"def _write_{name}(buf, obj):" in text


# --- values the schema cannot hold -------------------------------------------


class NoOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


class Activated2(RoleActivated):
    pass


BAD: list[tuple[str, Callable[[], Any], str]] = [
    (
        "not an envelope",
        lambda: "hello",
        "str value: does not fit the Avro schema v2: must be an instance of Envelope",
    ),
    ("event_id str", lambda: envelope(event_id=str(uuid.uuid4())), "event_id must be a uuid"),
    ("event_id None", lambda: envelope(event_id=None), "event_id must be a uuid"),
    ("tenant None", lambda: envelope(tenant_id=None), "tenant_id must be a string"),
    ("tenant bytes", lambda: envelope(tenant_id=b"acme"), "tenant_id must be a string"),
    ("producer int", lambda: envelope(producer=3), "producer must be a string"),
    ("naive", lambda: envelope(occurred_at=datetime(2024, 1, 1)), "no timezone"),
    ("no offset", lambda: envelope(occurred_at=datetime(2024, 1, 1, tzinfo=NoOffset())), "no UTC"),
    ("time int", lambda: envelope(occurred_at=1_700_000_000), "occurred_at must be a timezone"),
    ("seq 2**63", lambda: envelope(expected_seq=2**63), "expected_seq must be an Avro long"),
    ("seq -2**63-1", lambda: envelope(expected_seq=-(2**63) - 1), "must be an Avro long"),
    ("seq bool", lambda: envelope(expected_seq=True), "expected_seq must be an integer"),
    ("seq float", lambda: envelope(expected_seq=1.0), "expected_seq must be an integer"),
    ("seq str", lambda: envelope(expected_seq="1"), "expected_seq must be an integer"),
    ("payload str", lambda: envelope("not a payload"), "payload type str is not part of the"),
    ("payload None", lambda: envelope(None), "payload type NoneType is not part of the schema"),
    ("payload subclass", lambda: envelope(Activated2()), "payload type Activated2 is not"),
    ("tokens 2**63", lambda: message(tokens_in=2**63), "payload.tokens_in must be an Avro long"),
    ("tokens bool", lambda: message(tokens_out=False), "payload.tokens_out must be an integer"),
    ("latency big", lambda: message(latency_ms=-(2**64)), "payload.latency_ms must be an Avro"),
    ("author", lambda: message(author="robot"), "payload.author must be a symbol of enum"),
    ("author int", lambda: message(author=1), "payload.author must be a symbol of enum"),
    ("author list", lambda: message(author=[]), "payload.author must be a symbol of enum"),
    ("surrogate", lambda: message(content="ok \ud800"), "payload.content must be valid Unicode"),
    ("flag", lambda: message(flags=frozenset({"nope"})), r"payload.flags\[0\] must be a symbol"),
    ("flags str", lambda: message(flags="error"), "payload.flags must be a tuple, list or set"),
    ("flags mixed", lambda: message(flags=frozenset({1, "a"})), "payload.flags must hold"),
    (
        "tool call",
        lambda: message(tool_call="search"),
        "payload.tool_call must be an instance of ToolCall",
    ),
    (
        "tool result",
        lambda: message(tool_call=ToolCall("n", "{}", result=5)),
        "payload.tool_call.result must be a string",
    ),
    ("traits", lambda: envelope(RoleCreated("n", "p", "tone")), "payload.traits must be a map"),
    ("trait key", lambda: envelope(RoleCreated("n", "p", {1: "a"})), "keys must be strings"),
    (
        "trait value",
        lambda: envelope(RoleCreated("n", "p", {"tone": 1})),
        r"payload.traits\[tone\] must be a string",
    ),
    (
        "skill",
        lambda: envelope(RoleCreated("n", "p", skills=("ok", None))),
        r"payload.skills\[1\] must be a string",
    ),
    (
        "persona skills",
        lambda: envelope(PersonaUpdated("p", skills=("ok", 3))),
        r"payload.skills\[1\] must be a string",
    ),
    (
        "persona traits",
        lambda: envelope(PersonaUpdated("p", traits={"k": "\udfff"})),
        r"payload.traits\[k\] must be valid Unicode",
    ),
]


@pytest.mark.parametrize(("make", "message_"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_values_outside_the_schema_raise_schema_error(
    make: Callable[[], Any], message_: str
) -> None:
    event = make()
    with pytest.raises(SchemaError, match=message_) as raised:
        codec.encode(event)
    assert "does not fit the Avro schema v" in str(raised.value)


def test_a_failed_encode_leaves_the_encoder_usable() -> None:
    with pytest.raises(SchemaError):
        codec.encode(message(author="robot"))
    assert fast(envelope()) == reference(envelope())


# --- schemas fastenc cannot handle: fastavro takes over ----------------------


def _edited_schema(edit: Callable[[dict[str, Any]], None]) -> schema.SchemaVersion:
    raw = json.loads(schema.current().text)
    edit(raw)
    return schema.build_version(99, json.dumps(raw))


def _field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(field for field in raw["fields"] if field["name"] == name)


def test_unsupported_types_are_reported() -> None:
    version = _edited_schema(lambda raw: _field(raw, "producer").update(type="bytes"))
    with pytest.raises(fastenc.Unsupported, match="bytes"):
        fastenc.build(version)
    version = _edited_schema(
        lambda raw: _field(raw, "occurred_at").update(
            type={"type": "long", "logicalType": "timestamp-millis"}
        )
    )
    with pytest.raises(fastenc.Unsupported, match="timestamp-millis"):
        fastenc.build(version)


def test_schema_and_dataclass_drift_is_reported() -> None:
    version = _edited_schema(lambda raw: raw["fields"].remove(_field(raw, "producer")))
    with pytest.raises(fastenc.Unsupported, match="drifted apart"):
        fastenc.build(version)


def test_without_a_fast_encoder_codec_writes_with_fastavro(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastenc, "current", lambda: None)
    for kind in PAYLOAD_TYPES:
        event = envelope(SAMPLES[kind])
        assert codec.encode(event) == reference(event)
    with pytest.raises(SchemaError, match="does not fit the Avro schema"):
        codec.encode(envelope(expected_seq=2**63))
