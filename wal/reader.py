"""Reading the WAL back: decoded records with their positions, for ``wal tail``,
``wal inspect`` and the tests. No consumer group: the reader assigns partitions
itself and never commits offsets, so inspecting the log changes nothing.

A record that fails to decode is yielded with its ``DecodeError`` instead of an
envelope: readers of a source-of-truth log must see every record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import DecodeError, TransportError
from rolebus.wal import codec, schema
from rolebus.wal.canonical import plain
from rolebus.wal.connect import within
from rolebus.wal.events import Envelope, WalPosition


@dataclass(frozen=True)
class WalRecord:
    position: WalPosition
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    envelope: Envelope | None
    error: DecodeError | None

    @classmethod
    def from_kafka(cls, rec: ConsumerRecord[bytes, bytes]) -> WalRecord:
        env, err = None, None
        try:
            env = codec.decode(rec.value or b"")
        except DecodeError as exc:
            err = exc
        return cls(
            WalPosition(rec.topic, rec.partition, rec.offset), rec.key, rec.value or b"",
            tuple(rec.headers or ()), rec.timestamp, env, err,
        )  # fmt: skip


def envelope_json(env: Envelope) -> dict[str, Any]:
    """A JSON view for humans and scripts: ISO times, the payload type named."""
    data: dict[str, Any] = plain(env)
    data["occurred_at"] = env.occurred_at.isoformat()
    data["event_type"] = env.event_type
    return data


def record_json(rec: WalRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "topic": rec.position.topic, "partition": rec.position.partition,
        "offset": rec.position.offset, "key": (rec.key or b"").decode(errors="replace"),
        "size": len(rec.value), "headers": {k: v.decode(errors="replace") for k, v in rec.headers},
    }  # fmt: skip
    if rec.envelope is not None:
        fp = codec.fingerprint_of(rec.value)
        version = schema.by_fingerprint(fp)
        out["schema"] = {
            "fingerprint": schema.fingerprint_hex(fp),
            "version": version and version.version,
        }
        out["event"] = envelope_json(rec.envelope)
    else:
        out["error"] = str(rec.error)
    return out


@asynccontextmanager
async def open_consumer(
    settings: Settings, ends: Endpoints, client_id: str = "rolebus-reader"
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with no group that never commits offsets; stopped on exit."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ends.kafka_bootstrap, enable_auto_commit=False, client_id=client_id
    )
    try:
        await within(settings, ends, consumer.start(), "the consumer connection")
        yield consumer
    finally:
        await consumer.stop()


async def partitions(
    client: AIOKafkaClient, topic: str, *, missing_ok: bool = False, wait_s: float = 0.0
) -> list[TopicPartition]:
    """The partitions of ``topic`` from fresh metadata of a started consumer's or
    producer's client. A missing topic is asked for again for up to ``wait_s`` (one
    created a moment ago may be missing from one answer), then is an error, or no
    partitions with ``missing_ok``."""
    deadline = time.monotonic() + wait_s
    while not (found := await _known_partitions(client, topic)) and not missing_ok:
        if time.monotonic() >= deadline:
            raise TransportError(
                f"topic {topic} does not exist: run `rolebus topics ensure`", retriable=False
            )
        await asyncio.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _known_partitions(client: AIOKafkaClient, topic: str) -> set[int]:
    # A fresh client has no metadata yet, and aiokafka has no public refresh.
    try:
        await client.force_metadata_update()
    except KafkaError as exc:
        raise TransportError(f"reading {topic}: metadata request failed: {exc}") from exc
    return set(client.cluster.partitions_for_topic(topic) or ())


async def assign_from_beginning(
    consumer: AIOKafkaConsumer, names: Iterable[str], *, missing_ok: bool = False,
    wait_s: float = 0.0,
) -> list[TopicPartition]:  # fmt: skip
    """Assign every partition of the topics ``names`` to ``consumer``, read from
    offset 0 (``partitions`` for ``missing_ok`` and ``wait_s``)."""
    tps = [
        tp for name in names
        for tp in await partitions(consumer._client, name, missing_ok=missing_ok, wait_s=wait_s)
    ]  # fmt: skip
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def tail(
    settings: Settings, ends: Endpoints, topic: str, *, from_beginning: bool, follow: bool,
    role_id: str | None = None, idle_s: float = 1.0,
) -> AsyncIterator[WalRecord]:  # fmt: skip
    """Records of ``topic``, in order within each partition (partitions
    interleave); without ``follow``, stop at the end offsets seen at start."""
    async with open_consumer(settings, ends) as consumer:
        tps = await partitions(consumer._client, topic)
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends_at = await consumer.end_offsets(tps)
        key = role_id.encode() if role_id else None
        async for rec in _drain(consumer, tps, ends_at, follow, idle_s):
            if key is None or rec.key == key:
                yield WalRecord.from_kafka(rec)


async def _drain(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends_at: dict[TopicPartition, int],
    follow: bool, idle_s: float,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:  # fmt: skip
    while True:
        if not follow and all([await _at_end(consumer, tp, ends_at[tp]) for tp in tps]):
            return
        batch = await consumer.getmany(*tps, timeout_ms=int(idle_s * 1000))
        for records in batch.values():
            for rec in records:
                yield rec


async def _at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    return bool(await consumer.position(tp) >= end)


async def read_at(
    settings: Settings, ends: Endpoints, topic: str, partition: int, offset: int
) -> WalRecord:
    """The one record at ``partition:offset``."""
    async with open_consumer(settings, ends) as consumer:
        tp = TopicPartition(topic, partition)
        if tp not in await partitions(consumer._client, topic):
            raise TransportError(f"{topic} has no partition {partition}", retriable=False)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not first <= offset < end:
            held = f"offsets {first}..{end - 1}" if end > first else "no records"
            raise TransportError(
                f"{topic}[{partition}] holds {held}; {offset} is outside", retriable=False
            )
        consumer.seek(tp, offset)
        while True:
            try:
                batch = await asyncio.wait_for(
                    consumer.getmany(tp, timeout_ms=1000), settings.connect_timeout_s
                )
            except TimeoutError:
                raise TransportError(
                    f"{topic}[{partition}]@{offset}: no answer within "
                    f"{settings.connect_timeout_s:g}s (ROLEBUS_CONNECT_TIMEOUT_S)"
                ) from None
            for rec in batch.get(tp, []):
                if rec.offset == offset:
                    return WalRecord.from_kafka(rec)
                if rec.offset > offset:
                    raise TransportError(
                        f"{topic}[{partition}]@{offset} holds no record (a transaction marker)",
                        retriable=False,
                    )
