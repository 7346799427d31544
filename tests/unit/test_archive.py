"""The WAL export format (rolebus.wal.archive): rows keep every record's exact
bytes through a real Avro container file, any Avro library reads the events,
and the filters keep what they say."""

from __future__ import annotations

import io
import json
import uuid
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import avro.datafile
import avro.io
import fastavro
import pytest
from fastavro import schemaless_writer

from rolebus.errors import ConfigError, DecodeError
from rolebus.wal import archive, codec, export, schema
from rolebus.wal.archive import Filters
from rolebus.wal.events import (
    Author,
    Envelope,
    Flag,
    MessageAppended,
    RoleCreated,
    RoleId,
    TenantId,
    WalPosition,
)
from rolebus.wal.reader import WalRecord

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def envelope(n: int, tenant: str = "acme", when: datetime = T0) -> Envelope:
    payload = (
        RoleCreated("R", "p", {"b": "2", "a": "1"}, "m", ("s",))
        if n == 0
        else MessageAppended(f"m-{n}", Author.USER, "hi", 1, 2, None, None, frozenset({Flag.ERROR}))
    )
    return Envelope(
        event_id=uuid.UUID(int=n + 1), tenant_id=TenantId(tenant), role_id=RoleId("r-1"),
        occurred_at=when, producer="test", payload=payload,
    )  # fmt: skip


def record(offset: int, value: bytes, key: bytes | None = b"r-1", ts: int = 1000) -> WalRecord:
    env, err = None, None
    try:
        env = codec.decode(value)
    except Exception as exc:  # the DecodeError WalRecord.from_kafka would keep
        err = exc
    headers = (("traceparent", b"00-abc"), ("empty", b""))
    pos = WalPosition("x.wal", 2, offset)
    return WalRecord(pos, key, value, headers, ts, env, err)  # type: ignore[arg-type]


def v1_bytes(env: Envelope) -> bytes:
    """What a schema-v1 producer wrote: fastavro with the v1 .avsc."""
    datum = codec.to_datum(env)
    datum["payload"][1].pop("tool_call", None)
    old = schema.by_version(1)
    out = io.BytesIO(old.header)
    out.seek(0, io.SEEK_END)
    schemaless_writer(out, old.parsed, datum)
    return out.getvalue()


UNKNOWN_FP = b"\xc3\x01" + bytes(range(8)) + b"\x02body"


def sample() -> list[WalRecord]:
    return [
        record(0, codec.encode(envelope(0))),
        record(1, codec.encode(envelope(1))),
        record(2, v1_bytes(envelope(2))),
        record(3, b"\x00 definitely not avro", key=None),
        record(4, UNKNOWN_FP),
    ]


def write_file(path: Path, recs: list[WalRecord]) -> None:
    parsed = fastavro.parse_schema(json.loads(archive.container_schema_json()))
    with path.open("wb") as fo:
        fastavro.writer(fo, parsed, [archive.to_row(r) for r in recs], codec="deflate")


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as fo:
        return list(fastavro.reader(fo, return_record_name=True, return_record_name_override=True))


def test_rows_give_back_the_exact_bytes_through_a_container_file(tmp_path: Path) -> None:
    recs = sample()
    write_file(tmp_path / "p.avro", recs)
    rows = read_rows(tmp_path / "p.avro")
    assert [archive.record_value(row, schema.current()) for row in rows] == [r.value for r in recs]
    # Current-version events are stored once (as the event), the rest keep their bytes.
    assert [row["original"] is None for row in rows] == [True, True, False, False, False]
    assert [row["writer_version"] for row in rows] == [2, 2, 1, None, None]
    assert rows[4]["writer_fingerprint"] == bytes(range(8)).hex()
    assert rows[2]["event"]["payload"][1]["message_id"] == "m-2"  # v1 read as current
    assert rows[3]["event"] is None and "not an Avro single-object" in rows[3]["error"]
    assert rows[0]["headers"] == [
        {"name": "traceparent", "value": b"00-abc"},
        {"name": "empty", "value": b""},
    ]
    assert rows[3]["key"] is None and rows[0]["timestamp_ms"] == 1000


def test_apache_avro_reads_the_events(tmp_path: Path) -> None:
    write_file(tmp_path / "p.avro", sample())
    with (tmp_path / "p.avro").open("rb") as fo:
        reader = avro.datafile.DataFileReader(fo, avro.io.DatumReader())
        rows = list(reader)
    assert [r["offset"] for r in rows] == [0, 1, 2, 3, 4]
    created = rows[0]["event"]
    assert created["role_id"] == "r-1" and created["tenant_id"] == "acme"
    assert created["payload"]["persona"] == "p" and created["payload"]["traits"] == {
        "a": "1",
        "b": "2",
    }
    assert rows[1]["event"]["payload"]["flags"] == ["error"]
    assert rows[3]["event"] is None and rows[3]["original"] == b"\x00 definitely not avro"


