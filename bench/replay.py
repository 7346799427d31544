"""bench/replay: `rolebus replay fold` events/s vs a raw drain + Avro decode of
the same WAL, and `rolebus asof` from a snapshot vs from genesis on a role
with many events.

Steps (progress on stderr, a table and a JSON file in bench/results at the end):

1. produce N events of the synthetic workload (``tests/testkit/workload.py``)
   with RoleClient;
2. baseline: a plain AIOKafkaConsumer (no group, aiokafka instrumentation
   removed) drains the whole WAL and decodes every record, median of
   ``--rounds`` rounds; then ``replay_fold`` (read + fold, what `rolebus replay
   fold` does) on the same WAL, median of the same number of rounds;
3. one role gets ``--asof-events`` events (created, activated, then messages)
   on other topics; its commits are cut by folding its WAL with ``fold_log``
   and writing the resulting commit records to the commits topic, exactly the
   records a worker writes (no worker run: on a shared machine a worker would
   dominate the bench's time, and the records are the same);
4. `asof --offset` near the end of the role's history, from the nearest
   snapshot (``rolebus.replay.asof``) vs from genesis (the role's whole WAL
   partition read and folded with the same ``state_at``); both states must
   have the same digest.

Goals: asof from a snapshot >= 20x faster than from genesis. Without
ROLEBUS_KAFKA_BOOTSTRAP a private local stack is started for the run and
stopped at the end (bench/common.py).

    python bench/replay.py [--events 50000] [--asof-events 100000] [--partitions 12]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaProducer, TopicPartition
from common import bench_settings, console, save, say
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.errors import DecodeError
from rolebus.replay import scan
from rolebus.replay.asof import asof
from rolebus.replay.core import (
    NO_COMMITS,
    FoldConfig,
    WalItem,
    fold_log,
    items_by_partition,
    state_digest,
)
from rolebus.replay.points import AtOffset, state_at
from rolebus.replay.run import replay_fold
from rolebus.wal import codec, reader, records, topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import (
    Author,
    Envelope,
    MessageAppended,
    RoleActivated,
    RoleCreated,
    RoleId,
    TenantId,
    WalPosition,
)
from rolebus.wal.records import CommitRecord
from testkit.workload import Workload, WorkloadSpec

GOAL_ASOF = 20.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/replay.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=50_000, help="workload events to replay")
    p.add_argument("--asof-events", type=int, default=100_000, help="events of the asof role")
    p.add_argument("--partitions", type=int, default=12, help="WAL partitions")
    p.add_argument("--commit-every", type=int, default=50, help="auto commit cadence")
    p.add_argument("--rounds", type=int, default=3, help="rounds per measure (median)")
    return p.parse_args(argv)


async def send(settings: Settings, ends: Endpoints, envelopes: list[Envelope]) -> None:
    async with RoleClient(settings, "tenant-b", endpoints=ends) as client:
        for i in range(0, len(envelopes), 2000):
            await client.send_many(envelopes[i : i + 2000])
    # RoleClient instruments aiokafka; the CLI does not, and neither do the measures.
    instrumentor = AIOKafkaInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


# --- replay fold vs raw drain + decode --------------------------------------------------


async def drain_and_decode(settings: Settings, ends: Endpoints) -> tuple[float, int]:
    """Seconds to drain the WAL with a plain consumer and decode every record."""
    name = topics.topic_name(settings, "wal")
    async with reader.open_consumer(settings, ends, "rolebus-bench") as consumer:
        tps = await reader.assign_from_beginning(consumer, [name], missing_ok=True)
        total = sum((await consumer.end_offsets(tps)).values())
        got = 0
        started = time.perf_counter()
        while got < total:
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                got += len(recs)
                for rec in recs:
                    with contextlib.suppress(DecodeError):
                        codec.decode(rec.value)
        return time.perf_counter() - started, got


async def fold_part(
    settings: Settings, ends: Endpoints, args: argparse.Namespace
) -> dict[str, Any]:
    spec = WorkloadSpec(roles=max(10, args.events // 100), seed=42, prefix="b")
    envelopes = Workload(spec, FoldConfig.from_settings(settings)).take(args.events)
    started = time.monotonic()
    await send(settings, ends, envelopes)
    say(f"produced {len(envelopes)} workload events in {time.monotonic() - started:.1f}s")
    raw, replays = [], []
    for i in range(args.rounds):
        seconds, count = await drain_and_decode(settings, ends)
        raw.append(count / seconds)
        run = await replay_fold(settings, ends)
        replays.append(run.events_per_s)
        say(f"round {i + 1}: drain+decode {raw[-1]:,.0f}/s, replay fold {replays[-1]:,.0f}/s "
            f"(read {run.seconds['read']:.2f}s, fold {run.seconds['fold']:.2f}s)")  # fmt: skip
    base, mine = statistics.median(raw), statistics.median(replays)
    return {
        "events": run.events, "commits": run.commits, "drain_decode_per_s": base,
        "replay_fold_per_s": mine, "ratio": mine / base,
        "rounds": {"drain_decode": raw, "replay_fold": replays},
    }  # fmt: skip


# --- asof: snapshot vs genesis ------------------------------------------------------------


def long_role(role: RoleId, count: int) -> list[Envelope]:
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def env(i: int, payload: Any) -> Envelope:
        return Envelope(uuid.uuid4(), TenantId("tenant-b"), role, start + timedelta(milliseconds=i),
                        "bench", payload)  # fmt: skip

    head = [env(0, RoleCreated("Long", "You remember.")), env(1, RoleActivated())]
    return head + [
        env(i, MessageAppended(f"m{i}", Author.USER if i % 2 else Author.ASSISTANT,
                               f"message {i} of a long conversation", tokens_in=12))
        for i in range(2, count)
    ]  # fmt: skip


async def write_commits(settings: Settings, ends: Endpoints, items: list[WalItem]) -> int:
    """The commit records a worker would write for ``items``, written by us."""
    result = fold_log(items_by_partition(items), FoldConfig.from_settings(settings))
    commits = [r for r in result.records if isinstance(r, CommitRecord)]
    producer = AIOKafkaProducer(bootstrap_servers=ends.kafka_bootstrap, linger_ms=20,
                                max_request_size=topics.max_state_bytes(settings))  # fmt: skip
    await producer.start()
    try:
        name = topics.topic_name(settings, "commits")
        futures = [
            await producer.send(
                name, records.encode(c), key=c.role_id.encode(),
                partition=c.position.partition if c.position else None,
                headers=[(records.COMMIT_ID_HEADER, c.commit_id.encode())],
            )
            for c in commits
        ]  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(commits)


async def role_items(settings: Settings, ends: Endpoints, role: str, stop: int) -> list[WalItem]:
    """The role's WAL records up to offset ``stop`` (included), from genesis."""
    wal = topics.topic_name(settings, "wal")
    async with scan.open_reader(settings, ends) as consumer:
        part = scan.partition_of(role, await scan.partition_count(consumer, wal))
        tp = TopicPartition(wal, part)
        first, end = await scan.bounds(consumer, tp)
        recs = await scan.read_range(consumer, tp, first, min(stop + 1, end))
    key = role.encode()
    return [WalItem(WalPosition(r.topic, r.partition, r.offset), r.key, r.value)
            for r in recs if r.key == key]  # fmt: skip


