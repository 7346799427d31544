"""The faust agent of the worker and the per-partition tasks it feeds.

faust's ``isolated_partitions`` actors lose a partition's subscription in a
race when a rebalance starts them, and a blocked actor can stall faust's
shared drain loop; so the worker runs ONE plain agent that only sorts each
delivery by partition and hands it to that partition's task, never waiting
for it. A task folds and checkpoints its partition (``Pipeline``), wakes up
every ``TICK_S`` when idle (checkpoints, gaps, the watchdog) and ends when
the partition is revoked.

Invariants: one task per assigned partition, created at assignment or at
the first delivery; records of a partition reach its task in the order faust
delivered them; a task that fails crashes the worker (``app.crash``), it
never skips a record. The watchdog only acts when faust delivered nothing to
the whole worker for ``STALL_S`` while records wait in a partition: faust
then lost that partition from its fetch set, and a seek brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from faust.types import TP

from rolebus.streams.ordering import offset_of
from rolebus.streams.partition import Abandon, Pending
from rolebus.streams.pipeline import Pipeline

log = logging.getLogger("rolebus.streams.worker")
TICK_S = 0.25
"""A quiet partition task wakes up this often (checkpoints, gaps)."""
STALL_S = 5.0
"""Records waiting in a partition and nothing delivered for this long: fetch it again."""
MAX_QUEUED = 100_000
"""Records a partition task may have waiting before the agent waits for it."""


class Dispatcher:
    """The agent body and the partition tasks; see the module docstring."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.app = pipeline.app
        self.pending = pipeline.pending
        self.delivered_at = time.monotonic()
        self.failure: BaseException | None = None

    async def run(self, stream: Any) -> None:
        """The faust agent: hands each delivery to the tasks of its partitions and
        never waits for them, so a partition that waits (a fork) stalls no other."""
        self.pipeline.stream = stream
        opts = self.pipeline.options
        async for events in stream.noack_take(opts.batch_size, within=opts.batch_wait_s):
            self.delivered_at = time.monotonic()
            for group in _by_partition(events).values():
                pending = self._pending_of(group[0].message)
                if pending is None:
                    continue  # not ours any more; faust delivers it to the new owner
                pending.inbox.put_nowait(group)
                pending.queued += len(group)
                while pending.queued > MAX_QUEUED and pending.task is not None:
                    await asyncio.sleep(0.05)  # back-pressure: that partition is far behind
            self._raise_failure()

    def _pending_of(self, message: Any) -> Pending | None:
        pending = self.pending.get(message.partition)
        if pending is None:
            if TP(message.topic, message.partition) not in self.app.consumer.assignment():
                return None
            pending = self._new_pending(message.topic, message.partition)
        pending.delivered_at = time.monotonic()
        return pending

    def _new_pending(self, topic: str, partition: int) -> Pending:
        pending = Pending(topic, partition, self.pipeline.roles)
        pending.task = asyncio.get_running_loop().create_task(self._partition_loop(pending))
        self.pending[partition] = pending
        return pending

    async def on_assigned(self, assigned: Any) -> None:
        """After a rebalance: drop the tasks of partitions this worker no longer owns,
        start one for each new partition (it watches that faust delivers it)."""
        kept = {tp.partition for tp in assigned if tp.topic == self.pipeline.outputs.wal}
        for partition in [p for p in self.pending if p not in kept]:
            await self._stop_partition(self.pending.pop(partition), "partition revoked")
        for partition in kept - set(self.pending):
            self._new_pending(self.pipeline.outputs.wal, partition)

    async def stop_all(self) -> None:
        """On shutdown, after the last checkpoint: end every partition task."""
        for pending in list(self.pending.values()):
            await self._stop_partition(pending, "worker stopping")

    async def _stop_partition(self, pending: Pending, why: str) -> None:
        task, pending.task = pending.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("partition %d: %s; %d folded records were not stored (the owner folds them "
                 "again)", pending.partition, why, len(pending.events))  # fmt: skip

    async def _partition_loop(self, pending: Pending) -> None:
        try:
            while True:
                events = await self._next_delivery(pending)
                async with pending.lock:
                    await self._handle(pending, events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a broken store: stop, never skip records
            log.critical("partition %d: %r; stopping the worker", pending.partition, exc,
                         exc_info=True)  # fmt: skip
            self.failure = exc
            await self.app.crash(exc)

    async def _next_delivery(self, pending: Pending) -> list[Any]:
        """The queued deliveries of a partition, merged; [] after a quiet tick."""
        try:
            events = await asyncio.wait_for(pending.inbox.get(), TICK_S)
        except TimeoutError:
            return []
        while not pending.inbox.empty():
            events.extend(pending.inbox.get_nowait())
        pending.queued -= len(events)
        return events

    async def _handle(self, pending: Pending, events: list[Any]) -> None:
        try:
            if events or pending.sequencer.held:
                await self.pipeline.process(events, pending)
            else:
                await self._watch(pending)
        except Abandon as why:
            # Kept for the next tick: faust does not deliver them again by itself.
            for event in events:
                pending.sequencer.held.setdefault(offset_of(event), event)
            self.pipeline.stats.abandoned += 1
            log.info("rebalance: %d records wait until it ends (%s)", len(events), why)
            return
        try:
            if pending.due(self.pipeline.options):
                await self.pipeline.checkpoint(pending)
        except Abandon as why:
            log.info("rebalance: checkpoint of partition %d postponed (%s)", pending.partition, why)

    async def _watch(self, pending: Pending) -> None:
        """A quiet worker: if records wait in this partition but faust delivered
        nothing for ``STALL_S``, make faust fetch it again (it can lose a partition
        from its fetch set across rebalances)."""
        now = time.monotonic()
        # faust serves partitions unevenly while it is busy: only a worker that
        # received nothing at all for a while can have lost a partition.
        quiet = now - max(self.delivered_at, pending.delivered_at, pending.watched_at)
        if quiet < STALL_S or not self.pipeline.flowing():
            return
        pending.watched_at = now
        tp = TP(pending.topic, pending.partition)
        end = (await self.app.consumer.highwaters(tp)).get(tp)
        start = pending.start_offset()
        if end is None or end <= start:
            return
        log.warning("partition %d: nothing delivered for %.0fs while offsets %d..%d wait",
                    pending.partition, quiet, start, end - 1)  # fmt: skip
        self.app.consumer.resume_partitions([tp])
        await self.pipeline.seek(pending, start, "the partition stalled")

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def _by_partition(events: Sequence[Any]) -> dict[int, list[Any]]:
    groups: dict[int, list[Any]] = {}
    for event in events:
        groups.setdefault(event.message.partition, []).append(event)
    return groups
