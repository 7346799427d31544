"""Rebuild the context store from the output topics into a fresh table set.

A ``Rebuilder`` reads ``<prefix>.changes``, ``.commits`` and ``.rejections``
by plain partition assignment (no consumer group: the live projector's group
and offsets are never touched) and writes them with the projector's own code
path: ``decode_batch`` and ``plan_batch`` (pure), ``embed_contents`` with the
configured provider, ``Store.write`` (rows and offsets in one transaction).
Its offsets are stored in the NEW set under the LIVE projector's name, so once
the set is swapped in, the live projector resumes from them (``swap``).

Invariants: a partition is read from the offset the new set stored for it up
to a target offset and never past it (``run_to``), so the new set always holds
exactly the inputs below its stored offsets; a ``Scope`` (tenant / role) keeps
the inputs of that tenant / role only, before planning, so the rows written
are the live rows of that scope (undecodable rejections have no tenant: a
scoped rebuild leaves them out).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, LiteralString, cast

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from psycopg import sql

from rolebus.projectors.embedder import embed_contents
from rolebus.projectors.embeddings import EmbeddingProvider
from rolebus.projectors.plan import Decoded, Fetched, decode_batch, plan_batch
from rolebus.projectors.projector import Prepared
from rolebus.projectors.staging import Vectored
from rolebus.projectors.store import TP, Store, Written
from rolebus.wal.export import NoProgress, Progress

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Batch = Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


@dataclass(frozen=True)
class Scope:
    """What a rebuild (and its verification) covers: all, one tenant, one role."""

    tenant: str | None = None
    role: str | None = None

    @property
    def whole(self) -> bool:
        return self.tenant is None and self.role is None

    def keeps(self, tenant: str | None, role: str | None) -> bool:
        if self.tenant is not None and tenant != self.tenant:
            return False
        return self.role is None or role == self.role


def scoped(decoded: Decoded, scope: Scope) -> Decoded:
    """The inputs of ``scope`` only, in order."""
    if scope.whole:
        return decoded
    return Decoded(
        [c for c in decoded.changes if scope.keeps(c.record.tenant_id, c.record.role_id)],
        [c for c in decoded.commits if scope.keeps(c.record.tenant_id, c.record.role_id)],
        [j for j in decoded.rejections if scope.keeps(j.record.tenant_id, j.record.role_id)],
    )


def take(
    batch: Batch, positions: Mapping[TP, int], targets: Mapping[TP, int]
) -> tuple[list[Fetched], dict[TP, tuple[int, int]]]:
    """The records of each partition in ``[position, target)`` and the batch's
    (start, next) offsets per partition."""
    fetched: list[Fetched] = []
    spans: dict[TP, tuple[int, int]] = {}
    for tp, recs in batch.items():
        key = (tp.topic, tp.partition)
        start, stop = positions[key], targets.get(key, positions[key])
        fresh = [r for r in recs if start <= r.offset < stop]
        if not fresh:
            continue
        spans[key] = (start, fresh[-1].offset + 1)
        fetched += [
            Fetched(r.topic, r.partition, r.offset, r.timestamp, r.value or b"") for r in fresh
        ]
    return fetched, spans


@dataclass
class Tally:
    """What a rebuild read and wrote (new rows only)."""

    records: int = 0
    events: int = 0
    messages: int = 0
    commits: int = 0
    rejections: int = 0
    seconds: float = 0.0

    def add(self, records: int, w: Written) -> None:
        self.records += records
        self.events += w.events
        self.messages += w.messages
        self.commits += w.commits
        self.rejections += w.rejections


@dataclass
class Rebuilder:
    """One reader (assigned partitions, no group) writing one new table set."""

    consumer: AIOKafkaConsumer
    store: Store
    embedder: EmbeddingProvider
    scope: Scope = field(default_factory=Scope)
    batch_size: int = 2000
    positions: dict[TP, int] = field(default_factory=dict)
    """Next offset per partition, as stored in the new set."""
    tally: Tally = field(default_factory=Tally)

    async def assign(self, tps: Sequence[TopicPartition]) -> None:
        """Take the partitions and seek each to the new set's stored offset."""
        self.consumer.assign(list(tps))
        stored = await self.store.stored_offsets([(tp.topic, tp.partition) for tp in tps])
        for tp in tps:
            self.positions[(tp.topic, tp.partition)] = stored[(tp.topic, tp.partition)]
            self.consumer.seek(tp, stored[(tp.topic, tp.partition)])

    async def end_offsets(self) -> dict[TP, int]:
        tps = [TopicPartition(*tp) for tp in self.positions]
        found = await self.consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(n) for tp, n in found.items()}

    def behind(self, targets: Mapping[TP, int]) -> int:
        """Records still to read to reach ``targets``."""
        return sum(max(0, n - self.positions.get(tp, 0)) for tp, n in targets.items())

    async def run_to(self, targets: Mapping[TP, int], progress: Progress | None = None) -> None:
        """Project every partition up to its target offset (exclusive). The next
        batch is decoded, planned and embedded while the previous one is written."""
        sink = progress or NoProgress()
        started = time.monotonic()
        read_to = dict(self.positions)  # next offset to take per partition
        for key, stop in targets.items():  # an earlier run may have fetched past its targets
            if self.positions[key] < stop:
                self.consumer.seek(TopicPartition(*key), self.positions[key])
        writing: asyncio.Task[None] | None = None
        try:
            while open_ := await self._open(targets, read_to):
                batch = await self.consumer.getmany(
                    *open_, timeout_ms=500, max_records=self.batch_size
                )
                fetched, spans = take(batch, read_to, targets)
                read_to.update({tp: nxt for tp, (_, nxt) in spans.items()})
                prepared = await self._prepare(fetched, spans) if fetched else None
                if writing is not None and prepared is not None:
                    await writing
                    writing = None
                if prepared is not None:
                    writing = asyncio.create_task(self._write(prepared))
                    sink.advance(len(fetched))
        finally:
            if writing is not None:
                await writing
        self.tally.seconds += time.monotonic() - started

    async def _open(
        self, targets: Mapping[TP, int], read_to: Mapping[TP, int]
    ) -> list[TopicPartition]:
        """The partitions not read up to their target yet (a consumer position at
        or past the target also counts as done: offsets may have gaps)."""
        out = []
        for key, stop in targets.items():
            tp = TopicPartition(*key)
            if read_to.get(key, 0) < stop and await self.consumer.position(tp) < stop:
                out.append(tp)
        return out

    async def _prepare(
        self, fetched: list[Fetched], spans: Mapping[TP, tuple[int, int]]
    ) -> Prepared:
        """Decode, scope, plan and embed (no store access)."""
        plan = plan_batch(scoped(decode_batch(fetched), self.scope))
        rows = plan.message_rows()
        done = await embed_contents(self.embedder, [m.content for m in rows])
        embedded: dict[str, Vectored] = {
            m.event_id: (v, e) for m, v, e in zip(rows, done.vectors, done.errors, strict=True)
        }
        return Prepared(len(fetched), plan, embedded, spans)

    async def _write(self, p: Prepared) -> None:
        written = await self.store.write(p.plan, p.embedded, p.spans, datetime.now(UTC))
        if p.plan.commits:  # a fork written before its source commit gets it now
            await self.store.fill_forks()
        for tp, (_, nxt) in p.spans.items():
            self.positions[tp] = nxt
        self.tally.add(p.records, written)


HNSW_INDEX = "messages_embedding_hnsw"
"""The embeddings' index (``db.migrate``): built once after the bulk of a
rebuild, as inserting into it row by row costs most of a rebuild's time."""


@asynccontextmanager
async def deferred_index(conn: Conn, schema: str, index: str, tally: Tally) -> AsyncIterator[None]:
    """Drop ``index`` for the duration of a bulk load, then create it again from
    its own definition (as PostgreSQL reports it); the time counts in ``tally``."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
            (schema, index),
        )
        row = await cur.fetchone()
        if row is not None:
            await conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)))
    yield  # a failed load leaves the set without it: such a set is only fit to drop
    if row is not None:
        started = time.monotonic()
        async with conn.transaction():
            await conn.execute(sql.SQL(cast(LiteralString, row[0])))  # the server's own DDL
        tally.seconds += time.monotonic() - started
