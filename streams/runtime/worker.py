"""The stream worker: a plain aiokafka consumer-group batch loop around the fold.

Workers of one app id form one consumer group on the WAL; the group is the
distributed engine, the worker a thin loop. Per batch (``getmany``, at most
``batch_max`` records; the wait applies only when nothing is fetched yet):

1. decode every record; read back the commits its rollbacks and forks name
   (``commitstore``);
2. fold the partitions in turn with one ``Folder`` (``core.log``): a fork
   whose source commit nobody can see yet holds its partition back (its
   remaining records wait in memory, the partition is paused) while the
   source's partition is still being folded, then up to ``fork_wait_s``; it
   then folds as is (refused: unknown commit), as ``fold_log`` does when no
   partition can cut the source (see ``_wait_for_sources``);
3. send every output record (changes, commits, rejections) in batches, to
   the partition number of its WAL record, and wait for delivery;
4. write the changed role states and the new commits' index entries to the
   state changelog and wait for delivery;
5. commit the consumer offsets, last; then keep the new states in memory.

So a stored state never remembers an event whose outputs are not out, and a
committed offset never runs ahead of the stored states: after a crash a
re-fold emits identical records (at-least-once, identical content) or, for
events the stored states already applied (position check), nothing.

Rebalances (``ConsumerRebalanceListener``): on revoke the batch in flight
finishes under the lock (it stores and commits its own work); on assign the
new partitions are paused, and before the next batch the worker restores
them from their changelog partitions — a partition it already held is kept
in memory when nobody committed past this worker's own last commit — then
resumes them from the committed offset. A batch fetched under an older
assignment is dropped, never folded.

Invariants: one batch at a time (``_lock``); role states and the commit
index change in memory only after the batch was delivered and stored; a
committed offset never passes a held fork; an error stops the worker
(non-zero exit), it never skips a record.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace

from rolebus.streams.core.commits import ChainLookup
from rolebus.streams.core.log import Cursor, Folder, WalItem, advance_all, blocked_forks
from rolebus.streams.core.state import FoldConfig, RoleState
from rolebus.streams.runtime import changelog
from rolebus.streams.runtime.changelog import PartitionState, Restored
from rolebus.streams.runtime.commitstore import CommitStore
from rolebus.streams.runtime.delivery import Entries, send_batches
from rolebus.streams.runtime.options import WorkerOptions
from rolebus.streams.runtime.spans import links_of, start_batch_span
from rolebus.tracing import trace_headers
from rolebus.wal import records
from rolebus.wal.events import CommitId, Envelope, RoleForked, RoleId, RolledBack, WalPosition
from rolebus.wal.records import CommitRecord, OutputRecord, RejectionRecord

log = logging.getLogger("rolebus.streams.worker")
Headers = list[tuple[str, bytes]]
Restorer = Callable[[list[int]], Awaitable[Restored]]
HELD_RECHECK_S = 1.0
"""A fork held back is tried again at least this often."""
TAIL_AFTER = 0.5
"""A fork that waited this share of ``fork_wait_s`` makes the worker tail the whole
commits topic even for a source on its own partitions (a producer that does not
use the default partitioner)."""


@dataclass(frozen=True)
class Topics:
    wal: str
    changes: str
    commits: str
    rejections: str
    changelog: str

    def of(self, rec: OutputRecord) -> str:
        if isinstance(rec, CommitRecord):
            return self.commits
        if isinstance(rec, RejectionRecord):
            return self.rejections
        return self.changes


@dataclass
class Stats:
    """Counters since the worker started (the progress lines)."""

    events: int = 0
    batches: int = 0
    restores: int = 0
    restored_records: int = 0
    fork_waits: int = 0
    dropped_batches: int = 0
    started: float = field(default_factory=time.monotonic)
    reported_events: int = 0
    reported_at: float = field(default_factory=time.monotonic)


@dataclass
class _Held:
    """A partition held back by a fork waiting for its source commit: the rest of
    its fetched records waits here (decoded once) while the partition is paused."""

    cursor: Cursor
    """The partition's unfolded records; ``next`` is the fork."""
    commit_id: str
    since: float
    checked_at: float

    @property
    def offset(self) -> int:
        return self.cursor.items[self.cursor.next].position.offset


