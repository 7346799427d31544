"""The WAL export format, without I/O: Avro container rows, filters, the manifest.

An export is a folder holding one standard Avro object container file per
source partition (``wal-p0003.avro``) and a ``manifest.json``. Each row is one
WAL record: its partition, offset, Kafka timestamp, key and headers, the event
as a nested ``io.rolebus.wal.Envelope`` record (the schema the export was
written with, embedded in the file header, so any Avro tool reads the events),
and the writer schema's fingerprint and version.

Invariants:

- Nothing is lost: ``record_value(row)`` gives back the exact bytes the WAL held.
  ``original`` carries them whenever encoding ``event`` with the export's
  envelope schema does not reproduce them (undecodable records, unknown
  fingerprints, events written with an older schema version, non-canonical
  encodings); otherwise it is null and the bytes are re-encoded on import.
- ``content_sha256`` depends only on the exported records (partition, offset,
  timestamp, key, headers, bytes), never on the container files' random sync
  markers or compression, so two exports of the same WAL agree and an import
  can check that it rebuilt exactly what was exported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, Final

from fastavro import schemaless_writer

from rolebus.errors import ConfigError, DecodeError
from rolebus.wal import codec, schema
from rolebus.wal.canonical import to_micros
from rolebus.wal.reader import WalRecord

FORMAT: Final = "rolebus-wal-export/1"
MANIFEST: Final = "manifest.json"
IMPORT_HEADER: Final = "rolebus-import"
"""Header added to every imported record: ``<export id> <topic>[<partition>]@<offset>``."""

Row = dict[str, Any]


def file_name(partition: int) -> str:
    return f"wal-p{partition:04d}.avro"


def _field(name: str, avro_type: Any, doc: str) -> dict[str, Any]:
    # A union starting with "null" defaults to null: readers of later formats may drop it.
    extra = {"default": None} if isinstance(avro_type, list) and avro_type[0] == "null" else {}
    return {"name": name, "type": avro_type, **extra, "doc": doc}


_HEADER: Final = {
    "type": "record",
    "name": "Header",
    "doc": "One Kafka header.",
    "fields": [
        _field("name", "string", "Header key."),
        _field("value", ["null", "bytes"], "Header value."),
    ],
}


@functools.cache
def container_schema_json(envelope_text: str | None = None) -> str:
    """The container row schema, with the envelope schema (default: current) nested."""
    envelope = json.loads(envelope_text or schema.current().text)
    fields = [
        _field("partition", "int", "Source WAL partition."),
        _field("offset", "long", "Offset in the source partition."),
        _field("timestamp_ms", "long", "Kafka record timestamp (ms since the epoch, UTC)."),
        _field("key", ["null", "bytes"], "Kafka key (the role id)."),
        _field("headers", {"type": "array", "items": _HEADER}, "Kafka headers, in order."),
        _field(
            "writer_fingerprint",
            ["null", "string"],
            "CRC-64-AVRO of the record's writer schema, wire byte order, hex; null if none.",
        ),
        _field("writer_version", ["null", "int"], "Schema version of it; null when unknown."),
        _field("event", ["null", envelope], "The decoded event; null when it does not decode."),
        _field(
            "original",
            ["null", "bytes"],
            "The record's exact bytes when encoding `event` does not give them back.",
        ),
        _field("error", ["null", "string"], "Why the record does not decode."),
    ]
    return json.dumps({
        "type": "record", "name": "WalExportRecord", "namespace": "io.rolebus.export",
        "doc": f"One rolebus WAL record ({FORMAT}).", "fields": fields,
    })  # fmt: skip


def iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def event_time(rec: WalRecord) -> datetime:
    """Event time, or the Kafka record time for a record that does not decode."""
    if rec.envelope is not None:
        return rec.envelope.occurred_at
    return datetime.fromtimestamp(rec.timestamp_ms / 1000, UTC)


@dataclass(frozen=True)
class Filters:
    """What an export keeps; ``since`` inclusive, ``until`` exclusive."""

    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    """Only this tenant's events; undecodable records have no tenant and are left out."""

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ConfigError(f"export filter {name}: {value} has no time zone (add Z)")
        if self.since and self.until and self.since >= self.until:
            raise ConfigError(f"export filters: --from {self.since} is not before --until")

    def admits(self, rec: WalRecord) -> bool:
        if self.tenant is not None and (
            rec.envelope is None or rec.envelope.tenant_id != self.tenant
        ):
            return False
        when = event_time(rec)
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )

    def as_json(self) -> dict[str, str | None]:
        return {
            "from": iso(self.since),
            "until": iso(self.until),
            "tenant": self.tenant,
        }