def test_content_hash_covers_every_field() -> None:
    def digest(**change: Any) -> str:
        fields = {"offset": 1, "timestamp_ms": 2, "key": b"k", "headers": [("h", b"v")]}
        fields.update(change)
        tally = archive.PartitionTally(0)
        tally.add(value=b"v", decoded=True, **fields)
        return archive.content_sha256({0: tally.sha256})

    base = digest()
    assert archive.PartitionTally(3).entry().file == "wal-p0003.avro"
    changed = [
        digest(offset=9), digest(timestamp_ms=9), digest(key=None), digest(key=b""),
        digest(headers=[]), digest(headers=[("h", None)]), digest(headers=[("hv", b"")]),
    ]  # fmt: skip
    assert base == digest() and base not in changed and len(set(changed)) == len(changed)


def test_filters() -> None:
    early, late = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    recs = [
        record(0, codec.encode(envelope(1, "acme", early))),
        record(1, codec.encode(envelope(2, "other", T0))),
        record(2, codec.encode(envelope(3, "acme", late))),
        record(3, b"garbage", ts=int(T0.timestamp() * 1000)),
    ]

    def kept(f: Filters) -> list[int]:
        return [r.position.offset for r in recs if f.admits(r)]

    assert kept(Filters()) == [0, 1, 2, 3]
    assert kept(Filters(tenant="acme")) == [0, 2]  # undecodable: no tenant
    assert kept(Filters(since=T0)) == [1, 2, 3]  # garbage by its record time
    assert kept(Filters(until=T0)) == [0]
    assert kept(Filters(since=T0, until=late, tenant="other")) == [1]
    with pytest.raises(ConfigError, match="time zone"):
        Filters(since=datetime(2026, 1, 1))
    with pytest.raises(ConfigError, match="not before"):
        Filters(since=late, until=early)


def test_manifest_round_trip_and_refusals() -> None:
    manifest = archive.Manifest(
        export_id="e", source_topic="x.wal", source_partitions=4, envelope_version=2,
        envelope_fingerprint=schema.current().fingerprint_hex, filters=Filters().as_json(),
        partitions=(archive.PartitionTally(1).entry(),), records=0, undecodable=0, filtered_out=0,
        time_range={"first": None, "last": None}, content_sha256="0", created_at="now",
    )  # fmt: skip
    assert archive.Manifest.from_json(manifest.to_json(), "m") == manifest
    with pytest.raises(ConfigError, match="format 'other/9'"):
        archive.Manifest.from_json('{"format": "other/9"}', "m")
    with pytest.raises(ConfigError, match="not a rolebus export manifest"):
        archive.Manifest.from_json("[1]", "m")


def test_export_folder_round_trip_without_kafka(tmp_path: Path) -> None:
    """What export writes, import reads back: the same bytes, each partition in
    offset order; a damaged or unfinished export is refused."""
    recs = [*sample(), record(9, codec.encode(envelope(3)))]
    recs[-1] = replace(recs[-1], position=WalPosition("x.wal", 0, 9))
    out = tmp_path / "export"
    export.prepare_out_dir(out)
    with export.ExportWriter(out) as files:
        for rec in recs:
            files.add(rec, Filters())
    manifest = files.manifest("x.wal", 4, Filters())
    (out / archive.MANIFEST).write_text(manifest.to_json())
    assert manifest.records == 6 and manifest.undecodable == 2
    assert [p.partition for p in manifest.partitions] == [0, 2]

    assert export.read_manifest(out) == manifest
    with ExitStack() as stack:
        rows = list(export.read_rows(out, manifest, stack))
    got = [(row["partition"], row["offset"], archive.record_value(row, schema.current()))
           for row in rows]  # fmt: skip
    assert sorted(got) == sorted((r.position.partition, r.position.offset, r.value) for r in recs)
    assert [o for p, o, _ in got if p == 2] == [0, 1, 2, 3, 4]

    with pytest.raises(ConfigError, match="not empty"):
        export.prepare_out_dir(out)
    damaged = out / archive.file_name(2)
    damaged.write_bytes(damaged.read_bytes()[:-3])
    with pytest.raises(DecodeError, match="SHA-256 differs"):
        export.read_manifest(out)
    (out / archive.MANIFEST).unlink()
    with pytest.raises(ConfigError, match="unfinished"):
        export.read_manifest(out)


def test_send_order_is_record_time_then_event_time() -> None:
    def row(ts: int, event_us: int | None) -> dict[str, Any]:
        when = None if event_us is None else {"occurred_at": T0 + timedelta(microseconds=event_us)}
        return {"timestamp_ms": ts, "event": when}

    base = int(T0.timestamp() * 1_000_000)
    assert archive.send_order(row(5, 7)) == (5, base + 7)
    assert archive.send_order(row(5, None)) == (5, 5000)  # no event: record time
    # One batch shares a millisecond: event time orders it; record time comes first.
    assert sorted([row(5, 9), row(5, 2), row(4, 99)], key=archive.send_order) == [
        row(4, 99), row(5, 2), row(5, 9),
    ]  # fmt: skip
