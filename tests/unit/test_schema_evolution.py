"""The schema registry and the evolution policy (schemas/EVOLUTION.md): every kept
version stays readable under the current one, fingerprints agree with the Avro
spec and with independent implementations, and consecutive versions obey the rules."""

from __future__ import annotations

import io
import itertools
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as fastavro_fingerprint
from hypothesis import given, settings
from hypothesis import strategies as st

from rolebus.errors import SchemaError
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

GOLDEN = Path(__file__).parent / "fixtures" / "golden_events.json"
GOLDEN_TIME = datetime(2024, 3, 9, 8, 7, 6, 543210, tzinfo=UTC)
COMMIT = CommitId("fedcba9876543210" * 4)

# Payloads schema v1 can express: no tool_call, no 'safety' flag.
V1_PAYLOADS: dict[type, Payload] = {
    RoleCreated: RoleCreated("Old", "persona", {"k": "v"}, "m", ("s1", "s2")),
    RoleActivated: RoleActivated(),
    RoleSuspended: RoleSuspended("r"),
    RoleResumed: RoleResumed(),
    RoleArchived: RoleArchived("r"),
    RoleDeleted: RoleDeleted(),
    MessageAppended: MessageAppended(
        "m-1", Author.USER, "hi", 1, 2, 3, "m", frozenset({Flag.ERROR, Flag.HALLUCINATION})
    ),
    PersonaUpdated: PersonaUpdated("p", {"a": "b"}, None, ("x",)),
    CommitRequested: CommitRequested("tag"),
    RolledBack: RolledBack(COMMIT, None),
    RoleForked: RoleForked(RoleId("r-src"), COMMIT, "fork"),
}


def golden(event_id: str, payload: Payload, expected_seq: int | None = None) -> Envelope:
    return Envelope(
        event_id=uuid.UUID(event_id),
        tenant_id=TenantId("acme"),
        role_id=RoleId("r-golden"),
        occurred_at=GOLDEN_TIME,
        producer="golden/1",
        payload=payload,
        expected_seq=expected_seq,
    )


GOLDEN_EVENTS = {
    "v1-message-appended": golden(
        "11111111-2222-4333-8444-555555555555",
        MessageAppended(
            "m-7",
            Author.ASSISTANT,
            "Hello from schema v1",
            12,
            34,
            560,
            "llama3:8b",
            frozenset({Flag.REFUSAL, Flag.TOOL_ERROR}),
        ),
        3,
    ),
    "v1-role-created": golden(
        "11111111-2222-4333-8444-666666666666",
        RoleCreated("Golden", "You are golden.", {"tone": "calm"}, None, ("search",)),
    ),
    "v2-message-appended": golden(
        "22222222-3333-4444-8555-666666666666",
        MessageAppended(
            "m-8",
            Author.TOOL,
            '{"hits": 3}',
            flags=frozenset({Flag.SAFETY}),
            tool_call=ToolCall("search", '{"q": "golden"}', "3 hits"),
        ),
        4,
    ),
}


def write_single_object(version: int, datum: dict[str, Any]) -> bytes:
    """What a v<version> producer wrote: fastavro directly, with that writer schema."""
    writer = schema.by_version(version)
    out = io.BytesIO()
    out.write(writer.header)
    schemaless_writer(out, writer.parsed, datum)
    return out.getvalue()


# --- the registry ------------------------------------------------------------


def test_versions_are_kept_and_current_is_v2() -> None:
    versions = schema.versions()
    assert [v.version for v in versions] == [1, 2]
    assert schema.current() is versions[-1] is schema.by_version(2)
    assert len({v.fingerprint for v in versions}) == len(versions)
    for version in versions:
        assert schema.by_fingerprint(version.fingerprint) is version
    assert schema.by_fingerprint(0) is None


def test_top_level_envelope_is_the_current_version() -> None:
    shipped = resources.files(schema.SCHEMA_PACKAGE).joinpath(schema.ENVELOPE_FILE)
    assert shipped.read_text(encoding="utf-8") == schema.current().text