class Worker:
    """One stream processor of the app's consumer group (module docstring)."""

    def __init__(
        self, *, app_id: str, topics: Topics, config: FoldConfig, options: WorkerOptions,
        consumer: Any, producer: Any, restorer: Restorer, commits: CommitStore,
        wal_partitions: int,
    ) -> None:  # fmt: skip
        self.app_id, self.topics, self.config, self.options = app_id, topics, config, options
        self.consumer, self.producer, self.restorer, self.commits = (
            consumer,
            producer,
            restorer,
            commits,
        )
        self.wal_partitions = wal_partitions
        """Of the WAL: where the producers' default partitioner puts a role."""
        self.memory: dict[int, PartitionState] = {}
        self.stats = Stats()
        self.tracer = trace.get_tracer("rolebus.streams")
        self._lock = asyncio.Lock()
        self._epoch = 0
        self._assigned: set[int] | None = None
        self._held: dict[int, _Held] = {}
        self._app_header = (records.APP_HEADER, app_id.encode())
        self.ready = asyncio.Event()

    # --- the loop -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fold until ``stop`` is set; the batch in flight finishes first."""
        self.consumer.subscribe([self.topics.wal], listener=_Listener(self))
        wait_ms = int(self.options.batch_wait_s * 1000)
        while not stop.is_set():
            if self._assigned is not None:
                await self._sync_assignment()
            epoch = self._epoch
            batch = await self.consumer.getmany(
                timeout_ms=wait_ms, max_records=self.options.batch_max
            )
            if batch or self._held_due():
                async with self._lock:
                    if epoch != self._epoch or self._assigned is not None:
                        self.stats.dropped_batches += 1  # fetched before a rebalance
                        continue
                    await self.process(batch)
            self.report()

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Wait for the batch in flight: it stores and commits its own work."""
        async with self._lock:
            self._epoch += 1
        log.info("rebalance: partitions %s revoked", sorted(tp.partition for tp in revoked))

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Pause the new assignment until ``_sync_assignment`` restored it."""
        tps = [tp for tp in assigned if tp.topic == self.topics.wal]
        self._epoch += 1
        self._assigned = {tp.partition for tp in tps}
        self._held.clear()
        if tps:
            self.consumer.pause(*tps)

    async def _sync_assignment(self) -> None:
        async with self._lock:
            assigned, self._assigned = self._assigned or set(), None
            for p in [p for p in self.memory if p not in assigned]:
                del self.memory[p]
                self.commits.forget_partition(p)
            committed = {p: await self._committed(p) for p in sorted(assigned)}
            stale = [p for p in sorted(assigned) if self._stale(p, committed[p])]
            await self._restore(stale, committed)
            tps = [TopicPartition(self.topics.wal, p) for p in sorted(assigned)]
            if tps:
                self.consumer.resume(*tps)
        self.ready.set()

    def _stale(self, partition: int, committed: int | None) -> bool:
        """True unless memory holds this partition as of the committed offset."""
        mine = self.memory.get(partition)
        return mine is None or mine.committed != committed

    async def _committed(self, partition: int) -> int | None:
        found = await self.consumer.committed(TopicPartition(self.topics.wal, partition))
        return None if found is None else int(found)

    async def _restore(self, partitions: list[int], committed: Mapping[int, int | None]) -> None:
        restored = await self.restorer(partitions)
        indexed = 0
        for p, state in restored.partitions.items():
            state.committed = committed[p]
            self.memory[p] = state
            self.commits.index.update({cid: (p, off) for cid, off in state.index.items()})
            indexed += len(state.index)
            state.index.clear()  # one index per worker: the commit store's
        self.stats.restores += 1
        self.stats.restored_records += restored.records
        # The restored states live as long as the partition: keep the collector
        # from scanning them again and again (it cost a third of the fold).
        gc.collect()
        gc.freeze()
        log.info(
            "ready: partitions %s (restored %s: %d roles, %d commits indexed, %d changelog "
            "records in %.1fs)", sorted(self.memory), partitions,
            sum(self.memory[p].roles for p in partitions),
            indexed, restored.records, restored.seconds,
        )  # fmt: skip

    # --- one batch ----------------------------------------------------------------

    async def process(
        self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Fold, deliver, store and commit one batch, with the records forks held
        back (the caller holds the lock)."""
        cursors = {p: held.cursor for p, held in self._held.items()}
        for tp, recs in sorted(batch.items()):
            cursors[tp.partition] = Cursor([_item(r) for r in recs])
        start = {p: c.next for p, c in cursors.items()}
        span = start_batch_span(
            self.tracer, self.topics.wal, self.app_id,
            sum(len(c.items) - c.next for c in cursors.values()),
            links_of(r.headers for recs in batch.values() for r in recs),
        )  # fmt: skip
        with trace.use_span(span, end_on_exit=True):
            folder, outputs = await self._fold(cursors)
            headers = [self._app_header, *trace_headers()]
            offsets = await self._deliver(outputs, headers)
            await self._store(folder, offsets)
            done = {p: c for p, c in cursors.items() if c.next > start[p]}
            await self._commit(done)
        self._remember(folder, offsets, {p: c.next - start[p] for p, c in done.items()})

    async def _fold(self, cursors: dict[int, Cursor]) -> tuple[Folder, list[OutputRecord]]:
        # The commits the batch names stay here for the whole batch (the cache may
        # evict them meanwhile; a lookup must not depend on that).
        named = await self.commits.load(_named_commits(cursors))
        folder = Folder(self.config, ChainLookup(named, self.commits), self._state_of)
        outputs: list[OutputRecord] = []
        while True:
            advance_all(folder, cursors, outputs)
            blocked = blocked_forks(folder, cursors)
            if not blocked:
                return folder, outputs
            found = await self.commits.load(blocked.values())
            named.update(found)
            if not found and not await self._wait_for_sources(folder, cursors, blocked, outputs):
                return folder, outputs

    async def _wait_for_sources(
        self, folder: Folder, cursors: dict[int, Cursor], blocked: dict[int, Any],
        outputs: list[OutputRecord],
    ) -> bool:  # fmt: skip
        """Release the forks whose source cannot come any more; hold the rest
        back. True when something can fold now.

        A role's commits are cut by its own events, all in the partition the
        producers' default partitioner gives its id. A fork whose source role
        lives in the fork's own partition can never see that commit before it
        (``fold_log`` refuses it too): refused now. A fork whose source lives on
        another partition of this worker waits while that partition has records
        to fold, then ``fork_wait_s`` for new ones; on another worker's
        partition, ``fork_wait_s`` while the commits topic is tailed."""
        now, moved = time.monotonic(), False
        for p, commit_id in blocked.items():
            cursor = cursors[p]
            held = self._held.get(p)
            if held is None or held.cursor is not cursor or held.commit_id != commit_id:
                held = self._held_anew(p, cursor, commit_id, now)
            held.checked_at = now
            home = self._home_of_source(cursor.head()[1])
            if home in self.memory and home != p and await self._moving(home, cursors):
                held.since = now  # its source partition is still being folded
            elif (
                home not in self.memory or now - held.since >= TAIL_AFTER * self.options.fork_wait_s
            ):
                self.commits.tail()  # its commit can only show up in the commits topic
            if home == p or now - held.since >= self.options.fork_wait_s:
                log.warning(
                    "partition %d: fork source %s cannot be found (%s); folding the fork now, "
                    "it is refused as an unknown commit", p, commit_id,
                    "the source role's events come after it in the same partition" if home == p
                    else f"not visible after {self.options.fork_wait_s:.0f}s (fork_wait_s)",
                )  # fmt: skip
                cursor.release(folder, outputs)
                moved = True
        return moved

    def _home_of_source(self, fork: Any) -> int:
        """The WAL partition of the fork's source role (default partitioner)."""
        payload = fork.payload if isinstance(fork, Envelope) else None
        source = payload.source_role_id if isinstance(payload, RoleForked) else ""
        return int(murmur2(source.encode()) & 0x7FFFFFFF) % self.wal_partitions

    async def _moving(
        self, partition: int, cursors: Mapping[int, Cursor], seen: frozenset[int] = frozenset()
    ) -> bool:
        """True while an owned partition has records to fold: in this batch or not
        yet read to the broker's end. One held back by a fork of its own moves as
        long as that fork's source partition moves; forks waiting on each other
        in a circle do not (they are released after ``fork_wait_s``)."""
        held = self._held.get(partition)
        if held is not None and not held.cursor.done:
            home = self._home_of_source(held.cursor.head()[1])
            if home in seen or home == partition or home not in self.memory:
                return False
            return await self._moving(home, cursors, seen | {partition})
        if partition in cursors and not cursors[partition].done:
            return True
        tp = TopicPartition(self.topics.wal, partition)
        end = self.consumer.highwater(tp)
        return end is None or int(await self.consumer.position(tp)) < int(end)

    def _held_anew(self, p: int, cursor: Cursor, commit_id: str, now: float) -> _Held:
        """Keep the partition's unfolded records and stop fetching more of it."""
        self.stats.fork_waits += 1
        held = self._held[p] = _Held(cursor, commit_id, now, now)
        log.info("partition %d: fork at offset %d waits for source commit %s",
                 p, held.offset, commit_id)  # fmt: skip
        self.consumer.pause(TopicPartition(self.topics.wal, p))
        return held

    def _held_due(self) -> bool:
        """True when a held fork may fold now: its source commit is indexed, or a
        recheck is due (a wait ran out, or the worker has nothing else to fold)."""
        now = time.monotonic()
        return any(
            held.commit_id in self.commits.index or held.commit_id in self.commits.cache
            or now - held.checked_at >= HELD_RECHECK_S
            for held in self._held.values()
        )  # fmt: skip

    def _unhold(self, cursors: Mapping[int, Cursor]) -> None:
        """Resume the held partitions whose records are all folded now."""
        for p in [p for p, held in self._held.items() if held.cursor.done]:
            del self._held[p]
            self.consumer.resume(TopicPartition(self.topics.wal, p))

    def _state_of(self, role_id: RoleId) -> RoleState | None:
        for partition in self.memory.values():
            found = partition.state(role_id)
            if found is not None:
                return found
        return None

    async def _deliver(
        self, outputs: list[OutputRecord], headers: Headers
    ) -> dict[str, tuple[int, int]]:
        """Send the outputs and wait; the commits topic offset of each commit record."""
        entries: Entries = {}
        commit_ids: dict[tuple[str, int], list[str | None]] = {}
        for rec in outputs:
            where = (self.topics.of(rec), _partition_of(rec))
            extra = headers
            if isinstance(rec, CommitRecord):
                extra = [*headers, (records.COMMIT_ID_HEADER, rec.commit_id.encode())]
            entries.setdefault(where, []).append(
                (records.record_key(rec), records.encode(rec), extra)
            )
            commit_ids.setdefault(where, []).append(
                rec.commit_id if isinstance(rec, CommitRecord) else None
            )
        bases = await send_batches(self.producer, entries)
        offsets = {}
        for where, ids in commit_ids.items():
            for cid, offset in zip(ids, bases[where], strict=True):
                if cid is not None:
                    offsets[cid] = (where[1], offset)
        return offsets

    async def _store(self, folder: Folder, offsets: Mapping[str, tuple[int, int]]) -> None:
        entries: Entries = {}
        for state in folder.states.values():
            key, value = changelog.role_entry(state)
            entries.setdefault((self.topics.changelog, _home(state)), []).append((key, value, []))
        for cid, (p, offset) in offsets.items():
            key, value = changelog.commit_entry(cid, offset)
            entries.setdefault((self.topics.changelog, p), []).append((key, value, []))
        await send_batches(self.producer, entries)

    async def _commit(self, done: Mapping[int, Cursor]) -> None:
        """Commit the WAL offsets past what this round folded; release the
        partitions whose held records are all folded."""
        offsets = {p: c.items[c.next - 1].position.offset + 1 for p, c in done.items()}
        self._unhold(done)
        if not offsets:
            return
        try:
            await self.consumer.commit(
                {TopicPartition(self.topics.wal, p): o for p, o in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions; what was stored stays valid (the next
            # owner skips it by position), but memory no longer matches the group.
            log.warning("offset commit refused (%s): the new owner resumes from the stored state",
                        exc)  # fmt: skip
            return
        for p, offset in offsets.items():
            if p in self.memory:
                self.memory[p].committed = offset

    def _remember(
        self, folder: Folder, offsets: Mapping[str, tuple[int, int]], folded: Mapping[int, int]
    ) -> None:
        for state in folder.states.values():
            home = self.memory.get(_home(state))
            if home is not None:
                home.states[state.role_id] = state
                home.raw.pop(state.role_id, None)
        for cid, (p, offset) in offsets.items():
            self.commits.remember(folder.commits[CommitId(cid)], p, offset)
        self.stats.batches += 1
        self.stats.events += sum(folded.values())

    # --- progress ----------------------------------------------------------------

    def report(self, *, force: bool = False) -> None:
        s, now = self.stats, time.monotonic()
        if not force and (
            now - s.reported_at < self.options.progress_every_s or s.events == s.reported_events
        ):
            return
        rate = (s.events - s.reported_events) / max(now - s.reported_at, 1e-6)
        log.info(
            "folded %d records in %d batches (%.0f/s now); %d roles in memory, %d commits indexed, "
            "%d read back; fork waits %d, dropped batches %d", s.events, s.batches, rate,
            sum(m.roles for m in self.memory.values()), len(self.commits.index),
            self.commits.fetches, s.fork_waits, s.dropped_batches,
        )  # fmt: skip
        s.reported_events, s.reported_at = s.events, now


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.on_assigned(assigned)


def _item(rec: ConsumerRecord[bytes, bytes]) -> WalItem:
    return WalItem(WalPosition(rec.topic, rec.partition, rec.offset), rec.key, rec.value or b"")


def _partition_of(rec: OutputRecord) -> int:
    position = rec.position
    assert position is not None  # the worker always passes the WAL position
    return position.partition


def _home(state: RoleState) -> int:
    position = state.last_position
    assert position is not None  # a state the worker changed has a WAL position
    return position.partition


def _named_commits(cursors: Mapping[int, Cursor]) -> set[str]:
    """The commits the batch's rollbacks and forks name."""
    named: set[str] = set()
    for cursor in cursors.values():
        for admitted in cursor.pending():
            payload = admitted.payload if isinstance(admitted, Envelope) else None
            if isinstance(payload, RolledBack):
                named.add(payload.to_commit_id)
            elif isinstance(payload, RoleForked):
                named.add(payload.source_commit_id)
    return named
