"""bench/replay_projections: `rolebus replay projections` (a rebuild of the
context store into a fresh schema) vs a raw consume of the same three output
topics, measured in the same run.

Steps (progress on stderr, a table and a JSON file in bench/results at the end):

1. produce N events of the synthetic workload (``tests/testkit/workload.py``)
   and let one ``rolebus worker`` fold them into the output topics (the same
   steps as bench/project.py, whose functions this reuses);
2. raw consume: one consumer without a group reads ``changes``, ``commits``
   and ``rejections`` from offset 0 to their end offsets (no decoding);
3. rebuild: ``rebuild_projections`` (the code behind the command, in this
   process) fills a fresh schema from the same topics: decode, plan, embed
   with the configured provider, write. Its time runs from the first fetch to
   the last commit (schema migration and model load are left out).

Printed: records/s and events/s of both, and the ratio rebuild / raw consume.
Without ROLEBUS_KAFKA_BOOTSTRAP a private local stack is started for the run.

    python bench/replay_projections.py [--events 50000] [--partitions 12] [--batch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_settings, console, save, say
from project import fold, produce
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.projectors.bluegreen import OUTPUT_KINDS, RebuildOptions, rebuild_projections
from rolebus.projectors.embeddings import load_provider
from rolebus.wal import topics
from rolebus.wal.export import NoProgress
from rolebus.wal.reader import assign_from_beginning, open_consumer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/replay_projections.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=50_000, help="events to produce")
    p.add_argument("--roles", type=int, default=None, help="roles (default: events / 100)")
    p.add_argument("--partitions", type=int, default=12, help="WAL partitions")
    p.add_argument("--batch", type=int, default=2000, help="records per rebuild transaction")
    p.add_argument("--timeout", type=float, default=1800.0, help="per step, seconds")
    return p.parse_args(argv)


async def raw_consume(settings: Settings, ends: Endpoints) -> dict[str, Any]:
    """Every record of the three output topics, read once, not decoded."""
    names = [topics.topic_name(settings, k) for k in OUTPUT_KINDS]
    async with open_consumer(settings, ends, "rolebus-bench-raw") as consumer:
        tps = await assign_from_beginning(consumer, names)
        end = await consumer.end_offsets(tps)
        started, records = time.perf_counter(), 0
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            records += sum(len(recs) for recs in batch.values())
        elapsed = time.perf_counter() - started
    return {"records": records, "seconds": elapsed, "records_per_s": records / elapsed}


async def rebuild(settings: Settings, ends: Endpoints, batch: int) -> dict[str, Any]:
    provider = load_provider(settings)
    options = RebuildOptions(
        live_schema=f"bench_{uuid.uuid4().hex[:8]}", projector="bench-rebuild", batch_size=batch
    )
    try:
        report = await rebuild_projections(
            settings, ends, options, provider, NoProgress(), datetime.now(UTC)
        )
    finally:
        await provider.aclose()
    t = report.tally
    return {
        "schema": report.rebuilt, "records": t.records, "events": t.events,
        "messages": t.messages, "seconds": t.seconds, "records_per_s": t.records / t.seconds,
        "events_per_s": t.events / t.seconds, "embeddings": provider.name,
    }  # fmt: skip


async def run(settings: Settings, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    expected = await produce(settings, ends, args)
    await fold(settings, ends, expected, logs, args.timeout)
    say("raw consume of changes, commits and rejections")
    raw = await raw_consume(settings, ends)
    say(f"raw consume: {raw['records_per_s']:,.0f} records/s; rebuilding into a fresh schema")
    rebuilt = await rebuild(settings, ends, args.batch)
    assert rebuilt["records"] == raw["records"], (rebuilt["records"], raw["records"])
    return {
        "events": args.events, "outputs": expected, "partitions": settings.wal_partitions,
        "batch": args.batch, "raw_consume": raw, "rebuild": rebuilt,
        "ratio": rebuilt["records_per_s"] / raw["records_per_s"],
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    title = (
        f"bench/replay_projections: {result['events']} events, {result['partitions']} partitions"
    )
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    r, b = result["raw_consume"], result["rebuild"]
    table.add_row("output records (changes + commits + rejections)", f"{r['records']:,}")
    table.add_row(
        "raw consume, no decoding", f"{r['records_per_s']:,.0f} records/s ({r['seconds']:.2f}s)"
    )
    table.add_row(
        f"rebuild ({b['embeddings']} embeddings)",
        f"{b['records_per_s']:,.0f} records/s, {b['events_per_s']:,.0f} events/s "
        f"({b['seconds']:.2f}s)",
    )
    table.add_row("ratio rebuild / raw consume", f"{result['ratio']:.3f}")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_settings(args.partitions) as base, tempfile.TemporaryDirectory() as tmp:
        settings = replace(base, commit_every=50)
        result = asyncio.run(run(settings, args, Path(tmp)))
    show(result)
    say(f"saved {save('replay_projections', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
