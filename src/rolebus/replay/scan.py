"""Reading topics for replay: whole topics fast, one partition's range, and a
partition backwards in growing chunks. No consumer group, no offset commits:
reading changes nothing.

A topic is read to the end offsets seen when the read starts, so records
appended meanwhile are left for the next run. Where a role lives: the SDK
produces with aiokafka's default partitioner (murmur2 of the key modulo the
partition count, like the Java client), and the workers write a role's outputs
to the partition number of its WAL partition.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import TransportError
from rolebus.wal import reader
from rolebus.wal.connect import within

Record: TypeAlias = ConsumerRecord
"""aiokafka's record (key and value are bytes: no deserializers are set)."""
Spans = dict[TopicPartition, tuple[int, int]]
"""(first offset, end offset) by partition."""
Tick = Callable[[int], None]
"""Told how many records were just read (progress)."""

FETCH_BYTES = 64 * 1024 * 1024
PARTITION_FETCH_BYTES = 8 * 1024 * 1024
BATCH = 50_000
STALL_S = 30.0
FETCH_WAIT_MS = 10
"""Replay reads what is there: a fetch at the end of a partition must not sit
for the default 500 ms (a consumer waits for it on reassign and on stop)."""


@asynccontextmanager
async def open_reader(
    settings: Settings, ends: Endpoints, client_id: str = "rolebus-replay"
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with no group and large fetches; stopped on exit.

    Look up partitions and offsets of every topic before assigning any: once
    partitions are assigned, aiokafka keeps metadata of the assigned topics only,
    and other topics look missing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ends.kafka_bootstrap, enable_auto_commit=False, client_id=client_id,
        fetch_max_bytes=FETCH_BYTES, max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )  # fmt: skip
    try:
        await within(settings, ends, consumer.start(), "the consumer connection")
        yield consumer
    finally:
        await consumer.stop()


def partition_of(key: str, partitions: int) -> int:
    """The partition the SDK's producer picks for ``key``."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), []))


async def partition_count(consumer: AIOKafkaConsumer, topic: str) -> int:
    return len(await reader.partitions(consumer._client, topic))


async def bounds(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, int]:
    """(first offset, end offset) of one partition."""
    first = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    return first, end


async def sizes(consumer: AIOKafkaConsumer, topic: str) -> Spans:
    """(first offset, end offset) of every partition of ``topic`` (none if missing)."""
    tps = await reader.partitions(consumer._client, topic, missing_ok=True)
    if not tps:
        return {}
    firsts = await consumer.beginning_offsets(tps)
    ends_at = await consumer.end_offsets(tps)
    return {tp: (firsts[tp], ends_at[tp]) for tp in tps}


class Stall:
    """Fails a read that gets nothing for ``STALL_S`` while its end is ahead,
    rather than waiting forever."""

    def __init__(self, what: str) -> None:
        self.what, self.since = what, time.monotonic()

    def check(self, progressed: bool) -> None:
        now = time.monotonic()
        if progressed:
            self.since = now
        elif now - self.since > STALL_S:
            raise TransportError(
                f"{self.what}: no record for {STALL_S:g}s although the end offset is ahead "
                "(is the broker up? `rolebus stack status`)"
            )


async def read_topic(consumer: AIOKafkaConsumer, spans: Spans, tick: Tick) -> list[Record]:
    """Every record of the partitions in ``spans``, each up to its end offset."""
    todo = {tp: end for tp, (first, end) in spans.items() if end > first}
    if not todo:
        return []
    # Assign only what gets a position at once: without a group, aiokafka waits
    # forever for the committed offset of an assigned partition never sought.
    consumer.assign(list(todo))
    await consumer.seek_to_beginning(*todo)
    got: list[Record] = []
    stall = Stall(f"reading {next(iter(todo)).topic}")
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=BATCH)
        stall.check(bool(batch))
        for tp, recs in batch.items():
            kept = [r for r in recs if r.offset < todo[tp]]
            got.extend(kept)
            tick(len(kept))
        todo = {tp: end for tp, end in todo.items() if await consumer.position(tp) < end}
    return got


async def read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int,
    until: Callable[[Record], bool] | None = None,
) -> list[Record]:  # fmt: skip
    """The records of one partition at offsets ``start <= o < stop``, in order;
    with ``until``, stop before the first record it is true for."""
    if start >= stop:
        return []
    consumer.assign([tp])
    consumer.seek(tp, start)  # at once: see ``read_topic``
    got: list[Record] = []
    stall = Stall(f"reading {tp.topic}[{tp.partition}]")
    while await consumer.position(tp) < stop:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=BATCH)
        stall.check(bool(batch))
        for rec in batch.get(tp, []):
            if rec.offset >= stop:
                return got
            if until is not None and until(rec):
                return got
            got.append(rec)
    return got


async def read_back(
    consumer: AIOKafkaConsumer, tp: TopicPartition, first: int, end: int,
    enough: Callable[[list[Record]], bool], chunk: int = 2_000,
) -> list[Record]:  # fmt: skip
    """Records of one partition before ``end``, read backwards in growing chunks
    until ``enough`` of all records read so far (in offset order) or ``first``."""
    got: list[Record] = []
    stop = end
    while stop > first:
        start = max(first, stop - chunk)
        got = [*await read_range(consumer, tp, start, stop), *got]
        if enough(got):
            break
        stop, chunk = start, chunk * 2
    return got
