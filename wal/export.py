"""``wal export`` / ``wal import``: copy a WAL through Avro container files.

Export reads every partition of ``<prefix>.wal`` up to the end offsets seen at
start (no consumer group, nothing committed), keeps what the ``Filters``
admit, and writes one container file per partition plus ``manifest.json``
(``rolebus.wal.archive`` describes the format). The manifest is written last,
so a folder without one is an unfinished export and import refuses it.

Import writes the records into the configured cluster's WAL with an
idempotent producer: key and headers as exported (plus ``rolebus-import``),
the original Kafka timestamp, and the exact original bytes. Each source
partition is sent in offset order, so every role keeps its order even when the
target has another partition count. Partitions are merged by Kafka record
time, then event time: a client forks from a commit only after the event that
cut it was written, so the fork comes after that event in the new WAL too and
the fold of the new WAL waits for the same commits as the fold of the old one.
(Event time alone is no guide: a backfill or a skewed clock writes old times
late. Record time alone neither: a batch sent at once shares one millisecond.)

Refusal rule: import writes only into an EMPTY target WAL. A second import,
an import on top of live traffic and the retry of a half-finished import all
find records there and stop; ``force`` appends anyway, without skipping
records already there (the fold's dedupe by event id is a window, not a set).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import fastavro
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from fastavro.write import Writer

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError, DecodeError, TransportError
from rolebus.wal import archive, schema, topics
from rolebus.wal.archive import Filters, Manifest, PartitionTally
from rolebus.wal.client import producer_config
from rolebus.wal.connect import within
from rolebus.wal.reader import WalRecord, open_consumer, partitions

_SEND_CHUNK = 2000


class Progress(Protocol):
    """Where long runs report: a total first, then increments."""

    def start(self, total: int) -> None: ...
    def advance(self, count: int) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


@dataclass(frozen=True)
class ImportReport:
    export_id: str
    target_topic: str
    target_partitions: int
    records: int
    undecodable: int
    seconds: float
    forced: bool


# --- export ----------------------------------------------------------------------


async def export_wal(
    settings: Settings, ends: Endpoints, out_dir: Path, filters: Filters,
    progress: Progress | None = None,
) -> Manifest:  # fmt: skip
    """Export the WAL into ``out_dir`` (created; must be empty); the manifest written."""
    prepare_out_dir(out_dir)
    topic = topics.topic_name(settings, "wal")
    sink = progress or NoProgress()
    async with open_consumer(settings, ends, client_id="rolebus-export") as consumer:
        tps = await partitions(consumer._client, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        first = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        sink.start(sum(end[tp] - first[tp] for tp in tps))
        with ExportWriter(out_dir) as files:
            async for rec in _drain(consumer, end):
                sink.advance(1)
                files.add(rec, filters)
    manifest = files.manifest(topic, len(tps), filters)
    _write_atomic(out_dir / archive.MANIFEST, manifest.to_json())
    return manifest


def prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"export folder {out_dir}: exists and is not empty; pick a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)


async def _drain(
    consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]
) -> AsyncIterator[WalRecord]:
    """Every record below the end offsets seen at start, decoded."""
    left = {tp for tp, stop in end.items() if await consumer.position(tp) < stop}
    while left:
        try:
            batch = await consumer.getmany(*left, timeout_ms=1000)
        except KafkaError as exc:
            raise TransportError(f"export: reading the WAL failed: {exc}") from exc
        for tp, records in batch.items():
            for rec in records:
                if rec.offset < end[tp]:
                    yield WalRecord.from_kafka(rec)
            if await consumer.position(tp) >= end[tp]:
                left.discard(tp)


class ExportWriter:
    """One container file per partition, opened on its first record; the tallies
    and time range the manifest reports."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.schema = fastavro.parse_schema(json.loads(archive.container_schema_json()))
        self.writers: dict[int, tuple[Any, Writer]] = {}
        self.tallies: dict[int, PartitionTally] = {}
        self.filtered_out = 0
        self.first: datetime | None = None
        self.last: datetime | None = None

    def __enter__(self) -> ExportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for partition, (fo, writer) in sorted(self.writers.items()):
            writer.flush()
            fo.close()
            path = self.out_dir / archive.file_name(partition)
            self.tallies[partition].file_sha256 = _file_sha256(path)

    def add(self, rec: WalRecord, filters: Filters) -> None:
        if not filters.admits(rec):
            self.filtered_out += 1
            return
        p = rec.position.partition
        if p not in self.writers:
            fo = (self.out_dir / archive.file_name(p)).open("wb")
            self.writers[p] = (fo, Writer(fo, self.schema, codec="deflate"))
            self.tallies[p] = PartitionTally(p)
        self.writers[p][1].write(archive.to_row(rec))
        self.tallies[p].add(
            rec.position.offset, rec.timestamp_ms, rec.key, rec.headers, rec.value,
            rec.envelope is not None,
        )  # fmt: skip
        when = archive.event_time(rec)
        self.first = when if self.first is None else min(self.first, when)
        self.last = when if self.last is None else max(self.last, when)

    def manifest(self, topic: str, source_partitions: int, filters: Filters) -> Manifest:
        current = schema.current()
        tallies = [self.tallies[p] for p in sorted(self.tallies)]
        return Manifest(
            export_id=str(uuid.uuid4()), source_topic=topic,
            source_partitions=source_partitions, envelope_version=current.version,
            envelope_fingerprint=current.fingerprint_hex, filters=filters.as_json(),
            partitions=tuple(t.entry() for t in tallies),
            records=sum(t.records for t in tallies),
            undecodable=sum(t.undecodable for t in tallies), filtered_out=self.filtered_out,
            time_range={"first": archive.iso(self.first),
                        "last": archive.iso(self.last)},
            content_sha256=archive.content_sha256({t.partition: t.sha256 for t in tallies}),
            created_at=datetime.now(UTC).isoformat(),
        )  # fmt: skip


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fo:
        for block in iter(lambda: fo.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- import ----------------------------------------------------------------------


def read_manifest(in_dir: Path) -> Manifest:
    """The export's manifest, with every container file checked against its hash."""
    path = in_dir / archive.MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{in_dir}: no {archive.MANIFEST}; not an export, or an unfinished one: export again"
        )
    manifest = Manifest.from_json(path.read_text(encoding="utf-8"), str(path))
    for part in manifest.partitions:
        found = in_dir / part.file
        if not found.is_file() or _file_sha256(found) != part.file_sha256:
            raise DecodeError(
                f"{found}: missing or its SHA-256 differs from {archive.MANIFEST}; the export "
                "is damaged: copy it again"
            )
    return manifest