def test_unknown_version_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"schema version 3 does not exist \(known: 1..2\)"):
        schema.by_version(3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        (
            '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}',
            "not a valid Avro",
        ),
        ('"string"', "must be a record"),
    ],
)
def test_bad_schema_text_is_a_schema_error(text: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        schema.build_version(9, text, "test.avsc")


# --- fingerprints: spec, fastavro and Apache avro agree ----------------------


def spec_crc64_avro(data: bytes) -> int:
    """Transcription of the Avro specification's CRC-64-AVRO reference code."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("version", [1, 2])
def test_fingerprint_agrees_with_the_spec_and_other_implementations(version: int) -> None:
    kept = schema.by_version(version)
    canonical = kept.canonical_form.encode("utf-8")
    assert kept.fingerprint == spec_crc64_avro(canonical)
    wire = kept.fingerprint.to_bytes(8, "little")
    assert fastavro_fingerprint(kept.canonical_form, "CRC-64-AVRO") == wire.hex()
    # Apache's canonical form of the full .avsc keeps {"type": "string"} where a
    # logicalType was stripped (the spec and Java write "string"), so compare on our
    # canonical form: Apache must find it canonical and fingerprint it the same.
    apache = avro.schema.parse(kept.canonical_form)
    assert apache.canonical_form == kept.canonical_form
    assert apache.fingerprint("CRC-64-AVRO") == wire
    assert kept.header == b"\xc3\x01" + wire


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=64))
def test_crc64_avro_matches_fastavro(text: str) -> None:
    expected = fastavro_fingerprint(text, "CRC-64-AVRO")
    assert schema.crc64_avro(text.encode("utf-8")).to_bytes(8, "little").hex() == expected


# --- old bytes decode under the current schema -------------------------------


def v1_envelope(payload: Payload) -> Envelope:
    return Envelope(
        event_id=uuid.uuid4(),
        tenant_id=TenantId("acme"),
        role_id=RoleId("r-old"),
        occurred_at=GOLDEN_TIME,
        producer="sdk/0.0.1",
        payload=payload,
        expected_seq=1,
    )


@pytest.mark.parametrize("kind", PAYLOAD_TYPES, ids=lambda kind: kind.__name__)
def test_v1_bytes_decode_under_the_current_schema(kind: type) -> None:
    event = v1_envelope(V1_PAYLOADS[kind])
    datum = codec.to_datum(event)
    if kind is MessageAppended:
        del datum["payload"][1]["tool_call"]  # v1 has no such field
    data = write_single_object(1, datum)
    assert codec.fingerprint_of(data) == schema.by_version(1).fingerprint
    assert codec.fingerprint_of(data) != codec.current_fingerprint()
    assert codec.decode(data) == event


def test_v1_message_gets_the_default_tool_call() -> None:
    event = v1_envelope(V1_PAYLOADS[MessageAppended])
    decoded = codec.decode(write_single_object(1, codec.to_datum(event))).payload
    assert isinstance(decoded, MessageAppended)
    assert decoded.tool_call is None
    assert decoded.flags == frozenset({Flag.ERROR, Flag.HALLUCINATION})


def golden_items() -> Iterator[tuple[str, int, bytes]]:
    entries = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for name, entry in entries.items():
        if not name.startswith("_"):
            yield name, entry["schema_version"], bytes.fromhex(entry["hex"])


def test_every_golden_event_is_known() -> None:
    assert {name for name, _, _ in golden_items()} == set(GOLDEN_EVENTS)


@pytest.mark.parametrize(("name", "version", "data"), list(golden_items()))
def test_golden_bytes_still_decode(name: str, version: int, data: bytes) -> None:
    assert codec.fingerprint_of(data) == schema.by_version(version).fingerprint
    assert codec.decode(data) == GOLDEN_EVENTS[name]
    if version == schema.current().version:  # the writer still produces them
        assert codec.encode(GOLDEN_EVENTS[name]) == data


def test_apache_avro_resolves_v1_bytes_against_the_current_schema() -> None:
    event = v1_envelope(V1_PAYLOADS[MessageAppended])
    data = write_single_object(1, codec.to_datum(event))
    writer = avro.schema.parse(schema.by_version(1).text)
    reader = avro.schema.parse(schema.current().text)
    body = avro.io.BinaryDecoder(io.BytesIO(data[schema.HEADER_SIZE :]))
    datum = avro.io.DatumReader(writer, reader).read(body)
    assert isinstance(datum, dict)
    assert datum["payload"]["tool_call"] is None
    assert datum["payload"]["flags"] == ["error", "hallucination"]


def test_v1_reader_reads_v2_bytes_with_enum_default() -> None:
    """Forward compatibility: an old consumer reads new events; unknown symbols
    become the enum's default and new fields are skipped."""
    data = codec.encode(GOLDEN_EVENTS["v2-message-appended"])
    body = io.BytesIO(data[schema.HEADER_SIZE :])
    old = schema.by_version(1).parsed
    datum = schemaless_reader(body, schema.current().parsed, old, return_record_name=True)
    assert isinstance(datum, dict)
    name, payload = datum["payload"]
    assert name == f"{schema.NAMESPACE}.MessageAppended"
    assert payload["flags"] == ["error"]  # 'safety' is unknown to v1: Flag's default
    assert "tool_call" not in payload


# --- the evolution policy, checked on every pair of consecutive versions -----


def named_types(node: Any, found: dict[str, dict[str, Any]], namespace: str = "") -> None:
    """Collect record/enum/fixed definitions of a raw .avsc by full name."""
    if isinstance(node, list):
        for item in node:
            named_types(item, found, namespace)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            namespace = node.get("namespace", namespace)
            found[f"{namespace}.{node['name']}"] = node
        for key in ("type", "items", "values", "fields"):
            if key in node:
                named_types(node[key], found, namespace)


def shape(node: Any, namespace: str) -> Any:
    """A type with named definitions replaced by their names, docs and defaults dropped."""
    if isinstance(node, list):
        return [shape(item, namespace) for item in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            return f"{node.get('namespace', namespace)}.{node['name']}"
        return {k: shape(v, namespace) for k, v in node.items() if k not in ("doc", "default")}
    return node


def raw_versions() -> list[dict[str, dict[str, Any]]]:
    result = []
    for version in schema.versions():
        found: dict[str, dict[str, Any]] = {}
        named_types(json.loads(version.text), found)
        result.append(found)
    return result


def test_consecutive_versions_follow_the_evolution_policy() -> None:
    kept = raw_versions()
    for old, new in itertools.pairwise(kept):
        assert set(old) <= set(new), "named types are never removed or renamed"
        for name, before in old.items():
            after = new[name]
            assert before["type"] == after["type"], f"{name} changed kind"
            if before["type"] == "enum":
                count = len(before["symbols"])
                assert after["symbols"][:count] == before["symbols"], f"{name}: append only"
            if before["type"] == "record":
                check_record_evolution(name, before, after)


def check_record_evolution(name: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    namespace = name.rsplit(".", 1)[0]
    old_fields = {f["name"]: f for f in before["fields"]}
    for field in after["fields"]:
        aliases = {field["name"], *field.get("aliases", ())}
        previous = [old_fields[a] for a in aliases if a in old_fields]
        if not previous:
            assert "default" in field, f"{name}.{field['name']}: a new field needs a default"
            continue
        old_shape = shape(previous[0]["type"], namespace)
        assert shape(field["type"], namespace) == old_shape, f"{name}.{field['name']} retyped"
    kept = {a for f in after["fields"] for a in (f["name"], *f.get("aliases", ()))}
    assert set(old_fields) <= kept, f"{name}: fields are never removed"


def test_every_enum_has_a_default_and_everything_is_documented() -> None:
    for definition in raw_versions()[-1].values():
        assert definition.get("doc"), f"{definition['name']} has no doc"
        if definition["type"] == "enum":
            assert definition.get("default") in definition["symbols"]
        for field in definition.get("fields", ()):
            assert field.get("doc"), f"{definition['name']}.{field['name']} has no doc"


def test_v1_really_lacks_what_v2_added() -> None:
    v1, v2 = raw_versions()
    ns = schema.NAMESPACE
    assert f"{ns}.ToolCall" not in v1 and f"{ns}.ToolCall" in v2
    assert "safety" not in v1[f"{ns}.Flag"]["symbols"]
    assert "safety" in v2[f"{ns}.Flag"]["symbols"]
    old_fields = {f["name"] for f in v1[f"{ns}.MessageAppended"]["fields"]}
    assert "tool_call" not in old_fields


@pytest.mark.parametrize(
    ("after_fields", "message"),
    [
        ([{"name": "a", "type": "string"}, {"name": "b", "type": "long"}], "needs a default"),
        ([{"name": "a", "type": "long"}], "retyped"),
        ([{"name": "z", "type": "string", "default": ""}], "never removed"),
    ],
)
def test_policy_check_catches_violations(after_fields: list[Any], message: str) -> None:
    before = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    after = {**before, "fields": after_fields}
    with pytest.raises(AssertionError, match=message):
        check_record_evolution("io.rolebus.wal.R", before, after)
