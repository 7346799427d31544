"""An in-memory stand-in for the Kafka boundary of the worker's unit tests.

Only what the worker runtime calls: a consumer (group member or plain
reader), a producer with ``create_batch``/``send_batch``, and a cluster of
partitioned logs with committed group offsets. Rebalances are driven by the
test (``FakeConsumer.rebalance``), which calls the worker's listener like
aiokafka does: revoke everything, then assign. The integration tests run the
same worker against the real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord


@dataclass
class Cluster:
    logs: dict[str, dict[int, list[ConsumerRecord[bytes, bytes]]]] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)

    def partition(self, topic: str, p: int) -> list[ConsumerRecord[bytes, bytes]]:
        return self.logs.setdefault(topic, {}).setdefault(p, [])

    def append(
        self, topic: str, p: int, key: bytes | None, value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> int:  # fmt: skip
        log = self.partition(topic, p)
        offset = len(log)
        log.append(ConsumerRecord(topic, p, offset, 0, 0, key, value, None, 0, 0, tuple(headers)))
        return offset

    def records(self, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for _, log in sorted(self.logs.get(topic, {}).items()) for r in log]


class FakeConsumer:
    def __init__(self, cluster: Cluster, max_records: int = 10_000) -> None:
        self.cluster = cluster
        self.max_records = max_records
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.listener: Any = None
        self._turn = 0

    # group membership, driven by the test
    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        self.listener = listener

    async def rebalance(self, partitions: Iterable[TopicPartition]) -> None:
        if self.listener is not None:
            await self.listener.on_partitions_revoked(set(self.assigned))
        self.assign(list(partitions))
        for tp in self.assigned:
            self.positions[tp] = self.cluster.committed.get(tp, 0)
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(self.assigned))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.cluster.committed.update(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.cluster.committed.get(tp)

    # fetching
    def assign(self, tps: Sequence[TopicPartition]) -> None:
        self.assigned = list(tps)
        self.paused &= set(tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.cluster.partition(tp.topic, tp.partition)) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.cluster.partition(tp.topic, tp.partition))

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        budget = min(max_records or self.max_records, self.max_records)
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        order = list(tps or self.assigned)
        self._turn = (self._turn + 1) % max(1, len(order))  # partitions take turns, as in
        order = order[self._turn :] + order[: self._turn]  # aiokafka's fetch buffer
        for tp in order:
            if tp in self.paused or budget <= 0:
                continue
            log = self.cluster.partition(tp.topic, tp.partition)
            start = self.positions.get(tp, 0)
            taken = log[start : start + budget]
            if taken:
                out[tp] = taken
                self.positions[tp] = start + len(taken)
                budget -= len(taken)
        if not out:
            await asyncio.sleep(0)
        return out

    async def stop(self) -> None:
        pass


@dataclass
class _Meta:
    offset: int


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]] = []
        self.closed = False

    def append(
        self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any
    ) -> object | None:
        if self.closed or (self.records and len(self.records) >= 50):
            return None  # full: the worker starts another batch
        self.records.append((key, value, tuple(headers or ())))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.batches = 0

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.batches += 1
        base = len(self.cluster.partition(topic, partition))
        for key, value, headers in batch.records:
            self.cluster.append(topic, partition, key, value, headers)
        future = asyncio.get_running_loop().create_future()
        future.set_result(_Meta(base))
        return future