def _envelope_schema(manifest: Manifest) -> schema.SchemaVersion:
    fingerprint = int.from_bytes(bytes.fromhex(manifest.envelope_fingerprint), "little")
    found = schema.by_fingerprint(fingerprint)
    if found is None:
        raise DecodeError(
            f"export {manifest.export_id}: envelope schema {manifest.envelope_fingerprint} "
            "(v{manifest.envelope_version}) is unknown to this rolebus: upgrade rolebus"
        )
    return found


def read_rows(in_dir: Path, manifest: Manifest, stack: ExitStack) -> Iterator[dict[str, Any]]:
    """All rows, each partition in offset order, partitions merged by ``send_order``."""
    readers = []
    for part in manifest.partitions:
        fo = stack.enter_context((in_dir / part.file).open("rb"))
        readers.append(
            fastavro.reader(fo, return_record_name=True, return_record_name_override=True)
        )
    # heapq.merge only ever compares the heads, so each file keeps its own order.
    rows: Iterator[Any] = heapq.merge(*readers, key=archive.send_order)
    return rows


async def import_wal(
    settings: Settings, ends: Endpoints, in_dir: Path, *, force: bool = False,
    progress: Progress | None = None,
) -> ImportReport:  # fmt: skip
    """Write an export into the configured WAL (module docstring: order, refusal)."""
    manifest = read_manifest(in_dir)
    envelope = _envelope_schema(manifest)
    topic = topics.topic_name(settings, "wal")
    sink = progress or NoProgress()
    started = time.monotonic()
    config = {**producer_config(settings), "client_id": "rolebus-import"}
    producer = AIOKafkaProducer(bootstrap_servers=ends.kafka_bootstrap, **config)
    try:
        await within(settings, ends, producer.start(), "the producer connection")
        target = await partitions(producer.client, topic, wait_s=5.0)
        await _refuse_non_empty(settings, ends, topic, force)
        sink.start(manifest.records)
        tallies = await _send_rows(producer, topic, in_dir, manifest, envelope, sink)
    finally:
        await producer.stop()
    _check_content(manifest, tallies)
    return ImportReport(
        manifest.export_id, topic, len(target), sum(t.records for t in tallies.values()),
        sum(t.undecodable for t in tallies.values()), time.monotonic() - started, force,
    )  # fmt: skip


