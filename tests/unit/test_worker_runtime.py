"""The worker runtime with a fake Kafka boundary: the batch loop, the changelog
restore, the rebalance hand-over, crash recovery by position, fork waits and
batch tracing. (The real broker runs the same worker in tests/integration.)"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rolebus.config import Settings, load_settings
from rolebus.endpoints import Endpoints
from rolebus.streams.core.log import WalItem, fold_log, items_by_partition
from rolebus.streams.core.state import FoldConfig
from rolebus.streams.runtime import changelog
from rolebus.streams.runtime.changelog import Restored
from rolebus.streams.runtime.commitstore import CommitStore
from rolebus.streams.runtime.options import WorkerOptions
from rolebus.streams.runtime.worker import Topics, Worker
from rolebus.wal import codec, records
from rolebus.wal.events import Envelope, RoleForked, RoleId, WalPosition
from testkit import harness
from testkit.fakekafka import Cluster, FakeConsumer, FakeProducer
from testkit.workload import Workload, WorkloadSpec

PARTITIONS = 4
CONFIG = FoldConfig(commit_every=5, message_window=4)
SETTINGS = load_settings(env={}, config_file=None, topic_prefix="u", wal_partitions=PARTITIONS)
TOPICS = Topics("u.wal", "u.changes", "u.commits", "u.rejections", "app-state-changelog")
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Node:
    worker: Worker
    consumer: FakeConsumer
    producer: FakeProducer


def node(cluster: Cluster, settings: Settings = SETTINGS, **options: float) -> Node:
    consumer, producer, restore_consumer = (
        FakeConsumer(cluster, 97),
        FakeProducer(cluster),
        FakeConsumer(cluster),
    )

    async def restorer(partitions: list[int]) -> Restored:
        return await changelog.restore(restore_consumer, TOPICS.changelog, partitions)

    async def open_reader(client_id: str) -> FakeConsumer:
        return FakeConsumer(cluster)

    store = CommitStore(settings, Endpoints("x:1", "x", False, False), 8, open_reader)
    opts = WorkerOptions(batch_wait_s=0.001, **options)  # type: ignore[arg-type]
    worker = Worker(
        app_id="app", topics=TOPICS, config=CONFIG, options=opts, consumer=consumer,
        producer=producer, restorer=restorer, commits=store, wal_partitions=PARTITIONS,
    )  # fmt: skip
    return Node(worker, consumer, producer)


def home(role_id: str) -> int:
    """The producer's default partitioner (murmur2), as the worker assumes it."""
    return (murmur2(role_id.encode()) & 0x7FFFFFFF) % PARTITIONS


def produce(cluster: Cluster, envelopes: Sequence[Envelope]) -> None:
    for env in envelopes:
        p = home(env.role_id)
        cluster.append(
            TOPICS.wal, p, env.role_id.encode(), codec.encode(env), [("traceparent", TRACEPARENT)]
        )


def tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition(TOPICS.wal, p) for p in partitions]


