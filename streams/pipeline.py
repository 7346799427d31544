"""What a worker does with the WAL records of one partition.

Each WAL partition assigned to the worker has its own task and ``Pending``
(``rolebus.streams.partition``; the tasks and the faust agent feeding them
live in ``rolebus.streams.dispatch``), so a partition that waits (a fork)
stalls no other.

Where to start: a checkpoint stores, next to the states, a per-partition
marker with the first offset they do not reflect. A new partition task reads
it from the recovered ``roles`` table and asks faust to read from there
(faust's committed offsets may run ahead of what was stored: it acknowledges
records it skipped during a rebalance and counts offset jumps as compaction
gaps). From then on the ``Sequencer`` folds records strictly in offset order
and asks faust to read a gap again when records arrive beyond it (faust may
also drop records it re-read right after a seek, hence repeated seeks).

Per delivery (faust ``noack_take``, latency ``batch_wait_s``): fold the
records in order, each in a ``rolebus.fold`` span whose parent is the trace
context of its headers (a fork whose source commit is not visible waits for
it, ``fork_wait_s``); send the output records and wait until Kafka has them;
add the new states and commits to ``Pending``.

Per checkpoint (every ``checkpoint_s`` or ``checkpoint_records``, and when
the worker stops): send the new commits to their changelog and wait for
them, then send the states and the marker to the roles changelog (one
partition, so the marker is never stored without the states before it),
copy them into the tables in memory, and acknowledge the records.

Invariants: outputs are delivered before any state that remembers their
events is stored, so after a crash the stored state is either older (the
records are folded again and their outputs sent again, identical:
at-least-once) or the outputs are out (redelivered events are duplicates and
emit nothing). The tables in memory only hold what was handed to the
changelogs. Nothing is stored from the start of a rebalance until faust has
recovered the tables (``Abandon``): the records in flight wait and are
folded afterwards. Any other error stops the worker; it never skips a record.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from faust.types import TP
from opentelemetry import trace

from rolebus.streams.batch import Folder, Step, WalItem, admit
from rolebus.streams.commits import ChainLookup, Commit
from rolebus.streams.directory import CommitDirectory
from rolebus.streams.ordering import Plan, offset_of
from rolebus.streams.partition import Abandon, OutputTopics, Pending, Stats, WorkerOptions
from rolebus.streams.state import FoldConfig
from rolebus.streams.tables import CommitStore, RoleStore
from rolebus.tracing import context_from_headers, trace_headers
from rolebus.wal import records
from rolebus.wal.events import CommitId, Envelope, WalPosition
from rolebus.wal.records import CommitRecord, OutputRecord, RejectionRecord

log = logging.getLogger("rolebus.streams.worker")
SPAN_NAME = "rolebus.fold"
RESEEK_S = 1.0
Headers = list[tuple[str, bytes]]


class Pipeline:
    """Folding and checkpoints of the partition tasks, and the worker's hooks;
    state lives in the tables."""

    def __init__(
        self, app: Any, roles: RoleStore, commits: CommitStore, directory: CommitDirectory,
        outputs: OutputTopics, config: FoldConfig, options: WorkerOptions,
    ) -> None:  # fmt: skip
        self.app = app
        self.roles = roles
        self.commits = commits
        self.directory = directory
        self.outputs = outputs
        self.config = config
        self.options = options
        self.stats = Stats()
        self.pending: dict[int, Pending] = {}
        self.fork_sources: dict[CommitId, Commit] = {}
        self.tracer = trace.get_tracer("rolebus.streams")
        self._app_header = (records.APP_HEADER, str(app.conf.id).encode())
        self.stream: Any = None
        """The agent's stream (acknowledgements go through it); set by the dispatcher."""

    # --- folding -----------------------------------------------------------------------

    async def process(self, events: Sequence[Any], pending: Pending) -> None:
        """Fold a delivery in offset order (``rolebus.streams.ordering``)."""
        self._check_owner(pending)
        if not pending.started:
            await self._start(pending, events)
        plan = self._plan(events, pending)
        if plan.held and plan.next_offset is not None and self._reseek_due(pending, plan):
            await self.seek(pending, plan.next_offset, "records arrived beyond a gap")
        lookup = ChainLookup(pending, self.commits, self.fork_sources, _Pendings(self.pending))
        folder = Folder(pending.state, lookup, self.config)

        sent: list[Awaitable[Any]] = []
        for event in plan.fold:
            msg = event.message
            item = WalItem(WalPosition(msg.topic, msg.partition, msg.offset), msg.key, msg.value)
            admitted = admit(item)
            if isinstance(admitted, Envelope):
                await self._wait_for_fork_source(folder, admitted, pending)
            step, headers = self._fold_traced(folder, item, admitted, msg.headers)
            sent.extend([await self._send(r, msg.partition, headers) for r in step.records])
        pending.doing = f"waiting for {len(sent)} output deliveries"
        for delivery in sent:
            await delivery
        pending.doing = "idle"
        self._check_owner(pending)
        pending.absorb(folder, [*plan.fold, *plan.seen])
        pending.sequencer.commit(plan, time.monotonic())
        self._count(plan)

    async def _start(self, pending: Pending, events: Sequence[Any]) -> None:
        """A new partition task: read from the stored marker, whatever faust committed."""
        start = pending.start_offset()
        first = min([*(offset_of(e) for e in events), *pending.sequencer.held], default=start)
        log.info("partition %d: stored state ends before offset %d; faust delivers from %d",
                 pending.partition, start, first)  # fmt: skip
        if first > start:
            await self.seek(pending, start, "faust's committed offset is ahead of the state")

    def _reseek_due(self, pending: Pending, plan: Plan) -> bool:
        """Seek to a gap once, and again every second while it stays open: faust
        drops re-read records below the offset its drain loop last saw, and a
        batch it was still draining when we sought moves that mark past the gap."""
        if pending.sought != plan.next_offset:
            return True
        return time.monotonic() - pending.sought_at >= RESEEK_S

    async def seek(self, pending: Pending, offset: int, why: str) -> None:
        self.stats.seeks += 1
        pending.sought, pending.sought_at = offset, time.monotonic()
        log.info("partition %d: reading again from offset %d (%s)", pending.partition, offset, why)
        await self.app.consumer.seek_wait({TP(pending.topic, pending.partition): offset})

    def _plan(self, events: Sequence[Any], pending: Pending) -> Plan:
        seq = pending.sequencer
        expired = seq.gap_expired(time.monotonic())
        before = seq.next_offset
        plan = seq.plan(events, accept_gap=expired)
        if log.isEnabledFor(logging.DEBUG):
            offsets = sorted(offset_of(e) for e in events)
            log.debug(
                "partition %d: delivered %s; next %s -> %s, fold %d, seen %d, held %s",
                pending.partition, _span(offsets), before, plan.next_offset, len(plan.fold),
                len(plan.seen), _span(sorted(plan.held)),
            )  # fmt: skip
        if expired and plan.fold:
            first = plan.fold[0].message
            log.warning(
                "partition %d: offsets before %d never came; gap accepted after %.0fs",
                first.partition, first.offset, seq.gap_timeout_s,
            )  # fmt: skip
        return plan

    def _count(self, plan: Plan) -> None:
        if plan.fold:
            last = plan.fold[-1].message
            self.stats.positions[last.partition] = last.offset
        self.stats.events += len(plan.fold)
        self.stats.batches += 1

    def _fold_traced(
        self, folder: Folder, item: WalItem, admitted: Envelope | RejectionRecord, headers: Any
    ) -> tuple[Step, Headers]:
        span = self.tracer.start_span(
            SPAN_NAME,
            context=context_from_headers(headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.destination.name": item.position.topic,
                "messaging.destination.partition.id": str(item.position.partition),
                "messaging.kafka.offset": item.position.offset,
            },
        )
        try:
            step = folder.apply(item, admitted)
            self.stats.count(step.outcome)
            span.set_attribute("rolebus.outcome", step.outcome)
            if step.envelope is not None:
                span.set_attribute("rolebus.role_id", step.envelope.role_id)
                span.set_attribute("rolebus.event_type", step.envelope.event_type)
            trace_out = trace_headers(trace.set_span_in_context(span))
        finally:
            span.end()
        return step, [self._app_header, *trace_out]

    async def _send(self, rec: OutputRecord, partition: int, headers: Headers) -> Awaitable[Any]:
        if isinstance(rec, CommitRecord):
            headers = [*headers, (records.COMMIT_ID_HEADER, rec.commit_id.encode())]
        future: Awaitable[Any] = await self.app.producer.send(
            self.outputs.of(rec), records.record_key(rec), records.encode(rec), partition, None,
            headers,
        )  # fmt: skip
        return future

    async def _wait_for_fork_source(
        self, folder: Folder, envelope: Envelope, pending: Pending
    ) -> None:
        missing = folder.waits_for(envelope)
        if missing is None:
            return
        self.stats.fork_waits += 1
        pending.doing = f"fork {envelope.role_id} waits for {missing[:12]}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info("role '%s': fork waits for source commit %s", envelope.role_id, missing)
        while folder.waits_for(envelope) is not None:
            if not self.flowing():
                raise Abandon(f"rebalance while fork {envelope.event_id} waited for {missing}")
            found = await self.directory.find(missing)
            if found is not None:
                self.fork_sources[missing] = found
                break
            if loop.time() - started >= self.options.fork_wait_s:
                log.warning(
                    "role '%s': fork source commit %s not visible after %.0fs (fork_wait_s); "
                    "folding the fork now, it is refused as an unknown commit",
                    envelope.role_id, missing, self.options.fork_wait_s,
                )  # fmt: skip
                return
            await asyncio.sleep(self.options.fork_poll_s)
        log.info("role '%s': fork source %s visible after %.1fs", envelope.role_id, missing,
                 loop.time() - started)  # fmt: skip

    # --- storing -----------------------------------------------------------------------

    def flowing(self) -> bool:
        """False from the start of a rebalance until faust has recovered the tables.
        (faust resumes its flow while it still replays changelogs into memory; a
        checkpoint then would be overwritten by older changelog entries.)"""
        return bool(self.app.flow_control.is_active()) and not self.app.rebalancing

    def _check_owner(self, pending: Pending, *, stopping: bool = False) -> None:
        """Abandon unless this worker may store the partition's state now. While the
        worker stops, faust has stopped the flow but still owns the partitions."""
        tp = TP(pending.topic, pending.partition)
        flowing = not self.app.rebalancing if stopping else self.flowing()
        if not flowing or tp not in self.app.consumer.assignment():
            raise Abandon(f"partition {pending.partition} is rebalancing")

    async def checkpoint(self, pending: Pending, *, stopping: bool = False) -> None:
        """Commits, then states + marker, then memory, then acks (caller holds the lock)."""
        if not pending.events:
            return
        self._check_owner(pending, stopping=stopping)
        producer = self.app.producer
        delivered = []
        for commit_id, (commit, position) in pending.commits.items():
            key, value = self.commits.encode(commit_id, commit)
            delivered.append(await producer.send(
                self.commits.changelog, key, value, position.partition, None, None))  # fmt: skip
        pending.doing = f"checkpoint: waiting for {len(delivered)} commit deliveries"
        for future in delivered:
            await future  # rollbacks must find every commit a stored state names
        pending.doing = "checkpoint: states"
        for role_id, state in pending.states.items():
            key, value = self.roles.encode(role_id, state)
            await producer.send(self.roles.changelog, key, value, pending.partition, None, None)
        next_offset = pending.sequencer.next_offset
        assert next_offset is not None  # started partition tasks always know it
        key, value = self.roles.encode_marker(pending.partition, next_offset)
        await producer.send(self.roles.changelog, key, value, pending.partition, None, None)
        self._check_owner(pending, stopping=stopping)  # a rebalance may have begun meanwhile
        self._remember(pending, next_offset)
        pending.doing = "checkpoint: acks"
        for event in pending.events:
            await self.stream.ack(event)
        pending.doing = "idle"
        pending.reset()
        self.stats.checkpoints += 1

    def _remember(self, pending: Pending, next_offset: int) -> None:
        for commit_id, (commit, _) in pending.commits.items():
            self.commits.remember(commit_id, commit)
        for role_id, state in pending.states.items():
            self.roles.remember(role_id, state)
        self.roles.remember_marker(pending.partition, next_offset)

    # --- hooks -------------------------------------------------------------------------

    async def checkpoint_all(self, *_: Any, **__: Any) -> None:
        """On shutdown: store what was folded, so a restart does not fold it again."""
        stored = 0
        for pending in list(self.pending.values()):
            async with pending.lock:
                stored += len(pending.events)
                try:
                    await self.checkpoint(pending, stopping=True)
                except Abandon as why:
                    log.info("stopping during a rebalance: %s", why)
        log.info("stopping: stored the last %d folded records; %d in total",
                 stored, self.stats.events)  # fmt: skip

    async def report(self) -> None:
        """Progress line, when something happened since the last one."""
        s, now = self.stats, time.monotonic()
        if s.events == s.reported_events:
            tasks = {
                p: (x.doing, len(x.events), x.sequencer.next_offset, sorted(x.sequencer.held)[:3])
                for p, x in self.pending.items()
            }
            log.debug(
                "idle; last folded offsets %s; partitions %s", sorted(s.positions.items()), tasks
            )
            return
        rate = (s.events - s.reported_events) / max(now - s.reported_at, 1e-6)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items()))
        log.info(
            "folded %d records in %d batches, %d checkpoints (%.0f/s now): %s; "
            "fork waits %d, dropped batches %d, seeks %d",
            s.events, s.batches, s.checkpoints, rate, outcomes, s.fork_waits, s.abandoned,
            s.seeks,
        )  # fmt: skip
        log.debug("last folded offset per partition: %s", sorted(s.positions.items()))
        s.reported_events, s.reported_at = s.events, now

    async def on_recovered(self) -> None:
        # The recovered tables live as long as the worker: keep the collector
        # from scanning them again and again (it cost a third of the fold).
        gc.collect()
        gc.freeze()
        log.info(
            "tables ready: %d roles, %d commits in memory (%.1fs after start)",
            len(self.roles), len(self.commits), time.monotonic() - self.stats.started,
        )  # fmt: skip


def _span(offsets: Sequence[int]) -> str:
    return f"{offsets[0]}..{offsets[-1]} ({len(offsets)})" if offsets else "-"


class _Pendings:
    """Commits other partitions of this worker cut and delivered but did not store
    yet: visible to forks at once instead of after the next checkpoint."""

    def __init__(self, pending: dict[int, Pending]) -> None:
        self._pending = pending

    def get(self, commit_id: CommitId, /) -> Commit | None:
        for other in self._pending.values():
            found = other.get(commit_id)
            if found is not None:
                return found
        return None