def to_row(rec: WalRecord) -> Row:
    """The container row of one WAL record (``original`` only when needed)."""
    row: Row = {
        "partition": rec.position.partition, "offset": rec.position.offset,
        "timestamp_ms": rec.timestamp_ms, "key": rec.key,
        "headers": [{"name": k, "value": v} for k, v in rec.headers],
        "writer_fingerprint": None, "writer_version": None, "event": None,
        "original": rec.value, "error": None if rec.error is None else str(rec.error),
    }  # fmt: skip
    try:
        fingerprint = codec.fingerprint_of(rec.value)
    except DecodeError:
        return row
    version = schema.by_fingerprint(fingerprint)
    row["writer_fingerprint"] = schema.fingerprint_hex(fingerprint)
    row["writer_version"] = version and version.version
    if rec.envelope is not None:
        row["event"] = codec.to_datum(rec.envelope)
        if codec.encode(rec.envelope) == rec.value:
            row["original"] = None
    return row


def send_order(row: Row) -> tuple[int, int]:
    """Where a row goes when partitions are merged: Kafka record time, then event
    time within one millisecond (a batch sent at once shares one)."""
    event = row["event"]
    if event is None:
        return row["timestamp_ms"], row["timestamp_ms"] * 1000
    when = event["occurred_at"]
    return row["timestamp_ms"], to_micros(when) if isinstance(when, datetime) else int(when)


def record_value(row: Row, envelope: schema.SchemaVersion) -> bytes:
    """The record's exact WAL bytes: ``original``, or ``event`` encoded with the
    envelope schema the export was written with (rows read without resolution)."""
    if row["original"] is not None:
        return bytes(row["original"])
    if row["event"] is None:
        raise DecodeError(
            f"export row {row['partition']}:{row['offset']} has neither an event nor its "
            "original bytes; the export is damaged: export again"
        )
    out = BytesIO()
    out.write(envelope.header)
    event = dict(row["event"])
    if isinstance(event["occurred_at"], datetime):
        event["occurred_at"] = to_micros(event["occurred_at"])
    schemaless_writer(out, envelope.parsed, event)
    return out.getvalue()


def _blob(data: bytes | None) -> bytes:
    return struct.pack(">q", -1) if data is None else struct.pack(">q", len(data)) + data


def record_digest_bytes(
    offset: int, timestamp_ms: int, key: bytes | None,
    headers: Iterable[tuple[str, bytes | None]], value: bytes,
) -> bytes:  # fmt: skip
    """Length-prefixed canonical bytes of one record, for ``content_sha256``."""
    pairs = list(headers)
    parts = [struct.pack(">qqq", offset, timestamp_ms, len(pairs)), _blob(key)]
    parts.extend(_blob(k.encode()) + _blob(v) for k, v in pairs)
    parts.append(_blob(value))
    return b"".join(parts)


@dataclass
class PartitionTally:
    """What one partition contributed to an export (or an import)."""

    partition: int
    records: int = 0
    undecodable: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    file_sha256: str = ""
    """SHA-256 of the container file (integrity check before import)."""
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def add(
        self, offset: int, timestamp_ms: int, key: bytes | None,
        headers: Iterable[tuple[str, bytes | None]], value: bytes, decoded: bool,
    ) -> None:  # fmt: skip
        self.records += 1
        self.undecodable += not decoded
        self.first_offset = offset if self.first_offset is None else self.first_offset
        self.last_offset = offset
        self._hash.update(record_digest_bytes(offset, timestamp_ms, key, headers, value))

    @property
    def sha256(self) -> str:
        """SHA-256 of the records' canonical bytes, in offset order."""
        return str(self._hash.hexdigest())

    def entry(self) -> FileEntry:
        return FileEntry(
            self.partition, file_name(self.partition), self.records, self.undecodable,
            self.first_offset, self.last_offset, self.sha256, self.file_sha256,
        )  # fmt: skip


@dataclass(frozen=True)
class FileEntry:
    """One container file of an export, as the manifest lists it."""

    partition: int
    file: str
    records: int
    undecodable: int
    first_offset: int | None
    last_offset: int | None
    sha256: str
    """SHA-256 of the records' canonical bytes (``record_digest_bytes``), in offset order."""
    file_sha256: str
    """SHA-256 of the file itself."""


def content_sha256(tallies: Mapping[int, str]) -> str:
    """One hash over the per-partition record hashes (partition -> sha256)."""
    lines = "".join(f"{p}:{tallies[p]}\n" for p in sorted(tallies))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what an export holds and how to check it."""

    export_id: str
    source_topic: str
    source_partitions: int
    envelope_version: int
    envelope_fingerprint: str
    filters: dict[str, str | None]
    partitions: tuple[FileEntry, ...]
    records: int
    undecodable: int
    filtered_out: int
    time_range: dict[str, str | None]
    content_sha256: str
    created_at: str
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ConfigError(
                    f"{origin}: format {data.get('format')!r} is not {FORMAT!r} (export "
                    "written by another rolebus version; import it with that version)"
                )
            files = tuple(FileEntry(**entry) for entry in data.pop("partitions"))
            return cls(partitions=files, **data)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ConfigError(f"{origin}: not a rolebus export manifest ({exc})") from exc