async def run_until_caught_up(nodes: Sequence[Node], assignment: Sequence[Sequence[int]]) -> None:
    """Start the workers, hand out ``assignment``, stop when every WAL record is committed."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(n.worker.run(stop)) for n in nodes]
    await asyncio.sleep(0)
    for n, parts in zip(nodes, assignment, strict=True):
        await n.consumer.rebalance(tps(*parts))
    cluster = nodes[0].consumer.cluster
    ends = {tp: len(cluster.partition(tp.topic, tp.partition)) for tp in tps(*range(PARTITIONS))}
    for _ in range(5000):
        if all(cluster.committed.get(tp, 0) >= end for tp, end in ends.items()):
            break
        await asyncio.sleep(0.001)
        for task in tasks:
            if task.done():
                task.result()
    stop.set()
    await asyncio.gather(*tasks)


def outputs(cluster: Cluster) -> harness.Summary:
    recs = [
        records.decode(r.value or b"")
        for topic in (TOPICS.changes, TOPICS.commits, TOPICS.rejections)
        for r in cluster.records(topic)
    ]
    return harness.summarize(recs)


def reference(cluster: Cluster) -> harness.Summary:
    items = [
        WalItem(WalPosition(r.topic, r.partition, r.offset), r.key, r.value or b"")
        for r in cluster.records(TOPICS.wal)
    ]
    return harness.summarize(fold_log(items_by_partition(items), CONFIG).records)


def workload(seed: int = 3) -> Workload:
    return Workload(WorkloadSpec(roles=10, seed=seed), CONFIG)


async def test_one_worker_emits_what_fold_log_emits() -> None:
    cluster = Cluster()
    produce(cluster, workload().take(600))
    n = node(cluster)
    await run_until_caught_up([n], [range(PARTITIONS)])
    got, expected = outputs(cluster), reference(cluster)
    assert got.changes == expected.changes
    assert got.commits == expected.commits
    assert got.rejections == expected.rejections
    assert got.duplicates == 0
    entries = {r.key for r in cluster.records(TOPICS.changelog)}
    assert {b"role:" + role.encode() for role in got.final()} <= entries
    assert n.producer.batches < 600  # batched sends, not one per record


async def test_restart_restores_from_the_changelog_and_refolds_nothing() -> None:
    cluster, wl = Cluster(), workload()
    produce(cluster, wl.take(400))
    await run_until_caught_up([node(cluster)], [range(PARTITIONS)])
    before = sum(len(cluster.records(t)) for t in (TOPICS.changes, TOPICS.rejections))
    produce(cluster, wl.take(200))
    second = node(cluster)
    await run_until_caught_up([second], [range(PARTITIONS)])
    assert second.worker.stats.restored_records > 0
    assert second.worker.stats.events == 200  # only the new records were folded
    got, expected = outputs(cluster), reference(cluster)
    assert got.changes == expected.changes and got.commits == expected.commits
    after = sum(len(cluster.records(t)) for t in (TOPICS.changes, TOPICS.rejections))
    assert after == len(expected.terminal_keys())  # each output once: nothing folded twice
    assert before < after


async def test_crash_before_the_offset_commit_is_skipped_by_position() -> None:
    cluster, wl = Cluster(), workload(5)
    produce(cluster, wl.take(300))
    await run_until_caught_up([node(cluster)], [range(PARTITIONS)])
    emitted = len(cluster.records(TOPICS.changes))
    cluster.committed.clear()  # as if the worker died after storing, before committing
    again = node(cluster)
    await run_until_caught_up([again], [range(PARTITIONS)])
    assert again.worker.stats.events == 300  # read again, every one a duplicate by position
    assert len(cluster.records(TOPICS.changes)) == emitted  # no change record twice
    assert outputs(cluster).commits == reference(cluster).commits


async def test_rebalance_hands_partitions_over_without_loss_or_double_apply() -> None:
    cluster, wl = Cluster(), workload(7)
    produce(cluster, wl.take(300))
    a, b = node(cluster), node(cluster)
    await run_until_caught_up([a], [range(PARTITIONS)])
    produce(cluster, wl.take(300))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(n.worker.run(stop)) for n in (a, b)]
    await asyncio.sleep(0)
    await a.consumer.rebalance(tps(0, 1))  # a keeps 0 and 1 in memory, drops 2 and 3
    await b.consumer.rebalance(tps(2, 3))  # b restores 2 and 3 from the changelog
    for _ in range(5000):
        if all(
            cluster.committed.get(tp, 0) >= len(cluster.partition(tp.topic, tp.partition))
            for tp in tps(0, 1, 2, 3)
        ):
            break
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.gather(*tasks)
    assert sorted(a.worker.memory) == [0, 1] and sorted(b.worker.memory) == [2, 3]
    assert a.worker.stats.restores == 2  # the first assignment, then nothing to restore
    got, expected = outputs(cluster), reference(cluster)
    assert got.changes == expected.changes
    assert got.commits == expected.commits
    assert got.rejections == expected.rejections


async def test_a_fork_waits_for_a_source_cut_by_another_worker() -> None:
    cluster, wl = Cluster(), workload(9)
    created = wl.take(30)
    produce(cluster, created)
    source = next(iter(wl.commits.values()))
    source_home = home(source.role_id)
    fork_id = next(RoleId(f"fork-{i}") for i in range(100) if home(f"fork-{i}") != source_home)
    produce(cluster, [wl._envelope(fork_id, RoleForked(source.role_id, source.commit_id, "f"))])
    fork_home = home(fork_id)
    forker = node(cluster)
    stop = asyncio.Event()
    task = asyncio.create_task(forker.worker.run(stop))
    await asyncio.sleep(0)
    await forker.consumer.rebalance(tps(fork_home))
    await asyncio.sleep(0.05)
    assert forker.worker.stats.fork_waits == 1  # nobody cut the source yet
    cutter = node(cluster)
    others = [p for p in range(PARTITIONS) if p != fork_home]
    await run_until_caught_up([cutter], [others])
    for _ in range(3000):
        if cluster.committed.get(tps(fork_home)[0], 0) >= len(
            cluster.partition(TOPICS.wal, fork_home)
        ):
            break
        await asyncio.sleep(0.001)
    stop.set()
    await task
    forks = [c for c in outputs(cluster).changes.values() if c.role_id == fork_id]
    assert [c.event_type for c in forks] == ["RoleForked"]


async def test_one_span_per_batch_links_the_producer_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cluster = Cluster()
    produce(cluster, workload().take(50))
    n = node(cluster)
    n.worker.tracer = provider.get_tracer("test")
    await run_until_caught_up([n], [range(PARTITIONS)])
    spans = exporter.get_finished_spans()
    assert spans and all(s.name == f"process {TOPICS.wal}" for s in spans)
    assert len(spans) == n.worker.stats.batches
    linked = {format(link.context.trace_id, "032x") for s in spans for link in s.links}
    assert linked == {TRACEPARENT.split(b"-")[1].decode()}
    out = cluster.records(TOPICS.changes)[0]
    parent = dict(out.headers)["traceparent"].split(b"-")[1].decode()
    assert parent in {format(s.context.trace_id, "032x") for s in spans}
    assert spans[0].kind == trace.SpanKind.CONSUMER


def _truncated() -> bytes:
    return codec.encode(workload(1).take(1)[0])[:-7]


async def test_forks_fold_as_fold_log_folds_them_through_a_backlog() -> None:
    """A worker owning every partition holds forks until their source partition
    cuts the commit, and refuses one only when nothing it owns can cut it."""
    cluster = Cluster()
    produce(cluster, Workload(WorkloadSpec(roles=40, seed=42), CONFIG).take(4000))
    n = node(cluster)
    n.consumer.max_records = 400  # small batches: forks wait for other partitions
    await run_until_caught_up([n], [range(PARTITIONS)])
    got, expected = outputs(cluster), reference(cluster)
    assert got.changes == expected.changes
    assert got.rejections == expected.rejections
    assert n.worker.stats.fork_waits > 0


@pytest.mark.parametrize(
    "raw",
    [b"garbage", b"\xc3\x01" + b"\x00" * 8 + b"x", b"", _truncated()],
    ids=["garbage", "unknown-fingerprint", "empty", "truncated-avro"],
)
async def test_poison_records_are_rejected_with_their_bytes_and_the_worker_goes_on(
    raw: bytes,
) -> None:
    cluster, wl = Cluster(), workload()
    cluster.append(TOPICS.wal, 0, b"k", raw)
    misplaced = codec.encode(workload(2).take(1)[0])
    cluster.append(TOPICS.wal, 1, b"not-the-role-id", misplaced)
    produce(cluster, wl.take(50))
    await run_until_caught_up([node(cluster)], [range(PARTITIONS)])
    rejected = [records.decode(r.value or b"") for r in cluster.records(TOPICS.rejections)]
    reasons = {r.original: r.reason for r in rejected if isinstance(r, records.RejectionRecord)}
    assert reasons[raw] == records.UNDECODABLE
    assert reasons[misplaced] == records.KEY_MISMATCH
    assert outputs(cluster).changes == reference(cluster).changes
