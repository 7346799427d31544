"""``rolebus project``: the loop that fills the context store.

A consumer group over ``<prefix>.changes``, ``.commits`` and ``.rejections``.
Per ``getmany`` batch: decode and plan (pure), embed the messages (outside
the transaction), then ``Store.write`` the rows and the consumed offsets in
one PostgreSQL transaction; the next batch is prepared while one is written.
Nothing waits to fill a batch: ``getmany``'s wait applies only when nothing
was fetched.

Invariants:
* positions live in PostgreSQL (``projector_offsets``); on assignment every
  partition is sought to its stored offset, never to Kafka's committed one
  (Kafka commits happen after the PostgreSQL commit, for lag tools only);
* the range assignor gives one process the same partition number of the
  three topics (the worker writes a role's records to the same partition
  number everywhere), so a role's inputs are written by one process in order;
  a stale process is fenced by the offset check in ``Store.write``;
* a batch in flight finishes before its partitions are handed over (the
  rebalance listener waits for it);
* an undecodable output record stops the projector with its position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import StoreError, TransportError
from rolebus.projectors import db
from rolebus.projectors.embedder import embed_contents
from rolebus.projectors.embeddings import EmbeddingProvider as Embedder
from rolebus.projectors.plan import Fetched, Plan, decode_batch, plan_batch
from rolebus.projectors.staging import Vectored
from rolebus.projectors.store import TP, Fenced, Store, Written
from rolebus.wal import topics
from rolebus.wal.connect import within

log = logging.getLogger(__name__)
OUTPUT_KINDS = ("changes", "commits", "rejections")


@dataclass(frozen=True)
class ProjectorOptions:
    group_id: str
    """Consumer group; also the projector's name in ``projector_offsets``."""
    schema: str
    batch_size: int = 2000
    fetch_wait_ms: int = 200
    """How long ``getmany`` waits when nothing is there."""
    progress_every_s: float = 5.0
    session_timeout_s: float = 10.0


@dataclass
class Stats:
    batches: int = 0
    records: int = 0
    events: int = 0
    messages: int = 0
    commits: int = 0
    rejections: int = 0
    fenced: int = 0
    retried: int = 0

    def add(self, n: int, w: Written) -> None:
        self.batches += 1
        self.records += n
        self.events += w.events
        self.messages += w.messages
        self.commits += w.commits
        self.rejections += w.rejections


@dataclass(frozen=True)
class Prepared:
    """A batch decoded, planned and embedded, waiting for its transaction."""

    records: int
    plan: Plan
    embedded: Mapping[str, Vectored]
    spans: Mapping[TP, tuple[int, int]]
    """Partition -> (offset the batch starts from, next offset)."""


def default_group(settings: Settings) -> str:
    return f"{settings.app_id}-projector"