async def _refuse_non_empty(settings: Settings, ends: Endpoints, topic: str, force: bool) -> None:
    async with open_consumer(settings, ends, client_id="rolebus-import") as consumer:
        tps = await partitions(consumer._client, topic)
        first = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
    held = sum(end[tp] - first[tp] for tp in tps)
    if held and not force:
        raise ConfigError(
            f"import into {topic}: it already holds {held} records (an earlier import, live "
            "traffic or an unfinished import); import writes only into an empty WAL. Use a "
            "fresh topic prefix (ROLEBUS_TOPIC_PREFIX), or --force to append anyway"
        )


async def _send_rows(
    producer: AIOKafkaProducer, topic: str, in_dir: Path, manifest: Manifest,
    envelope: schema.SchemaVersion, sink: Progress,
) -> dict[int, PartitionTally]:  # fmt: skip
    tallies: dict[int, PartitionTally] = {}
    pending: list[Any] = []
    with ExitStack() as stack:
        for row in read_rows(in_dir, manifest, stack):
            p, offset = row["partition"], row["offset"]
            value = archive.record_value(row, envelope)
            headers = [(h["name"], h["value"]) for h in row["headers"]]
            tally = tallies.setdefault(p, PartitionTally(p))
            tally.add(offset, row["timestamp_ms"], row["key"], headers, value, bool(row["event"]))
            marker = f"{manifest.export_id} {manifest.source_topic}[{p}]@{offset}".encode()
            pending.append(await _send(producer, topic, row, value, headers, marker))
            if len(pending) >= _SEND_CHUNK:
                await _settle(pending, sink)
        await _settle(pending, sink)
    return tallies


async def _send(
    producer: AIOKafkaProducer, topic: str, row: dict[str, Any], value: bytes,
    headers: list[tuple[str, bytes | None]], marker: bytes,
) -> Any:  # fmt: skip
    # Like RoleClient: skip the aiokafka instrumentation's per-record span (when
    # installed), which costs more than sending the record.
    send = getattr(producer.send, "__wrapped__", producer.send)
    try:
        return await send(
            topic, value, key=row["key"], headers=[*headers, (archive.IMPORT_HEADER, marker)],
            timestamp_ms=row["timestamp_ms"],
        )  # fmt: skip
    except KafkaError as exc:
        raise TransportError(f"import into {topic}: send failed: {exc}") from exc


async def _settle(pending: list[Any], sink: Progress) -> None:
    """Wait until every pending send is acknowledged."""
    for future in pending:
        try:
            await future
        except KafkaError as exc:
            raise TransportError(f"import: a record was not acknowledged: {exc}") from exc
    sink.advance(len(pending))
    pending.clear()


def _check_content(manifest: Manifest, tallies: dict[int, PartitionTally]) -> None:
    found = archive.content_sha256({p: t.sha256 for p, t in tallies.items()})
    if found != manifest.content_sha256:
        raise DecodeError(
            f"import of export {manifest.export_id}: the records sent hash to {found}, the "
            f"manifest says {manifest.content_sha256}; compare the target WAL with the export"
        )