async def from_genesis(settings: Settings, ends: Endpoints, role: str, stop: int) -> Any:
    items = await role_items(settings, ends, role, stop)
    return state_at(None, role, items, FoldConfig.from_settings(settings), NO_COMMITS).state


async def asof_part(
    settings: Settings, ends: Endpoints, args: argparse.Namespace
) -> dict[str, Any]:
    await topics.ensure(settings, ends)
    role = RoleId(f"long-{uuid.uuid4().hex[:6]}")
    started = time.monotonic()
    await send(settings, ends, long_role(role, args.asof_events))
    say(f"produced {args.asof_events} events of role {role} in {time.monotonic() - started:.1f}s")
    items = await role_items(settings, ends, role, 1 << 62)
    started = time.monotonic()
    cut = await write_commits(settings, ends, items)
    say(f"wrote its {cut} commit records (fold_log) in {time.monotonic() - started:.1f}s")
    point = items[-(args.commit_every // 2) - 1].position  # mid-way between two commits
    snap, genesis = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        found = await asof(settings, ends, role, AtOffset(point.partition, point.offset))
        snap.append(time.perf_counter() - started)
        started = time.perf_counter()
        full = await from_genesis(settings, ends, role, point.offset)
        genesis.append(time.perf_counter() - started)
        assert state_digest(found.state) == state_digest(full), "asof != fold from genesis"
        say(f"asof: snapshot {snap[-1] * 1000:.0f} ms ({found.tail_events} tail records), "
            f"genesis {genesis[-1]:.2f}s ({len(items)} records)")  # fmt: skip
    ratio = statistics.median(genesis) / statistics.median(snap)
    return {
        "role_events": len(items), "commits": cut, "snapshot_s": statistics.median(snap),
        "genesis_s": statistics.median(genesis), "speedup": ratio, "goal": GOAL_ASOF,
        "tail_events": found.tail_events, "window_events": found.window_events,
        "commits_source": "fold_log records written by the bench (no worker run)",
    }  # fmt: skip


# --- main -----------------------------------------------------------------------------------


async def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    fold = await fold_part(settings, ends, args)
    long = replace(settings, topic_prefix=f"{settings.topic_prefix}long")
    return {"partitions": settings.wal_partitions, "fold": fold,
            "asof": await asof_part(long, ends, args)}  # fmt: skip


def show(result: dict[str, Any]) -> None:
    fold, at = result["fold"], result["asof"]
    table = Table(title=f"bench/replay: {fold['events']} events, {result['partitions']} partitions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("raw drain + Avro decode (median)", f"{fold['drain_decode_per_s']:,.0f} events/s")
    table.add_row("replay fold: read + fold (median)", f"{fold['replay_fold_per_s']:,.0f} events/s")
    table.add_row("ratio replay fold / drain+decode", f"{fold['ratio']:.3f}")
    table.add_row(f"asof from a snapshot ({at['role_events']:,} events)",
                  f"{at['snapshot_s'] * 1000:,.0f} ms")  # fmt: skip
    table.add_row("asof from genesis", f"{at['genesis_s']:,.2f} s")
    table.add_row("speedup", f"{at['speedup']:,.1f}x (goal >= {GOAL_ASOF:g}x)")
    table.add_row("commits", at["commits_source"])
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with bench_settings(args.partitions) as base:
        settings = replace(base, commit_every=args.commit_every)
        result = asyncio.run(run(settings, args))
    show(result)
    say(f"saved {save('replay', result)}")


if __name__ == "__main__":
    main()
