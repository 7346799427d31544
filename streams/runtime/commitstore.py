"""Commits read back from the commits OUTPUT topic: rollback targets and fork sources.

A worker keeps its partitions' role states in memory, never every commit's
snapshot. A commit is found through an index, commit id -> (partition,
offset) in the commits topic, and read from Kafka when a rollback or a fork
names it; a bounded LRU cache keeps the most recent ones decoded (the
commits the worker just cut are the usual rollback targets).

The index of the worker's own partitions comes from the state changelog
(``commit:`` entries) and from the worker's own deliveries. Fork sources may
have been cut on a partition another worker owns: for those the store tails
the whole commits topic, reading only the ``rolebus-commit-id`` header of
each record, from the first fork that needs it until the worker stops.

Invariants: a commit is indexed only after its record was delivered (so what
the index names can be read); commits are immutable and content-addressed,
so any copy of a record (at-least-once duplicates) is as good as another; a
record read back must be consistent (id, digest and snapshot agree) or the
read fails loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import TransportError
from rolebus.streams.core.commits import Commit, is_consistent
from rolebus.streams.core.serde import commit_from_record
from rolebus.wal import records, topics

log = logging.getLogger("rolebus.streams.worker")


class CommitStore:
    """See the module docstring. ``get`` is a synchronous ``CommitLookup`` over
    the cache; ``load`` finds named commits (reading them back when needed)."""

    def __init__(
        self, settings: Settings, ends: Endpoints, cache_size: int,
        open_reader: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.ends = settings, ends
        self.open_reader = open_reader or self._open_reader
        self.topic = topics.topic_name(settings, "commits")
        self.index: dict[str, tuple[int, int]] = {}
        self.cache: OrderedDict[str, Commit] = OrderedDict()
        self.cache_size = cache_size
        self.fetches = 0
        self._reader: AIOKafkaConsumer | None = None
        self._tail: asyncio.Task[None] | None = None

    # --- the fold's view ------------------------------------------------------

    def get(self, commit_id: str, /) -> Commit | None:
        found = self.cache.get(commit_id)
        if found is not None:
            self.cache.move_to_end(commit_id)
        return found

    def remember(self, commit: Commit, partition: int, offset: int) -> None:
        """A commit this worker delivered to ``partition`` at ``offset``."""
        self.index[commit.commit_id] = (partition, offset)
        self._cache(commit)

    def forget_partition(self, partition: int) -> None:
        """Drop a revoked partition's index (its new owner indexes it)."""
        if self._tail is None:  # the tail indexes every partition: keep it then
            self.index = {k: v for k, v in self.index.items() if v[0] != partition}

    def _cache(self, commit: Commit) -> None:
        self.cache[commit.commit_id] = commit
        self.cache.move_to_end(commit.commit_id)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    # --- reading back ---------------------------------------------------------

    async def load(self, commit_ids: Iterable[str]) -> dict[str, Commit]:
        """The named commits this store can find (cached, or read back through the
        index), by id. The caller keeps them for its batch: the cache may evict."""
        found: dict[str, Commit] = {}
        wanted: dict[tuple[int, int], str] = {}
        for cid in commit_ids:
            cached = self.get(cid)
            if cached is not None:
                found[cid] = cached
            elif cid in self.index:
                wanted[self.index[cid]] = cid
        if wanted:
            consumer = await self._consumer()
            for (partition, offset), commit_id in sorted(wanted.items()):  # rare: one read each
                tp = TopicPartition(self.topic, partition)
                consumer.assign([tp])
                consumer.seek(tp, offset)
                commit = await self._read(consumer, tp, offset, commit_id)
                self._cache(commit)
                found[commit_id] = commit
            self.fetches += len(wanted)
        return found

    async def _read(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, commit_id: str
    ) -> Commit:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connect_timeout_s
        while loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for rec in batch.get(tp, []):
                if rec.offset == offset:
                    return _checked(rec.value or b"", commit_id, tp.partition, offset)
                raise TransportError(
                    f"{self.topic}[{tp.partition}]@{offset}: no record there (commit {commit_id})",
                    retriable=False,
                )
        raise TransportError(
            f"{self.topic}[{tp.partition}]@{offset}: commit {commit_id} not readable within "
            f"{self.settings.connect_timeout_s:g}s (ROLEBUS_CONNECT_TIMEOUT_S)"
        )

    async def _consumer(self) -> Any:
        if self._reader is None:
            self._reader = await self.open_reader("rolebus-commit-reader")
        return self._reader

    async def _open_reader(self, client_id: str) -> AIOKafkaConsumer:
        """A started consumer without a group (the Kafka boundary; tests pass a fake)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.ends.kafka_bootstrap, enable_auto_commit=False,
            client_id=client_id,
            # Kafka returns at least the whole first batch however small the
            # limit; asking for little keeps a read to that one batch.
            fetch_max_bytes=65536, max_partition_fetch_bytes=65536, check_crcs=False,
        )  # fmt: skip
        await consumer.start()
        return consumer

    # --- fork sources on other partitions ---------------------------------------

    def tail(self) -> None:
        """Start indexing the whole commits topic (idempotent)."""
        if self._tail is None or self._tail.done():
            self._tail = asyncio.get_running_loop().create_task(self._run_tail())

    async def _run_tail(self) -> None:
        consumer = await self.open_reader("rolebus-commit-tail")
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.settings.wal_partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, recs in batch.items():
                    for rec in recs:
                        self._index_headers(tp.partition, rec.offset, rec.headers)
        finally:
            await consumer.stop()

    def _index_headers(self, partition: int, offset: int, headers: Any) -> None:
        for name, value in headers or ():
            if name == records.COMMIT_ID_HEADER:
                self.index.setdefault(value.decode(), (partition, offset))

    async def stop(self) -> None:
        if self._tail is not None:
            self._tail.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tail
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None


def _checked(value: bytes, commit_id: str, partition: int, offset: int) -> Commit:
    where = f"commits[{partition}]@{offset}"
    try:
        commit = commit_from_record(records.decode_commit(value))
    except records.RecordError as exc:
        raise TransportError(
            f"{where}: commit {commit_id} is unreadable: {exc}", retriable=False
        ) from exc
    if commit.commit_id != commit_id or not is_consistent(commit):
        raise TransportError(
            f"{where}: the record indexed as commit {commit_id} is not that commit or is "
            "inconsistent (id, digest and snapshot disagree): the commits topic is corrupt",
            retriable=False,
        )
    return commit