class Projector:
    """One projector process: a consumer, a store connection, a batch lock."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: Store,
        embedder: Embedder,
        options: ProjectorOptions,
    ) -> None:
        self.consumer = consumer
        self.store = store
        self.embedder = embedder
        self.options = options
        self.lock = asyncio.Lock()
        self.positions: dict[TP, int] = {}
        """Next offset per owned partition, as stored in PostgreSQL."""
        self.fetched_to: dict[TP, int] = {}
        """Next offset per owned partition past the batches taken so far (one
        batch ahead of ``positions`` while the previous one is being written)."""
        self.stats = Stats()
        self._kafka_committed_at = 0.0
        self._forks_filled_at = 0.0
        self._reported = (time.monotonic(), 0)

    async def seek_stored(self, tps: Sequence[TopicPartition]) -> None:
        """Seek to the offsets stored in PostgreSQL (caller holds the lock)."""
        if not tps:
            return
        stored = await self.store.stored_offsets([(tp.topic, tp.partition) for tp in tps])
        for tp in tps:
            offset = stored[(tp.topic, tp.partition)]
            self.consumer.seek(tp, offset)
            self.positions[(tp.topic, tp.partition)] = offset
            self.fetched_to[(tp.topic, tp.partition)] = offset
        log.info(
            "projector %s: resumed %d partitions from stored offsets",
            self.options.group_id,
            len(tps),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, prepare (decode, plan, embed) the next batch while the previous
        one is written; at most one batch is written at a time, in order."""
        last_report = time.monotonic()
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=self.options.fetch_wait_ms, max_records=self.options.batch_size
                )
                prepared = await self.prepare(batch) if batch else None
                if writing is not None and (prepared is not None or writing.done()):
                    await writing
                    writing = None
                if prepared is not None:
                    writing = asyncio.create_task(self.commit(prepared))
                elif writing is None:
                    await self._idle()
                if time.monotonic() - last_report >= self.options.progress_every_s:
                    self.report()
                    last_report = time.monotonic()
        finally:
            if writing is not None:
                await writing
        self.report()

    async def _idle(self) -> None:
        """Nothing fetched: give pending forks their source's live ranges (a source
        commit another process projected after the fork), at most every 2 s."""
        if time.monotonic() - self._forks_filled_at < 2.0:
            return
        self._forks_filled_at = time.monotonic()
        async with self.lock:
            filled = await self.store.fill_forks()
        if filled:
            log.info(
                "projector %s: %d fork(s) got their source's live ranges",
                self.options.group_id,
                filled,
            )

    async def prepare(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> Prepared | None:
        """Decode, plan and embed the records past ``fetched_to`` (no store access)."""
        fetched, spans = self._take(batch)
        if not fetched:
            return None
        plan = plan_batch(decode_batch(fetched))
        rows = plan.message_rows()
        done = await embed_contents(self.embedder, [m.content for m in rows])
        embedded: dict[str, Vectored] = {
            m.event_id: (v, e) for m, v, e in zip(rows, done.vectors, done.errors, strict=True)
        }
        return Prepared(len(fetched), plan, embedded, spans)

    async def commit(self, p: Prepared) -> None:
        """Write a prepared batch unless a rebalance or a failed write moved its
        partitions meanwhile (then they are read again from their positions)."""
        async with self.lock:
            if any(self.positions.get(tp) != start for tp, (start, _) in p.spans.items()):
                self._reread(p.spans)
                return
            written = await self._write(p.plan, p.embedded, p.spans)
            if written is None:
                return
            for tp, (_, nxt) in p.spans.items():
                self.positions[tp] = nxt
            if p.plan.commits:  # a fork projected before its source commit gets it now
                await self.store.fill_forks()
        self.stats.add(p.records, written)
        await self._commit_kafka()

    def _reread(self, spans: Mapping[TP, tuple[int, int]]) -> None:
        """Seek the owned partitions of a dropped batch back to their positions
        (the consumer, and ``fetched_to``, are past them)."""
        for tp in spans:
            start = self.positions.get(tp)
            if start is not None:
                self.consumer.seek(TopicPartition(*tp), start)
                self.fetched_to[tp] = start

    def _take(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> tuple[list[Fetched], dict[TP, tuple[int, int]]]:
        """The records past each owned partition's ``fetched_to``, and (start, next)
        offsets; advances ``fetched_to``."""
        fetched: list[Fetched] = []
        spans: dict[TP, tuple[int, int]] = {}
        for tp, recs in batch.items():
            key = (tp.topic, tp.partition)
            start = self.fetched_to.get(key)
            fresh = [r for r in recs if start is not None and r.offset >= start]
            if not fresh or start is None:
                continue
            spans[key] = (start, fresh[-1].offset + 1)
            self.fetched_to[key] = fresh[-1].offset + 1
            fetched += [
                Fetched(r.topic, r.partition, r.offset, r.timestamp, r.value or b"") for r in fresh
            ]
        return fetched, spans

    async def _write(
        self, plan: Plan, embedded: Mapping[str, Vectored], spans: Mapping[TP, tuple[int, int]]
    ) -> Written | None:
        for attempt in range(5):
            try:
                return await self.store.write(plan, embedded, spans, datetime.now(UTC))
            except Fenced as exc:
                self.stats.fenced += 1
                log.warning("%s", exc)
                await self.seek_stored([TopicPartition(t, p) for t, p in spans])
                return None
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                self.stats.retried += 1
                log.warning("batch write retried (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
        return await self.store.write(plan, embedded, spans, datetime.now(UTC))

    async def _commit_kafka(self) -> None:
        """Kafka's committed offsets follow PostgreSQL's, for lag tools only."""
        if time.monotonic() - self._kafka_committed_at < 2.0:
            return
        self._kafka_committed_at = time.monotonic()
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(n, "") for (t, p), n in self.positions.items()
        }
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance in progress: the next commit catches up
            log.debug("kafka commit skipped: %s", exc)

    def lag(self) -> int:
        total = 0
        for (topic, partition), pos in self.positions.items():
            high = self.consumer.highwater(TopicPartition(topic, partition))
            total += max(0, (high or pos) - pos)
        return total

    def report(self) -> None:
        s = self.stats
        then, records = self._reported
        self._reported = (time.monotonic(), s.records)
        rate = (s.records - records) / max(1e-9, time.monotonic() - then)
        log.info(
            "projector %s: %d records (%.0f/s now) in %d batches -> %d events, %d messages, "
            "%d commits, %d rejections new; lag %d records on %d partitions; "
            "%d batches fenced, %d retried",
            self.options.group_id, s.records, rate, s.batches, s.events, s.messages, s.commits,
            s.rejections, self.lag(), len(self.positions), s.fenced, s.retried,
        )  # fmt: skip


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.projector.lock:  # the batch in flight finishes first
            for tp in revoked:
                self.projector.positions.pop((tp.topic, tp.partition), None)
                self.projector.fetched_to.pop((tp.topic, tp.partition), None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.projector.lock:
            await self.projector.seek_stored(sorted(assigned))


def _consumer(settings: Settings, ends: Endpoints, options: ProjectorOptions) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=ends.kafka_bootstrap,
        group_id=options.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=int(options.session_timeout_s * 1000),
        heartbeat_interval_ms=int(options.session_timeout_s * 1000 / 4),
        max_partition_fetch_bytes=topics.max_state_bytes(settings),
    )


async def run_projector(
    settings: Settings,
    ends: Endpoints,
    options: ProjectorOptions,
    embedder: Embedder,
    stop: asyncio.Event,
) -> Stats:
    """Migrate, then project until ``stop`` is set; return the statistics."""
    async with db.connect(settings, ends, options.schema) as conn:
        await db.migrate(
            conn, options.schema, embedding_dim=embedder.dim, embedding_model=embedder.name
        )
        store = Store(conn, options.group_id)
        await store.prepare()
        consumer = _consumer(settings, ends, options)
        projector = Projector(consumer, store, embedder, options)
        names = [topics.topic_name(settings, k) for k in OUTPUT_KINDS]
        consumer.subscribe(names, listener=_Listener(projector))
        await within(settings, ends, consumer.start(), "projector start")
        log.info(
            "projector %s: schema %s, topics %s, embeddings %s (%d dims)",
            options.group_id, options.schema, ", ".join(names), embedder.name, embedder.dim,
        )  # fmt: skip
        try:
            await projector.run(stop)
        except psycopg.Error as exc:
            raise StoreError(
                f"projector {options.group_id}: PostgreSQL failed ({exc}); nothing of the "
                "batch in flight was stored, restart `rolebus project` to resume"
            ) from exc
        except KafkaError as exc:
            raise TransportError(
                f"projector {options.group_id}: Kafka failed ({exc}); restart `rolebus project`",
                retriable=bool(getattr(exc, "retriable", False)),
            ) from exc
        finally:
            await consumer.stop()
        return projector.stats
